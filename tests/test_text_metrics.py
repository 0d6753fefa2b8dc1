"""VQA and captioning metrics: values worked out by hand, normalisation rules and input checks."""

from __future__ import annotations

import math

import pytest

from modaltune.metrics import caption_metrics, caption_tokens, normalize_vqa_answer, vqa_metrics, vqa_scores

# --------------------------------------------------------------------------- VQA normalisation


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs.", "2 dogs"),  # lowercase, final period dropped, number word → digit
        ("  The Cat\n", "cat"),  # strip, article dropped
        ("an apple\ta day", "apple day"),  # tab → space, both articles dropped, spaces collapsed
        ("none", "0"),
        ("Yes!", "yes"),
        ("black/white", "black white"),  # mark not touching a space → becomes a space
        ("red, white", "red white"),  # mark touching a space → deleted
        ("1,000", "1000"),  # digit,digit → marks deleted, not spaced
        ("2.5", "2.5"),  # a period followed by a digit stays
        ("u.s.a.", "usa"),  # other periods go
        ("7:30", "7:30"),  # colons are not on the official list
        ("dont", "don't"),
        ("it isnt", "it isn't"),
        ("The Dog's bone", "dog's bone"),
    ],
)
def test_normalize_vqa_answer(raw: str, normalised: str) -> None:
    assert normalize_vqa_answer(raw) == normalised


# --------------------------------------------------------------------------- VQA accuracy


def test_vqa_score_ten_answers_three_match() -> None:
    # 10 leave-one-out subsets: the 7 that leave out a non-match keep 3 matches → min(3/3, 1) = 1;
    # the 3 that leave out a match keep 2 → 2/3.  (7 * 1 + 3 * 2/3) / 10 = 0.9
    answers = ["2", "2", "two"] + ["3"] * 7
    assert vqa_scores("Two", answers) == pytest.approx(0.9)


def test_vqa_score_ten_answers_one_match() -> None:
    # 9 subsets keep the match → 1/3; the one leaving it out has 0.  (9 * 1/3 + 0) / 10 = 0.3
    assert vqa_scores("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)


def test_vqa_score_ten_answers_four_or_more_match_is_full_credit() -> None:
    # every subset keeps at least 3 matches
    assert vqa_scores("red", ["red"] * 4 + ["blue"] * 6) == 1.0
    assert vqa_scores("green", ["red"] * 4 + ["blue"] * 6) == 0.0


def test_vqa_score_four_answers_uses_leave_one_out() -> None:
    # n = 4, one match: 3 subsets keep it → 1/3, one does not → 0.  (3 * 1/3) / 4 = 0.25
    assert vqa_scores("cat", ["cat", "dog", "dog", "dog"]) == pytest.approx(0.25)


def test_vqa_score_few_answers_is_share_matched() -> None:
    # n <= 3: threshold t = min(3, n) = n, score = min(matches / n, 1)
    assert vqa_scores("Yes.", ["yes"]) == 1.0  # single answer: exact match after normalisation
    assert vqa_scores("no", ["yes"]) == 0.0
    assert vqa_scores("yes", ["yes", "no"]) == 0.5
    assert vqa_scores("yes", ["yes", "no", "maybe"]) == pytest.approx(1 / 3)
    assert vqa_scores("yes", ["yes", "Yes", "yes!"]) == 1.0


def test_vqa_score_needs_answers() -> None:
    with pytest.raises(ValueError, match="at least one reference answer"):
        vqa_scores("yes", [])


def test_vqa_metrics_hand_worked() -> None:
    # q1: 3 of 10 answers say "two" → 0.9; most frequent is "3" → not an exact match
    # q2: 6 of 10 say "red" → 1.0; "red" is most frequent → exact
    # q3: single answer "dog", predicted "cat" → 0, not exact
    # accuracy = (0.9 + 1 + 0) / 3 = 0.633333, exact match = 1/3
    m = vqa_metrics(
        ["2", "Red.", "cat"],
        [["two"] * 3 + ["3"] * 7, ["red"] * 6 + ["blue"] * 4, ["dog"]],
    )
    assert m == {"vqa_accuracy": 0.633333, "exact_match": 0.333333}


def test_vqa_exact_match_counts_tied_most_frequent_answers() -> None:
    m = vqa_metrics(["blue", "red"], [["red"] * 5 + ["blue"] * 5, ["red"] * 5 + ["blue"] * 5])
    assert m == {"vqa_accuracy": 1.0, "exact_match": 1.0}


def test_vqa_metrics_input_checks() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1"):
        vqa_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"none for questions \[1\]"):
        vqa_metrics(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="zero questions"):
        vqa_metrics([], [])


# --------------------------------------------------------------------------- caption tokens


@pytest.mark.parametrize(
    ("raw", "tokens"),
    [
        ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
        ("Two dogs, playing in the snow!", "two dogs playing in the snow"),
        ("A man's hand; isn't it? I can't.", "a man 's hand is n't it i ca n't"),
        ("A black-and-white photo of 1,000 birds...", "a black-and-white photo of 1,000 birds"),
        ('A sign that says "No Parking" at 3.5 p.m.', "a sign that says no parking at 3.5 p.m."),
        ("A baby elephant (very small)", "a baby elephant -lrb- very small -rrb-"),  # kept, as in COCO
        ("50% off for $5 - really -- wow!!", "50 % off for $ 5 really wow !!"),  # "!!" is not on COCO's list
        ("I\u2019m \u201cquoted\u201d \u2014 ok\u2026", "i 'm quoted ok"),
        ("  spaced \n out  ", "spaced out"),
    ],
)
def test_caption_tokens_mirror_coco_ptb_step(raw: str, tokens: str) -> None:
    # Expected strings are what pycocoevalcap's Java PTBTokenizer + punctuation filter produce.
    assert caption_tokens(raw) == tokens


# --------------------------------------------------------------------------- caption metrics


def test_identical_caption_scores_full_bleu_and_rouge() -> None:
    # 9 tokens, every n-gram matched, same length → all BLEU-n = 1, LCS = whole sentence → ROUGE-L = 1.
    # Punctuation and case are tokenised away on both sides.
    m = caption_metrics(
        {"img": "A man rides a red bike down the street."}, {"img": ["a man rides a red bike, down the street"]}
    )
    assert (m["bleu_1"], m["bleu_2"], m["bleu_3"], m["bleu_4"], m["rouge_l"]) == (1.0, 1.0, 1.0, 1.0, 1.0)
    # CIDEr's idf is log(#images) - log(document frequency) = log 1 - log 1 = 0 for a single image.
    assert m["cider"] == 0.0


def test_bleu_hand_worked_with_clipping_and_brevity_penalty() -> None:
    # pred "the the the cat" (c = 4), ref "the cat sat on the mat" (r = 6)
    # unigrams: "the" clipped to its 2 reference occurrences + "cat" → p1 = 3/4
    # bigrams: "the the" ×2, "the cat" ×1 → only "the cat" matches → p2 = 1/3
    # brevity penalty exp(1 - r/c) = exp(-0.5)
    # BLEU-1 = 3/4 · e^-0.5 = 0.454898,  BLEU-2 = sqrt(3/4 · 1/3) · e^-0.5 = 0.5 · e^-0.5 = 0.303265
    m = caption_metrics({"img": "The the the cat."}, {"img": ["the cat sat on the mat"]})
    assert m["bleu_1"] == pytest.approx(0.75 * math.exp(-0.5), abs=1e-6)
    assert m["bleu_2"] == pytest.approx(0.5 * math.exp(-0.5), abs=1e-6)
    assert m["bleu_4"] == pytest.approx(0.0, abs=1e-6)  # no 3- or 4-gram matches


def test_rouge_l_hand_worked() -> None:
    # LCS("a dog runs", "a brown dog runs on the grass") = "a dog runs" = 3
    # P = 3/3 = 1, R = 3/7;  F = (1 + 1.2²) P R / (R + 1.2² P) = 2.44 · 3/7 / (3/7 + 1.44) = 7.32 / 13.08
    m = caption_metrics({"img": "a dog runs"}, {"img": ["a brown dog runs on the grass"]})
    assert m["rouge_l"] == pytest.approx(7.32 / 13.08, abs=1e-6)  # 0.559633


def test_rouge_l_takes_best_precision_and_best_recall_separately() -> None:
    # pycocoevalcap maximises P and R over references independently:
    # ref "a dog": LCS 2 → P 2/3, R 1;  ref "a brown dog runs on the grass": LCS 3 → P 1, R 3/7
    # max P = 1, max R = 1 → F = 1, although no single reference gives that.
    m = caption_metrics({"img": "a dog runs"}, {"img": ["a dog", "a brown dog runs on the grass"]})
    assert m["rouge_l"] == 1.0


def test_cider_hand_worked() -> None:
    # 2 images with disjoint vocabularies: every reference n-gram has document frequency 1, so every
    # n-gram weight is tf · (log 2 - log 1) = log 2 (n-grams missing from the references too).
    # img 1, "a cat" vs "a dog": 1-grams cosine = (log2)² / (√2 log2 · √2 log2) = 1/2, 2-grams 0,
    #        no 3-/4-grams → 0;  mean over n = 1..4 = 1/8, ×10 → 1.25
    # img 2, "red bus" vs "red bus": 1-grams 1, 2-grams 1, 3-/4-grams 0 → mean 1/2, ×10 → 5
    # Same lengths → Gaussian length penalty 1.  CIDEr = (1.25 + 5) / 2 = 3.125
    m = caption_metrics({"1": "a cat", "2": "red bus"}, {"1": ["a dog"], "2": ["red bus"]})
    assert m["cider"] == pytest.approx(3.125, abs=1e-6)


def test_cider_perfect_long_captions_score_ten() -> None:
    # Identical captions of >= 4 tokens: cosine 1 for each n = 1..4 → mean 1, ×10 → 10 per image.
    refs = {"1": ["a dog runs on grass"], "2": ["red bus parked outside today"]}
    m = caption_metrics({"1": "A dog runs on grass.", "2": "Red bus parked outside today"}, refs)
    assert m["cider"] == pytest.approx(10.0, abs=1e-6)


def test_cider_zero_without_shared_ngrams_and_higher_for_better_caption() -> None:
    m = caption_metrics({"1": "green tree", "2": "blue sky"}, {"1": ["a dog"], "2": ["red bus"]})
    assert m["cider"] == 0.0
    assert m["bleu_1"] == 0.0 and m["rouge_l"] == 0.0

    refs = {
        "x": ["a dog runs on the grass", "a brown dog running on grass"],
        "y": ["a red bus on a street"],
        "z": ["two people playing tennis"],
    }
    others = {"y": "a bus", "z": "people playing tennis"}
    good = caption_metrics({"x": "a dog running on the grass", **others}, refs)
    bad = caption_metrics({"x": "a cat sitting on a couch", **others}, refs)
    assert good["cider"] > bad["cider"] > 0
    assert good["bleu_4"] > bad["bleu_4"] and good["rouge_l"] > bad["rouge_l"]


def test_caption_metrics_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    caption_metrics({"1": "a cat", "2": "red bus"}, {"1": ["a dog"], "2": ["red bus"]})
    assert capsys.readouterr().out == ""


def test_caption_metrics_input_checks() -> None:
    with pytest.raises(ValueError, match=r"same image ids.*without a prediction: \['2'\].*without references: \['3'\]"):
        caption_metrics({"1": "a", "3": "b"}, {"1": ["a"], "2": ["b"]})
    with pytest.raises(ValueError, match=r"at least one reference caption; none for \['2'\]"):
        caption_metrics({"1": "a", "2": "b"}, {"1": ["a"], "2": []})
    with pytest.raises(ValueError, match="zero images"):
        caption_metrics({}, {})
