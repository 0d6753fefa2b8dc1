"""BLEU, CIDEr-D and ROUGE-L through pycocoevalcap, on the exact PTB tokens of the official pipeline.

The official COCO caption evaluation (pycocoevalcap) joins every caption of a set into one text,
one caption a line, runs the Stanford PTBTokenizer of CoreNLP 3.4.1 (Java) on it with
``-preserveLines -lowerCase``, and drops punctuation tokens before scoring. Scores depend on that
tokenisation, so it is reproduced exactly: with the jar itself when Java is installed, and with
``modaltune.metrics.ptb`` (a Python re-implementation, equal token for token on the pinned
corpus) when it is not. Which one ran is returned as ``caption_tokenizer``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from modaltune.metrics.common import _r
from modaltune.metrics.ptb import ptb_tokenize

logger = logging.getLogger(__name__)

#: Tokens pycocoevalcap drops after tokenising (its PUNCTUATIONS list). The bracket entries are
#: upper case while the tokenizer, run with -lowerCase, emits "-lrb-": brackets survive there, and so here.
COCO_PUNCTUATION = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
)
#: Characters the Java tokenizer reads as line breaks. pycocoevalcap replaces only "\n" inside a
#: caption, so any of the others splits a caption in two and shifts every later caption onto the
#: wrong image; here they are read as spaces instead (the one intended deviation).
_LINE_BREAKS = str.maketrans(dict.fromkeys("\n\r\u000b\u000c\u2028\u2029", " "))
TOKENIZERS = ("auto", "java", "python")
_JAVA_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
_JAVA_TIMEOUT_S = 600


def caption_tokens(text: str) -> str:
    """One caption as the COCO caption evaluation scores it: lowercase PTB tokens, punctuation dropped."""
    return _drop_punctuation(" ".join(ptb_tokenize(text.translate(_LINE_BREAKS))))


def tokenize_captions(streams: list[list[str]], tokenizer: str = "auto") -> tuple[list[list[str]], str]:
    """Each stream of captions tokenised as pycocoevalcap does, and the name of the tokenizer that ran.

    A stream is tokenised as one text, a caption a line, because the tokenizer looks past a
    line's end ("etc." ending a caption splits differently before a capitalised next caption);
    the official evaluation tokenises the references as one stream and the predictions as another.
    ``tokenizer``: "java" (the jar; needs ``java``), "python" (the re-implementation) or "auto"
    (Java when available). The environment variable ``MODALTUNE_CAPTION_TOKENIZER`` overrides "auto".
    """
    if tokenizer == "auto":
        tokenizer = os.environ.get("MODALTUNE_CAPTION_TOKENIZER", "auto")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"caption tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    streams = [[caption.translate(_LINE_BREAKS) for caption in stream] for stream in streams]
    if tokenizer != "python":
        java = shutil.which("java")
        if java is not None:
            try:
                return [[_drop_punctuation(line) for line in out] for out in _java_streams(java, streams)], "ptb-java"
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
                if tokenizer == "java":
                    raise
                logger.warning("Java caption tokenizer unusable (%s); using the Python one, which gives the "
                               "same tokens", error)
        elif tokenizer == "java":
            raise RuntimeError(
                "the Java caption tokenizer needs a Java runtime: install one (e.g. `apt-get install "
                "default-jre-headless`) or use tokenizer='python', which gives the same tokens"
            )
    return [[_drop_punctuation(line) for line in _python_lines(stream)] for stream in streams], "ptb-python"


def _drop_punctuation(line: str) -> str:
    return " ".join(token for token in line.rstrip().split(" ") if token not in COCO_PUNCTUATION)


def _python_lines(lines: list[str]) -> list[str]:
    out: list[list[str]] = [[]]
    for token in ptb_tokenize("\n".join(lines)):
        if token == "\n":
            out.append([])
        else:
            out[-1].append(token)
    return [" ".join(tokens) for tokens in out]


def _java_streams(java: str, streams: list[list[str]]) -> list[list[str]]:
    """The jar's output lines for each stream, all in one JVM run (-ioFileList: a file per stream)."""
    jar = resources.files("pycocoevalcap") / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    # Files of our own in a temporary folder: pycocoevalcap writes its file next to the jar, which
    # fails in a read-only site-packages.
    with tempfile.TemporaryDirectory(prefix="modaltune-ptb-") as tmp, resources.as_file(jar) as jar_path:
        folder = Path(tmp)
        if any(char.isspace() for char in str(folder)):
            raise RuntimeError(f"the jar splits its file list on white space, and the temporary folder {folder} "
                               "has some (set TMPDIR to a folder without)")
        listing = []
        for i, stream in enumerate(streams):
            (folder / f"in{i}.txt").write_text("\n".join(stream), encoding="utf-8", errors="surrogatepass")
            listing.append(f"{folder / f'in{i}.txt'} {folder / f'out{i}.txt'}")
        (folder / "files.txt").write_text("\n".join(listing) + "\n", encoding="utf-8")
        command = [java, "-cp", str(jar_path), _JAVA_CLASS, "-preserveLines", "-lowerCase", "-ioFileList",
                   str(folder / "files.txt")]
        done = subprocess.run(command, capture_output=True, timeout=_JAVA_TIMEOUT_S, check=False)
        if done.returncode != 0:
            detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise RuntimeError(f"the Java PTB tokenizer failed (exit {done.returncode}): {' | '.join(detail)}")
        outputs = []
        for i, stream in enumerate(streams):
            lines = (folder / f"out{i}.txt").read_bytes().decode("utf-8", "replace").split("\n")
            if len(lines) < len(stream):
                raise RuntimeError(f"the Java PTB tokenizer returned {len(lines)} lines for {len(stream)} captions")
            outputs.append(lines[: len(stream)])
    return outputs


def caption_metrics(
    predictions: dict[str, str], references: dict[str, list[str]], *, tokenizer: str = "auto"
) -> dict[str, float | str]:
    """Corpus-level COCO caption metrics: BLEU-1..4, CIDEr (CIDEr-D) and ROUGE-L, as pycocoevalcap gives them.

    ``predictions`` maps an image id to the generated caption, ``references`` the same ids to the
    human captions (duplicates count, as there). Tokenised like the official pipeline: references
    as one stream and predictions as another, in the order of ``references`` (see
    ``tokenize_captions``), then scored with pycocoevalcap. BLEU is corpus BLEU with the "closest
    reference length" brevity penalty; ``cider`` is CIDEr-D (clipped n-gram counts, Gaussian length
    penalty, ×10) whose idf weights come from the references of *this* set, so it needs many
    images to mean anything (with a single image every weight, hence CIDEr, is 0); ROUGE-L is the
    LCS F-measure with beta 1.2, averaged over images. ``caption_tokenizer`` names the tokenizer
    that ran ("ptb-java" or "ptb-python").

    METEOR and SPICE, the other two COCO metrics, are not computed: both need Java programs and
    SPICE also downloads Stanford models.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(predictions) != set(references):
        missing = sorted(set(references) - set(predictions))[:5]
        extra = sorted(set(predictions) - set(references))[:5]
        raise ValueError(
            f"predictions and references must have the same image ids; "
            f"without a prediction: {missing}, without references: {extra}"
        )
    if not references:
        raise ValueError("cannot compute caption metrics over zero images")
    empty = sorted(key for key, refs in references.items() if not refs)
    if empty:
        raise ValueError(f"every image needs at least one reference caption; none for {empty[:5]}")

    keys = list(references)
    (ref_tokens, pred_tokens), used = tokenize_captions(
        [[ref for key in keys for ref in references[key]], [predictions[key] for key in keys]], tokenizer
    )
    gts: dict[str, list[str]] = {}
    position = 0
    for key in keys:
        gts[key] = ref_tokens[position : position + len(references[key])]
        position += len(references[key])
    res = {key: [tokens] for key, tokens in zip(keys, pred_tokens)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)  # verbose=0: no stats printed
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    out: dict[str, float | str] = {f"bleu_{n}": _r(value) for n, value in enumerate(bleu, start=1)}
    out["cider"] = _r(cider)
    out["rouge_l"] = _r(rouge)
    out["caption_tokenizer"] = used
    return out
