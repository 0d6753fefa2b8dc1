"""VQA accuracy and answer normalisation, following the official VQA evaluation script."""

from __future__ import annotations

import re
from collections import Counter

from modaltune.metrics.common import _r

# The rules below follow the official VQA evaluation script (vqaEval.py of the VQA challenge), so
# that accuracies are comparable with published numbers.
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_VQA_DIGIT_COMMA = re.compile(r"\d,\d")
# The official pattern is r"(?!<=\d)(\.)(?!\d)": its "(?!<=\d)" is a look-ahead typo for a
# look-behind and never fires, so what it does (and what we do) is drop every period that is not
# followed by a digit: "2.5" keeps its period, "dogs." and "u.s.a" lose theirs.
_VQA_PERIOD = re.compile(r"\.(?!\d)")
_VQA_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_VQA_ARTICLES = frozenset({"a", "an", "the"})
# The commonly hit part of the official list (apostrophe-less spellings → the canonical one).
_VQA_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hes": "he's",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "maam": "ma'am",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "oclock": "o'clock",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "theres": "there's",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "wasnt": "wasn't",
    "werent": "weren't",
    "weve": "we've",
    "whats": "what's",
    "wheres": "where's",
    "whos": "who's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def normalize_vqa_answer(answer: str) -> str:
    """Canonical form of a VQA answer, so that "Two dogs." and "2 dogs" count as the same answer.

    Steps, as in the official VQA evaluation: newlines/tabs → spaces, strip, lowercase; then
    punctuation (see ``_vqa_punctuation``); then word by word: number words zero-ten and "none"
    → digits, articles (a, an, the) dropped, apostrophe-less contractions restored ("dont" →
    "don't"); words re-joined by single spaces.

    One deliberate difference: the official script only normalises a question's answers when its
    annotators disagreed (a speed shortcut that makes "Yes." fail against ten "yes"); here the
    prediction and every answer are always normalised.
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    words = [_VQA_NUMBERS.get(word, word) for word in _vqa_punctuation(text).split()]
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES)


def _vqa_punctuation(text: str) -> str:
    """The official punctuation rule, quirks included (they shape which answers match).

    A punctuation mark is deleted outright when it touches a space somewhere in the answer
    ("dog , cat" → "dog  cat") or when the answer contains a digit-comma-digit ("1,000" → "1000";
    then *every* mark is deleted outright); otherwise it becomes a space ("black/white" →
    "black white"). Apostrophes, colons and the like are kept ("7:30", "don't"). Periods are
    removed unless a digit follows ("2.5" stays).
    """
    glue = _VQA_DIGIT_COMMA.search(text) is not None
    out = text
    for mark in _VQA_PUNCT:
        # The official script tests the *original* text here, not the partly cleaned one.
        if glue or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _VQA_PERIOD.sub("", out)


def vqa_scores(prediction: str, answers: list[str]) -> float:
    """VQA accuracy of one prediction against one question's human answers, in [0, 1].

    Prediction and answers are compared after ``normalize_vqa_answer``. With ``n`` answers of
    which ``m`` equal the prediction:

    * ``n >= 4`` (VQA v2 has 10): the official rule, min(matches / 3, 1) averaged over the ``n``
      leave-one-out subsets of ``n - 1`` answers. Leaving out a matching answer leaves ``m - 1``
      matches, leaving out another leaves ``m``, so the score is
      ``(m * min((m - 1) / 3, 1) + (n - m) * min(m / 3, 1)) / n``: 3 of 10 → 0.9, 4+ of 10 → 1.0.
    * ``n <= 3`` (datasets with one or a few reference answers): min(m / t, 1) with threshold
      ``t = min(3, n) = n``, i.e. the share of answers matched. Leave-one-out is not used here
      because it would cap a single-answer question at 0 (its only subset is empty) and give a
      prediction matching all of 2 or 3 answers less than 1. One answer: 1.0 for an exact match
      after normalisation, else 0.0.
    """
    if not answers:
        raise ValueError("need at least one reference answer per question, got none")
    pred = normalize_vqa_answer(prediction)
    hits = [normalize_vqa_answer(answer) == pred for answer in answers]
    n, m = len(hits), sum(hits)
    if n <= 3:
        return min(m / min(3, n), 1.0)
    return sum(min((m - hit) / 3, 1.0) for hit in hits) / n


def vqa_metrics(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Mean VQA accuracy and exact match over questions; ``answers[i]`` are question i's answers.

    ``vqa_accuracy`` is the mean of ``vqa_scores`` (soft credit for answers only some annotators
    gave). ``exact_match`` is the share of questions whose normalised prediction equals one of the
    most frequent normalised answers (all tied ones count): the strict, single-label view.
    """
    if len(predictions) != len(answers):
        raise ValueError(f"got {len(predictions)} predictions for {len(answers)} questions' answers")
    if not predictions:
        raise ValueError("cannot compute VQA metrics over zero questions")
    empty = [i for i, refs in enumerate(answers) if not refs]
    if empty:
        raise ValueError(f"every question needs at least one reference answer; none for questions {empty[:10]}")

    accuracy = 0.0
    exact = 0
    for prediction, refs in zip(predictions, answers):
        accuracy += vqa_scores(prediction, refs)
        counts = Counter(normalize_vqa_answer(answer) for answer in refs)
        top = max(counts.values())
        exact += counts.get(normalize_vqa_answer(prediction), 0) == top
    n = len(predictions)
    return {"vqa_accuracy": _r(accuracy / n), "exact_match": _r(exact / n)}
