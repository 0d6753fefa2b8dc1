"""BLEU, CIDEr-D and ROUGE-L through pycocoevalcap, with its PTB tokenisation done in Python."""

from __future__ import annotations

import re

from modaltune.metrics.common import _r

# Tokens the COCO caption evaluation drops after PTB tokenisation (pycocoevalcap's PUNCTUATIONS),
# plus the raw quote characters that PTB would first have turned into `` / '' (then dropped).
# COCO's list spells brackets "-LRB-" etc. while the tokenizer, run with -lowerCase, emits
# "-lrb-", so brackets survive in the reference pipeline; we keep them the same way.
_COCO_DROPPED = frozenset({"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"})
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Typographic quotes, dashes and ellipsis as PTB normalises them (before they are dropped).
_PTB_UNICODE = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": " -- ",
    "\u2014": " -- ",
    "\u2026": " ... ",
}
# Abbreviations that PTB keeps whole with their period (wherever they stand).
_PTB_ABBREVIATIONS = "mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|co|ltd|ave|mt|ft"
_PTB_TOKEN = re.compile(
    rf"""
      (?:[a-z]\.){{2,}}(?![a-z0-9])              # acronyms: u.s. e.g. p.m.
    | (?:{_PTB_ABBREVIATIONS})\.(?![a-z0-9])      # mr. st. etc.
    | no\.(?=\s*\d)                               # no. 5
    | \.{{2,}} | --+ | [!?]+                         # runs: .. ... -- !! ?!
    | '(?:s|re|ve|ll|d|m|em)(?![a-z0-9])          # clitics standing alone: it 's, 'em
    | (?:-(?=\d))?[a-z0-9]+(?:(?:[-'./]|(?<=\d)[,:](?=\d))[a-z0-9]+)*  # black-and-white -5 1,000 7:30 a/b
    | \S                                          # any other character is a token of its own
    """,
    re.VERBOSE,
)
_PTB_CLITIC = re.compile(r"(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_PTB_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na")}


def caption_tokens(text: str) -> str:
    """A caption as the COCO caption evaluation sees it: lowercase PTB tokens minus punctuation.

    pycocoevalcap tokenises with the Stanford PTB tokenizer (a Java program) and then drops
    punctuation tokens; this is a Python re-implementation for ordinary caption text, so that no
    Java is needed: lowercase; punctuation split off words and dropped (. , ? ! : ; quotes,
    stand-alone - and --, ...); clitics split off like PTB ("dog's" → "dog 's", "isn't" → "is
    n't", "can't" → "ca n't", "cannot" → "can not"); kept whole: hyphenated words, numbers with
    "." "," ":" inside ("1,000", "3.5", "7:30"), "a/b", acronyms and common abbreviations with
    their period ("u.s.", "mr.", "etc."); other symbols become their own tokens ("50 %", "$ 5");
    brackets become "-lrb-" etc. and, as in the reference pipeline, are kept, and so are runs
    like "!!" or "?!" (only single marks are on COCO's list). Tokens are joined by single spaces.
    Rare PTB special cases ("rock 'n' roll", "'t is", "5:30pm" → "5:30 pm") are not reproduced.
    """
    text = text.lower()
    for char, replacement in _PTB_UNICODE.items():
        text = text.replace(char, replacement)
    tokens: list[str] = []
    for token in _PTB_TOKEN.findall(text):
        if token in _PTB_SPLIT_WORDS:
            tokens.extend(_PTB_SPLIT_WORDS[token])
        elif clitic := _PTB_CLITIC.match(token):  # "isn't" → "is" "n't", "dog's" → "dog" "'s"
            tokens.extend(clitic.groups())
        elif token.startswith(".."):
            tokens.append("...")  # PTB turns any run of periods into an ellipsis (or single periods)
        else:
            tokens.append(_PTB_BRACKETS.get(token, token))
    return " ".join(token for token in tokens if token not in _COCO_DROPPED)


def caption_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Corpus-level COCO caption metrics: BLEU-1..4, CIDEr (CIDEr-D) and ROUGE-L.

    ``predictions`` maps an image id to the generated caption, ``references`` the same ids to the
    human captions. Computed with pycocoevalcap, the code behind published COCO numbers, on
    ``caption_tokens`` output. BLEU is corpus BLEU with the "closest reference length" brevity
    penalty; ``cider`` is pycocoevalcap's CIDEr-D (clipped n-gram counts, Gaussian length
    penalty, ×10) whose idf weights come from the references of *this* set, so it needs many
    images to mean anything (with a single image every weight, hence CIDEr, is 0); ROUGE-L is
    the LCS F-measure with beta 1.2, best reference per image, averaged over images.

    METEOR and SPICE, the other two COCO metrics, are not computed: both run Java programs,
    which this package does not require.
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

    gts = {key: [caption_tokens(ref) for ref in refs] for key, refs in references.items()}
    res = {key: [caption_tokens(predictions[key])] for key in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)  # verbose=0: no stats printed
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    out = {f"bleu_{n}": _r(value) for n, value in enumerate(bleu, start=1)}
    out["cider"] = _r(cider)
    out["rouge_l"] = _r(rouge)
    return out
