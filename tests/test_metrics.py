"""Metric wrappers: values worked out by hand, and the zero-division / duplicate-key conventions."""

from __future__ import annotations

import json
import random

import pytest
import torch

from modaltune.metrics import classification_metrics, rank_scores, retrieval_metrics

# --------------------------------------------------------------------------- classification


def test_classification_hand_worked_example() -> None:
    # class a: tp 1          → P 1,   R 1,   F1 1
    # class b: tp 1, fp 1    → P 1/2, R 1,   F1 2/3
    # class c: tp 1, fn 1    → P 1,   R 1/2, F1 2/3        macro-F1 = (1 + 2/3 + 2/3) / 3 = 7/9
    m = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c"])

    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == round(7 / 9, 6)
    assert m["per_class"] == {
        "a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "b": {"precision": 0.5, "recall": 1.0, "f1": 0.666667, "support": 1},
        "c": {"precision": 1.0, "recall": 0.5, "f1": 0.666667, "support": 2},
    }
    # rows = true class, columns = predicted: one true "c" was predicted as "b".
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_macro_f1_ignores_classes_absent_from_preds_and_targets() -> None:
    # "d" never occurs: it must neither pull macro-F1 down (as 0) nor up (as 1).
    m = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c", "d"])

    assert m["macro_f1"] == round(7 / 9, 6)
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]


def test_macro_f1_counts_a_class_predicted_without_support() -> None:
    # "d" is predicted once but never true: a real mistake, so it enters the mean with F1 0.
    # per-class F1: a 1, b 1, c 2/3, d 0 → (2 + 2/3) / 4
    m = classification_metrics([0, 1, 3, 2], [0, 1, 2, 2], ["a", "b", "c", "d"])

    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == round((2 + 2 / 3) / 4, 6)
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["c"]["recall"] == 0.5


def test_classification_values_are_plain_json_types() -> None:
    m = classification_metrics([1, 0], [1, 1], ["x", "y"])

    assert type(m["accuracy"]) is float and type(m["macro_f1"]) is float
    assert type(m["per_class"]["y"]["support"]) is int
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)
    assert json.loads(json.dumps(m)) == m


@pytest.mark.parametrize(
    ("preds", "targets", "message"),
    [([0, 1], [0], "2 predictions for 1 targets"), ([0, 5], [0, 1], "preds must be class indices"),
     ([], [], "zero examples")],
)
def test_classification_rejects_bad_input(preds: list[int], targets: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(preds, targets, ["a", "b"])


# --------------------------------------------------------------------------- retrieval


def test_retrieval_hand_worked_ranks() -> None:
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.8],  # image 0: text 0 first            → hit@1
            [0.2, 0.5, 0.7],  # image 1: text 2, then text 1      → miss@1, hit@2
            [0.1, 0.3, 0.6],  # image 2: text 2 first            → hit@1
        ]
    )
    # columns (text → image): text 0 → image 0 hit@1; text 1 → image 1 hit@1;
    # text 2 → images 0, 1 before image 2 → miss@1 and miss@2.
    m = retrieval_metrics(sim, ["a", "b", "c"], ks=(1, 2))

    assert m == {
        "i2t_r@1": round(2 / 3, 6),
        "i2t_r@2": 1.0,
        "t2i_r@1": round(2 / 3, 6),
        "t2i_r@2": round(2 / 3, 6),
        "r_mean": round((2 / 3 + 1 + 2 / 3 + 2 / 3) / 4, 6),
    }
    assert all(type(v) is float for v in m.values())


def test_duplicate_captions_are_separate_queries() -> None:
    # Rows 0 and 1 share the caption string "a dog" (images x and y) and so embed identically:
    # columns 0 and 1 are equal. As in CLIP_benchmark each row is its own text query, relevant to
    # its own image only. (Until issue 14 the two rows were merged into one query counting for both.)
    sim = torch.tensor([[0.9, 0.9, 0.0], [0.8, 0.8, 0.0], [0.0, 0.0, 0.9]])

    m = retrieval_metrics(sim, ["x", "y", "z"], ks=(1,))

    # t2i: row 0 → x first (hit), row 1 → x first (miss: its image is y), row 2 → z (hit).
    assert m["t2i_r@1"] == round(2 / 3, 6)
    # i2t: x sees rows 0 and 1 tied at 0.9; the later row ranks first (the tie rule), a miss. y sees
    # them tied at 0.8, row 1 first, a hit. z: hit.
    assert m["i2t_r@1"] == round(2 / 3, 6)
    # Both tied image queries are reported, with the bounds of ordering ties against / for them.
    ties = m["retrieval_ties"]
    assert (ties["i2t_queries"], ties["t2i_queries"]) == (2, 0)
    assert ties["pessimistic"]["i2t_r@1"] == round(1 / 3, 6)
    assert ties["optimistic"]["i2t_r@1"] == 1.0
    assert ties["pessimistic"]["t2i_r@1"] == ties["optimistic"]["t2i_r@1"] == round(2 / 3, 6)
    assert ties["pessimistic"]["r_mean"] == round((1 / 3 + 2 / 3) / 2, 6)


def test_duplicate_images_coco_style() -> None:
    # Image w has two captions (rows 0, 1), image z one (row 2). Rows of w embed identically.
    sim = torch.tensor([[0.8, 0.8, 0.9], [0.8, 0.8, 0.9], [0.1, 0.1, 0.5]])

    m = retrieval_metrics(sim, ["w", "w", "z"], ks=(1, 2))

    # i2t: two queries (w, z), not three rows. w ranks t3 first (wrong), then one of its own
    # captions; z ranks t3 first (right).
    assert m["i2t_r@1"] == 0.5
    assert m["i2t_r@2"] == 1.0
    # t2i: gallery is {w, z}. t1, t2 → w (right); t3 → w first, z second. Were w listed twice,
    # its copies would fill the top 2 and t3 would miss at K=2 as well.
    assert m["t2i_r@1"] == round(2 / 3, 6)
    assert m["t2i_r@2"] == 1.0


def test_negative_similarities_and_k_beyond_gallery() -> None:
    # Cosine scores are often negative: they must still rank (torchmetrics' RetrievalRecall
    # would drop them). K = 10 > 2 candidates saturates at 1.0.
    sim = torch.tensor([[-0.1, -0.9], [-0.8, -0.2]])

    m = retrieval_metrics(sim, ["a", "b"])

    assert set(m) == {f"{d}_r@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"r_mean"}
    assert all(v == 1.0 for v in m.values())


def _brute_force(sim: torch.Tensor, image_keys: list[str], k: int) -> tuple[float, float]:
    """Straightforward reference: distinct images and every text row are queries / gallery items;
    a text row is relevant to its own row's image only."""
    images = list(dict.fromkeys(image_keys))
    img_row = {key: image_keys.index(key) for key in images}
    rows = range(len(image_keys))

    def hit(query_scores: list[tuple[float, bool]]) -> float:
        ranked = sorted(query_scores, key=lambda s: -s[0])[:k]
        return float(any(relevant for _, relevant in ranked))

    i2t = [hit([(float(sim[img_row[i], t]), image_keys[t] == i) for t in rows]) for i in images]
    t2i = [hit([(float(sim[img_row[i], t]), image_keys[t] == i) for i in images]) for t in rows]
    return sum(i2t) / len(i2t), sum(t2i) / len(t2i)


def test_retrieval_matches_brute_force_on_random_duplicates() -> None:
    rng = random.Random(0)
    n = 60
    image_keys = [f"img{rng.randrange(25)}" for _ in range(n)]
    torch.manual_seed(0)
    sim = torch.randn(n, n)  # continuous scores: no ties, so the ranking is unambiguous

    m = retrieval_metrics(sim, image_keys, ks=(1, 3, 7))

    assert "retrieval_ties" not in m
    for k in (1, 3, 7):
        i2t, t2i = _brute_force(sim, image_keys, k)
        assert m[f"i2t_r@{k}"] == pytest.approx(i2t, abs=1e-6)
        assert m[f"t2i_r@{k}"] == pytest.approx(t2i, abs=1e-6)


def test_retrieval_ties_follow_rank_scores_with_bounds() -> None:
    # Scores in {0, 1, 2}: ties everywhere. Each query's rank must be where rank_scores puts its
    # first relevant item; the bounds put relevant items last / first among equal scores.
    rng = random.Random(1)
    n = 40
    image_keys = [f"img{rng.randrange(15)}" for _ in range(n)]
    sim = torch.tensor([[float(rng.randrange(3)) for _ in range(n)] for _ in range(n)])
    m = retrieval_metrics(sim, image_keys, ks=(1, 2, 5))

    images = list(dict.fromkeys(image_keys))
    scores = sim[[image_keys.index(i) for i in images]]  # distinct images × text rows
    relevant = torch.tensor([[image_keys[t] == i for t in range(n)] for i in images])
    for direction, s, rel in (("i2t", scores, relevant), ("t2i", scores.T, relevant.T)):
        order = rank_scores(s)
        first = [next(r for r, j in enumerate(row.tolist()) if rel[q, j]) for q, row in enumerate(order)]
        for k in (1, 2, 5):
            rule = sum(r < k for r in first) / len(first)
            worst = sum(int((s[q] > best).sum() + ((s[q] == best) & ~rel[q]).sum()) < k
                        for q, best in enumerate(s.masked_fill(~rel, -1).amax(1))) / len(first)
            best_case = sum(int((s[q] > best).sum()) < k
                            for q, best in enumerate(s.masked_fill(~rel, -1).amax(1))) / len(first)
            assert m[f"{direction}_r@{k}"] == pytest.approx(rule, abs=1e-6)
            assert m["retrieval_ties"]["pessimistic"][f"{direction}_r@{k}"] == pytest.approx(worst, abs=1e-6)
            assert m["retrieval_ties"]["optimistic"][f"{direction}_r@{k}"] == pytest.approx(best_case, abs=1e-6)


def test_retrieval_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(torch.zeros(2, 3), ["a", "b"])
    with pytest.raises(ValueError, match="one image key"):
        retrieval_metrics(torch.zeros(2, 2), ["a"])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), ["a", "b"])
