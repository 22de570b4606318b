# The course's three commands: `make setup`, `make course`, `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= demo
BUILD ?= build
export CXRLAB_TEST_DATA ?= $(CURDIR)/$(BUILD)/test-data

.PHONY: setup course test test-unit test-notebooks chapters grade bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

setup: $(PY)  ## create .venv and install everything (torch, the course, test and grading tools)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e ".[dev,instructor]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cxr course)" >/dev/null
	@echo "Set-up done. Next: make course   (or: $(VENV)/bin/jupyter lab chapters/)"

course:  ## run every chapter headless on the synthetic cohort; writes build/
	$(PY) -m cxrlab.course --preset $(PRESET) --out $(BUILD)

test: test-unit test-notebooks  ## unit tests, fetchers, grading, browser, then every notebook under nbval

test-unit:
	$(PY) -m pytest tests --doctest-modules cxrlab data_fetch

test-notebooks:
	CXRLAB_PRESET=demo CXRLAB_DATA=$(CXRLAB_TEST_DATA) $(PY) -m pytest -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=900 solutions chapters

chapters:  ## regenerate chapters/ (learner copies) from solutions/
	$(PY) -m cxrlab.authoring generate

grade:  ## grade learners' notebooks: make grade SUBMISSIONS=path/to/folder [TIMEOUT=s] [JOBS=n]
	$(PY) -m cxrlab.grading $(SUBMISSIONS) $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(JOBS),--jobs $(JOBS))

bench:
	$(PY) bench/run_course_bench.py

clean:
	rm -rf $(BUILD)
