"""Learner self-checks (cxrlab.checks): each rejects the likely wrong answers with a helpful
message, and every notebook claim quotes a sentence its notebook still says."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from cxrlab import checks

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- claims
def test_claim_is_silent_when_true_and_raises_when_false(capsys, monkeypatch):
    monkeypatch.delenv(checks.CLAIMS_ENV, raising=False)
    assert checks.claim(True, "it goes up") is True
    assert capsys.readouterr().out == ""
    with pytest.raises(checks.ClaimFailed, match='"it goes up".*\\(0.4 < 0.5\\)'):
        checks.claim(False, "it goes up", "0.4 < 0.5")


def test_claim_only_warns_when_asked(capsys, monkeypatch):
    monkeypatch.setenv(checks.CLAIMS_ENV, "warn")
    assert checks.claim(False, "it goes up") is False
    assert "⚠" in capsys.readouterr().out


def _markdown_text(nb: dict) -> str:
    text = " ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return re.sub(r"\s+", " ", text.replace("*", "").replace("`", ""))


def notebook_claims(path: Path) -> list[str]:
    """The literal sentences passed to ``checks.claim`` in a notebook's code cells."""
    nb = json.loads(path.read_text())
    sentences = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or "claim(" not in "".join(cell["source"]):
            continue
        source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "claim":
                assert len(node.args) >= 2 and isinstance(node.args[1], ast.Constant), \
                    f"{path.name}: claim() needs the sentence as a literal second argument"
                sentences.append(node.args[1].value)
    return sentences


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("ch*.ipynb")), ids=lambda p: p.stem)
def test_every_claim_quotes_its_notebook(path):
    text = _markdown_text(json.loads(path.read_text()))
    for sentence in notebook_claims(path):
        quoted = re.sub(r"\s+", " ", sentence.replace("*", "").replace("`", ""))
        assert quoted in text, f"{path.name}: claim {sentence!r} is not in the notebook's text"
