"""VQA accuracy and answer normalisation, following the official VQA evaluation script."""

from __future__ import annotations

import re
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal

from modaltune.metrics.common import _r

# The rules below follow the official VQA evaluation script (vqaEval.py of GT-Vision-Lab/VQA), so
# that accuracies are comparable with published numbers. That script runs on Python 2, where a
# str pattern's \d means [0-9] only: re.ASCII keeps it so ("٣,٣" is not a digit-comma-digit).
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_VQA_DIGIT_COMMA = re.compile(r"\d,\d", re.ASCII)
# The official pattern is r"(?!<=\d)(\.)(?!\d)": its "(?!<=\d)" is a look-ahead typo for a
# look-behind and never fires, so what it does (and what we do) is drop every period that is not
# followed by a digit: "2.5" keeps its period, "dogs." and "u.s.a" lose theirs. The script passes
# re.UNICODE (= 32) where sub() takes its count, so only the first 32 such periods go.
_VQA_PERIOD = re.compile(r"\.(?!\d)", re.ASCII)
_VQA_PERIOD_COUNT = 32
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
# The official contraction table, all 120 entries, as they are: apostrophe-less spellings → the
# canonical one. Its quirks are kept because they decide matches: "somebody'd" maps the *other* way
# (to "somebodyd"), and the capitalised keys ("Im", "Ive", "Id've", "I'dve") never fire because
# words are lowercased before the lookup.
_VQA_CONTRACTIONS = {
    "'ow'sat": "'ow's'at", "'ows'at": "'ow's'at", "aint": "ain't", "arent": "aren't", "cant": "can't",
    "couldn'tve": "couldn't've", "couldnt": "couldn't", "couldnt've": "couldn't've", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadn'tve": "hadn't've", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "he'dve": "he'd've", "hed": "he'd",
    "hed've": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "I'dve": "I'd've",
    "Id've": "I'd've", "Im": "I'm", "isnt": "isn't", "it'dve": "it'd've", "itd": "it'd", "itd've": "it'd've",
    "itll": "it'll", "Ive": "I've", "let's": "let's", "maam": "ma'am", "mightn'tve": "mightn't've",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "shant": "shan't", "she'dve": "she'd've", "she's": "she's", "shed've": "she'd've",
    "shouldn'tve": "shouldn't've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldve": "should've",
    "somebody'd": "somebodyd", "somebody'dve": "somebody'd've", "somebodyd've": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someone'dve": "someone'd've", "someoned": "someone'd",
    "someoned've": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "something'dve": "something'd've", "somethingd": "something'd", "somethingd've": "something'd've",
    "somethingll": "something'll", "thats": "that's", "there'dve": "there'd've", "thered": "there'd",
    "thered've": "there'd've", "therere": "there're", "theres": "there's", "they'dve": "they'd've",
    "theyd": "they'd", "theyd've": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "we'dve": "we'd've", "wed've": "we'd've", "werent": "weren't",
    "weve": "we've", "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", "who'dve": "who'd've",
    "whod": "who'd", "whod've": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldn'tve": "wouldn't've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldve": "would've", "y'all'dve": "y'all'd've", "y'alld've": "y'all'd've",
    "y'allll": "y'all'll", "yall": "y'all", "yall'd've": "y'all'd've", "yall'll": "y'all'll", "you'dve": "you'd've",
    "youd": "you'd", "youd've": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",

}


#: How ``vqa_scores`` scores a question, as recorded in ``metrics.json`` (``vqa_rule``).
VQA_RULE = (
    "4+ answers (VQA v2 has 10): the official vqaEval.py (GT-Vision-Lab/VQA), min(#matches / 3, 1) over "
    "the leave-one-out subsets, answers and prediction normalised only when the answers differ (all "
    "identical: compared as written, stripped); 1-3 answers: min(#matches / #answers, 1) after "
    "normalisation (the official script would score a single answer 0)"
)


def _vqa_clean(text: str) -> str:
    """What the official script does to every answer first: newlines and tabs → spaces, strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
    """Canonical form of a VQA answer, so that "Two dogs." and "2 dogs" count as the same answer.

    Steps, as in the official VQA evaluation: newlines/tabs → spaces, strip, lowercase; then
    punctuation (see ``_vqa_punctuation``); then word by word: number words zero-ten and "none"
    → digits, articles (a, an, the) dropped, apostrophe-less contractions restored ("dont" →
    "don't", the official table's 120 entries); words re-joined by single spaces.

    The official script applies this only to questions whose answers differ; ``vqa_scores`` does
    the same for questions with 4+ answers.
    """
    text = _vqa_clean(answer).lower()
    words = [_VQA_NUMBERS.get(word, word) for word in _vqa_punctuation(text).split()]
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES)


def _vqa_punctuation(text: str) -> str:
    """The official punctuation rule, quirks included (they shape which answers match).

    A punctuation mark is deleted outright when it touches a space somewhere in the answer
    ("dog , cat" → "dog  cat") or when the answer contains a digit-comma-digit ("1,000" → "1000";
    then *every* mark is deleted outright); otherwise it becomes a space ("black/white" →
    "black white"). Apostrophes, colons and the like are kept ("7:30", "don't"). Periods are
    removed unless a digit follows ("2.5" stays), at most 32 of them.
    """
    glue = _VQA_DIGIT_COMMA.search(text) is not None
    out = text
    for mark in _VQA_PUNCT:
        # The official script tests the *original* text here, not the partly cleaned one.
        if glue or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _VQA_PERIOD.sub("", out, count=_VQA_PERIOD_COUNT)


def vqa_scores(prediction: str, answers: list[str]) -> float:
    """VQA accuracy of one prediction against one question's human answers, in [0, 1].

    With ``n`` answers of which ``m`` equal the prediction:

    * ``n >= 4`` (VQA v2 has 10): exactly the official vqaEval.py. Answers and prediction lose
      newlines, tabs and outer spaces; if the answers are then all the same string, the prediction
      must equal it as written ("Yes" scores 0 against ten "yes"); otherwise all of them are
      compared after ``normalize_vqa_answer``. The score is min(matches / 3, 1) averaged over the
      ``n`` leave-one-out subsets of ``n - 1`` answers: leaving out a matching answer leaves
      ``m - 1`` matches, leaving out another leaves ``m``, so 3 of 10 → 0.9, 4+ of 10 → 1.0.
    * ``n <= 3`` (datasets with one or a few reference answers): min(m / n, 1) after
      normalisation, i.e. the share of answers matched. Leave-one-out is not used here because
      it would cap a single-answer question at 0 (its only subset is empty: the official
      script's result) and give a prediction matching all of 2 or 3 answers less than 1.
    """
    if not answers:
        raise ValueError("need at least one reference answer per question, got none")
    n = len(answers)
    if n <= 3:
        pred = normalize_vqa_answer(prediction)
        return min(sum(normalize_vqa_answer(answer) == pred for answer in answers) / n, 1.0)
    raw = [_vqa_clean(answer) for answer in answers]
    if len(set(raw)) > 1:
        pred = normalize_vqa_answer(prediction)
        hits = [normalize_vqa_answer(answer) == pred for answer in raw]
    else:
        pred = _vqa_clean(prediction)
        hits = [answer == pred for answer in raw]
    m = sum(hits)
    # Summed in answer order, as the official script does, so the float is the same to the last bit.
    return sum(min((m - hit) / 3, 1.0) for hit in hits) / n


def official_round(value: float, ndigits: int = 2) -> float:
    """Python 2's round(), which the official script reports with: ties away from zero.

    Python 3's round() sends exact ties to the even digit (round(3.125, 2) == 3.12, where the
    official evaluator prints 3.13); both round the float's exact binary value.
    """
    step = Decimal(1).scaleb(-ndigits)
    return float(Decimal(value).quantize(step, rounding=ROUND_HALF_UP))


def vqa_accuracy_official(predictions: list[str], answers: list[list[str]]) -> float:
    """Overall VQA accuracy as the official script reports it: percent, 2 decimals (``vqa_scores``
    per question, so questions with 1-3 answers follow its rule for those)."""
    _check(predictions, answers)
    scores = [vqa_scores(prediction, refs) for prediction, refs in zip(predictions, answers)]
    return official_round(100 * sum(scores) / len(scores))


def _check(predictions: list[str], answers: list[list[str]]) -> None:
    if len(predictions) != len(answers):
        raise ValueError(f"got {len(predictions)} predictions for {len(answers)} questions' answers")
    if not predictions:
        raise ValueError("cannot compute VQA metrics over zero questions")
    empty = [i for i, refs in enumerate(answers) if not refs]
    if empty:
        raise ValueError(f"every question needs at least one reference answer; none for questions {empty[:10]}")


def vqa_metrics(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Mean VQA accuracy and exact match over questions; ``answers[i]`` are question i's answers.

    ``vqa_accuracy`` is the mean of ``vqa_scores`` (soft credit for answers only some annotators
    gave). ``exact_match`` is the share of questions whose normalised prediction equals one of the
    most frequent normalised answers (all tied ones count): the strict, single-label view.
    """
    _check(predictions, answers)
    accuracy = 0.0
    exact = 0
    for prediction, refs in zip(predictions, answers):
        accuracy += vqa_scores(prediction, refs)
        counts = Counter(normalize_vqa_answer(answer) for answer in refs)
        top = max(counts.values())
        exact += counts.get(normalize_vqa_answer(prediction), 0) == top
    n = len(predictions)
    return {"vqa_accuracy": _r(accuracy / n), "exact_match": _r(exact / n)}
