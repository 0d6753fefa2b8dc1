"""Evaluation metrics as thin wrappers over torchmetrics and pycocoevalcap.

The metric math lives in torchmetrics (classification, retrieval) and pycocoevalcap (captioning);
this module only shapes inputs (lists → tensors, keys → relevance masks, captions → tokens) and
outputs (plain, rounded Python numbers that go straight into ``metrics.json``). VQA accuracy is
small enough to be written out here, following the official VQA evaluation script.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.retrieval import RetrievalHitRate

DECIMALS = 6


def _r(value: torch.Tensor | float) -> float:
    """A JSON-able float rounded so that metrics.json diffs stay readable."""
    return round(float(value), DECIMALS)


# --------------------------------------------------------------------------- classification


def classification_metrics(preds: Sequence[int], targets: Sequence[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``preds`` and ``targets`` are class indices into ``labels``. The confusion matrix has true
    classes as rows and predicted classes as columns.

    Zero-division conventions (those of torchmetrics, pinned by the tests):

    * precision of a class that is never predicted, recall of a class with no support and
      their F1 are 0.0;
    * macro-F1 averages only over classes that occur in ``targets`` or ``preds``. A class absent
      from both (e.g. a label list longer than a small eval set) says nothing about the model,
      so it neither pulls the mean down (as 0) nor up (as 1). A class that is predicted but has
      no support does count, with F1 0: those predictions are plain mistakes.
    """
    num_classes = len(labels)
    p, t = _class_tensors(preds, targets, num_classes)

    accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")(p, t)
    macro_f1 = MulticlassF1Score(num_classes=num_classes, average="macro", zero_division=0)(p, t)
    precision = MulticlassPrecision(num_classes=num_classes, average=None, zero_division=0)(p, t)
    recall = MulticlassRecall(num_classes=num_classes, average=None, zero_division=0)(p, t)
    f1 = MulticlassF1Score(num_classes=num_classes, average=None, zero_division=0)(p, t)
    confusion = MulticlassConfusionMatrix(num_classes=num_classes)(p, t)
    support = confusion.sum(dim=1)  # row sums: how many examples of each true class

    per_class = {
        label: {
            "precision": _r(precision[c]),
            "recall": _r(recall[c]),
            "f1": _r(f1[c]),
            "support": int(support[c]),
        }
        for c, label in enumerate(labels)
    }
    return {
        "accuracy": _r(accuracy),
        "macro_f1": _r(macro_f1),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def _class_tensors(
    preds: Sequence[int], targets: Sequence[int], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # Checked here because torchmetrics' own messages for these cases do not say which input is wrong.
    if num_classes < 1:
        raise ValueError("labels must name at least one class")
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
    if len(targets) == 0:
        raise ValueError("cannot compute classification metrics over zero examples")
    p = torch.as_tensor(list(preds), dtype=torch.long)
    t = torch.as_tensor(list(targets), dtype=torch.long)
    for name, x in (("preds", p), ("targets", t)):
        if int(x.min()) < 0 or int(x.max()) >= num_classes:
            raise ValueError(f"{name} must be class indices in [0, {num_classes}), got {x.tolist()[:10]}...")
    return p, t


# --------------------------------------------------------------------------- retrieval


def retrieval_metrics(
    similarity: torch.Tensor,
    image_keys: Sequence[str],
    text_keys: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image→text and text→image recall@K for a paired set, COCO/Flickr style.

    ``similarity[i, j]`` scores the image of row ``i`` against the text of row ``j``; row ``i``'s
    image was paired with row ``i``'s text. ``image_keys`` / ``text_keys`` identify the same image
    file / the same caption across rows (``text_keys=None``: every row's text is distinct).

    Duplicates are handled as in the standard COCO protocol (5 captions per image):

    * Relevance: an (image, text) pair is correct when that image and that text were paired in
      *some* row, not only in the same row. So for COCO every one of an image's captions is a
      hit, and a caption shared by two images ("a dog") is a hit for both.
    * Each distinct image and each distinct text is one query and one gallery item (first row
      wins; duplicates embed identically at eval time). Otherwise a wrong image that appears in
      five rows would take five of the top-K slots, and images with many captions would weigh
      more in the i2t mean.

    Returns flat keys ``i2t_r@K`` and ``t2i_r@K`` for each K, and ``r_mean`` (their mean).
    """
    n = similarity.shape[0]
    if similarity.ndim != 2 or similarity.shape[1] != n:
        raise ValueError(f"similarity must be a square (rows × rows) matrix, got {tuple(similarity.shape)}")
    if len(image_keys) != n or (text_keys is not None and len(text_keys) != n):
        raise ValueError(f"need one image key and one text key per row ({n} rows)")
    if n == 0:
        raise ValueError("cannot compute retrieval metrics over zero pairs")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")

    img_ids, img_first = _dedupe(image_keys)
    txt_ids, txt_first = _dedupe(text_keys if text_keys is not None else range(n))
    sim = similarity.detach().float().cpu()[img_first][:, txt_first]  # distinct images × distinct texts
    relevant = torch.zeros(sim.shape, dtype=torch.bool)
    relevant[img_ids, txt_ids] = True  # every (image, text) pairing present in the data

    out: dict[str, float] = {}
    for direction, scores, rel in (("i2t", sim, relevant), ("t2i", sim.T, relevant.T)):
        for k, value in _hit_rates(scores, rel, ks).items():
            out[f"{direction}_r@{k}"] = value
    out["r_mean"] = _r(sum(out.values()) / len(out))
    return out


def _dedupe(keys: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(id of each row's key, first row holding each distinct key), ids in first-seen order."""
    index: dict[Any, int] = {}
    first: list[int] = []
    ids = []
    for row, key in enumerate(keys):
        if key not in index:
            index[key] = len(first)
            first.append(row)
        ids.append(index[key])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(first, dtype=torch.long)


def _hit_rates(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K in the retrieval-benchmark sense for queries = rows of ``scores``.

    CLIP/COCO "R@K" is 1 for a query when *any* correct item is among its top K, averaged over
    queries: that is torchmetrics' RetrievalHitRate. RetrievalRecall is a different quantity
    (the fraction of *all* correct items found in the top K, so an image with 5 captions would
    score 0.2 at R@1 for a perfect model), and it also silently ignores candidates scoring <= 0,
    which cosine similarities often do.
    """
    num_queries, gallery = scores.shape
    # Hit rate@K only looks at each query's K best candidates, so handing torchmetrics just the
    # top max(K) per query gives the same values while keeping its per-query loop over tens,
    # not tens of thousands, of candidates. A query whose correct items all fall outside that
    # window then has no positive target, which RetrievalHitRate scores 0 ("neg"), as it should.
    window = min(max(ks), gallery)
    top_scores, top_idx = scores.topk(window, dim=1)
    top_relevant = relevant.gather(1, top_idx)
    indexes = torch.arange(num_queries).unsqueeze(1).expand(-1, window)
    result = {}
    for k in ks:
        metric = RetrievalHitRate(top_k=int(k), empty_target_action="neg")
        result[int(k)] = _r(metric(top_scores.flatten(), top_relevant.flatten(), indexes=indexes.flatten()))
    return result


# --------------------------------------------------------------------------- visual question answering

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


# --------------------------------------------------------------------------- captioning

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
