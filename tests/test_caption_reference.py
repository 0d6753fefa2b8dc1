"""Captions: the PTB tokens and BLEU / CIDEr-D / ROUGE-L of the official COCO caption evaluation.

Reference values live in tests/data and were produced by the official tools (see each file's
"source"): ``ptb_tokens.json`` holds what the Java PTBTokenizer of pycocoevalcap emits for 456
hard lines; ``caption_reference.json`` holds corpora scored by pycocoevalcap's own pipeline (its
Java tokenizer, then Bleu / Cider / Rouge). Regenerate both with
``benchmarks/ptb_parity.py write-reference``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modaltune.metrics import caption_metrics
from modaltune.metrics import captions as captions_module
from modaltune.metrics.captions import _python_lines, tokenize_captions

DATA = Path(__file__).parent / "data"
TOKENS = json.loads((DATA / "ptb_tokens.json").read_text(encoding="utf-8"))
CORPORA = json.loads((DATA / "caption_reference.json").read_text(encoding="utf-8"))["corpora"]
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime on this machine")


def test_python_tokenizer_reproduces_the_jar_line_for_line() -> None:
    ours = _python_lines(TOKENS["lines"])
    differ = [(line, want, got) for line, want, got in zip(TOKENS["lines"], TOKENS["java"], ours) if want != got]
    assert len(ours) == len(TOKENS["java"]) and differ == []


@needs_java
def test_jar_still_gives_the_stored_tokens() -> None:
    # Guards the stored expectation itself (another JVM or jar would show up here first).
    assert captions_module._java_streams("java", [TOKENS["lines"]])[0] == TOKENS["java"]


@pytest.mark.parametrize("tokenizer", ["python", pytest.param("java", marks=needs_java)])
@pytest.mark.parametrize("name", sorted(CORPORA))
def test_scores_equal_the_official_pipeline(name: str, tokenizer: str) -> None:
    corpus = CORPORA[name]
    got = caption_metrics(corpus["predictions"], corpus["references"], tokenizer=tokenizer)
    assert got["caption_tokenizer"] == f"ptb-{tokenizer}"
    for metric, official in corpus["official"].items():
        assert got[metric] == pytest.approx(official, abs=1e-6), metric


def test_the_issue_example_scores_as_officially() -> None:
    # "A crème brûlée." against "A crème brûlée on a plate.": 3 tokens, so no 4-gram matches.
    # A tokenizer that split "crème" into "cr ème" scored BLEU-4 0.717 here.
    got = caption_metrics({"x": "A crème brûlée."}, {"x": ["A crème brûlée on a plate."]}, tokenizer="python")
    assert got["bleu_4"] == pytest.approx(0.011633, abs=1e-6)


def test_a_caption_ending_is_read_with_the_next_line_as_officially() -> None:
    # The tokenizer looks past the line end: "I." before a capitalised word is the pronoun and a full
    # stop, before a lower-case one an initial. pycocoevalcap tokenises a whole set as one text.
    (before_capital,), _ = tokenize_captions([["plan I.", "He went"]], tokenizer="python")
    (before_lower,), _ = tokenize_captions([["plan I.", "he went"]], tokenizer="python")
    assert before_capital[0] == "plan i" and before_lower[0] == "plan i."


@pytest.mark.parametrize("tokenizer", ["python", pytest.param("java", marks=needs_java)])
def test_other_line_breaks_inside_a_caption_do_not_shift_later_captions(tokenizer: str) -> None:
    # The official script splits such captions in two and misaligns every later one; we read a space.
    streams, _ = tokenize_captions([["a\rb", "c\u2028d", "e\u000bf", "g\u000ch\u2029i", "last one"]], tokenizer)
    assert streams[0] == ["a b", "c d", "e f", "g h i", "last one"]


def test_auto_uses_python_without_java_and_java_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions_module.shutil, "which", lambda name: None)
    _, used = tokenize_captions([["a dog."]])
    assert used == "ptb-python"
    with pytest.raises(RuntimeError, match="needs a Java runtime.*tokenizer='python'"):
        tokenize_captions([["a dog."]], tokenizer="java")
    with pytest.raises(ValueError, match="one of auto, java, python"):
        tokenize_captions([["a dog."]], tokenizer="nltk")


def test_environment_variable_chooses_the_tokenizer_for_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODALTUNE_CAPTION_TOKENIZER", "python")
    assert tokenize_captions([["a dog."]])[1] == "ptb-python"
