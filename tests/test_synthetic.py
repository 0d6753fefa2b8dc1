"""The procedural shapes world: rendering, captions, files on disk, determinism."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modaltune.testing.synthetic import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    STYLES,
    caption_corpus,
    render,
    scene_corpus,
    write_caption_corpus,
    write_classification_folder,
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def shape_mask(image: Image.Image, background: str) -> np.ndarray:
    """Pixels clearly unlike the (plain) background colour."""
    return np.linalg.norm(pixels(image) - np.array(BACKGROUNDS[background]), axis=-1) > 60


def test_render_is_deterministic_from_the_generator() -> None:
    kw = dict(size_word="small", position="left", background="grey", style="noise")
    a = render("star", "red", rng=np.random.default_rng(1), **kw)
    b = render("star", "red", rng=np.random.default_rng(1), **kw)
    c = render("star", "red", rng=np.random.default_rng(2), **kw)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


@pytest.mark.parametrize("style", STYLES)
def test_every_shape_renders_in_every_style(style: str) -> None:
    for shape in SHAPES:
        image = render(shape, "blue", style=style, image_size=48, rng=np.random.default_rng(0))
        assert image.mode == "RGB" and image.size == (48, 48)


def test_shape_has_its_colour_on_a_plain_background() -> None:
    for shape, colour in itertools.product(SHAPES, ["red", "green", "blue", "yellow", "white", "black"]):
        background = "grey"
        image = render(shape, colour, background=background, rng=np.random.default_rng(0))
        mask = shape_mask(image, background)
        assert mask.sum() > 100, (shape, colour)
        median = np.median(pixels(image)[mask], axis=0)
        assert np.abs(median - np.array(COLOURS[colour])).max() < 30, (shape, colour, median)


def test_shapes_look_different_from_each_other() -> None:
    # Same generator seed → same position, radius and rotation: only the outline differs.
    masks = {s: shape_mask(render(s, "black", rng=np.random.default_rng(0)), "white") for s in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.85, (a, b, iou)


def test_position_and_size_words_mean_what_they_say() -> None:
    def centroid_and_area(**kw: str) -> tuple[np.ndarray, int]:
        mask = shape_mask(
            render("circle", "red", background="white", rng=np.random.default_rng(0), **kw), "white"
        )
        ys, xs = np.nonzero(mask)
        return np.array([xs.mean(), ys.mean()]) / 64, int(mask.sum())

    (lx, _), _ = centroid_and_area(position="left")
    (rx, _), _ = centroid_and_area(position="right")
    (_, ty), _ = centroid_and_area(position="top")
    (_, by), _ = centroid_and_area(position="bottom")
    assert lx < 0.4 < 0.6 < rx and ty < 0.4 < 0.6 < by
    _, small = centroid_and_area(size_word="small")
    _, large = centroid_and_area(size_word="large")
    assert large > 2 * small


def test_styles_shift_the_domain() -> None:
    def render_style(style: str) -> np.ndarray:
        return pixels(render("square", "red", background="white", style=style, rng=np.random.default_rng(0)))

    plain = render_style("plain")
    corner = (slice(0, 8), slice(0, 8))  # background only
    assert render_style("noise")[corner].std() > 20 > plain[corner].std()
    assert render_style("dark").mean() < 0.5 * plain.mean()
    outline, filled = render_style("outline"), plain
    assert (
        shape_mask(Image.fromarray(outline.astype(np.uint8)), "white").sum()
        < 0.6 * shape_mask(Image.fromarray(filled.astype(np.uint8)), "white").sum()
    )


def test_unknown_attributes_are_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        render("blob", "red")
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        render("circle", "teal")
    with pytest.raises(ValueError, match="unknown style"):
        render("circle", "red", style="sepia")


def test_captions_name_the_drawn_shape_and_colour() -> None:
    triples = scene_corpus(200, seed=0, styles=STYLES)
    for scene, image, text in triples:
        words = text.split()
        assert scene.shape in words and scene.colour in words, (scene, text)
        for size in ("small", "large"):
            assert size not in words or size == scene.size_word
        assert image.size == (64, 64)

    def template(scene, text: str) -> str:
        for field in ("shape", "colour", "size_word", "position", "background"):
            text = text.replace(getattr(scene, field), field)
        return text.replace("an ", "a ")

    templates_used = {template(scene, text) for scene, _, text in triples}
    assert len(templates_used) >= 8  # captions vary, not one fixed sentence
    assert {s.style for s, _, _ in triples} == set(STYLES)


def test_caption_corpus_is_seeded_and_prefix_stable() -> None:
    a = caption_corpus(30, seed=5, image_size=32)
    b = caption_corpus(40, seed=5, image_size=32)
    c = caption_corpus(30, seed=6, image_size=32)
    assert [t for _, t in a] == [t for _, t in b[:30]]
    assert all(np.array_equal(pixels(x), pixels(y)) for (x, _), (y, _) in zip(a, b[:30], strict=True))
    assert [t for _, t in a] != [t for _, t in c]


def test_caption_manifest_on_disk(caption_manifest: Path) -> None:
    rows = [json.loads(line) for line in caption_manifest.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 24 and caption_manifest.name == "captions.jsonl"
    for row in rows:
        assert set(row) == {"image", "text"}
        assert not Path(row["image"]).is_absolute() and row["image"].startswith("images/")
        with Image.open(caption_manifest.parent / row["image"]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    assert len({row["image"] for row in rows}) == 24


def test_write_caption_corpus_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    a = write_caption_corpus(tmp_path / "a", 5, seed=1, image_size=32, styles=("plain", "noise"))
    b = write_caption_corpus(tmp_path / "b", 5, seed=1, image_size=32, styles=("plain", "noise"))
    assert a.read_bytes() == b.read_bytes()
    for png in sorted((a.parent / "images").iterdir()):
        assert png.read_bytes() == (b.parent / "images" / png.name).read_bytes()


def test_shape_folder_fixture_layout(shape_folder: Path) -> None:
    for split, count in {"train": 6, "val": 4}.items():
        assert sorted(p.name for p in (shape_folder / split).iterdir()) == ["circle", "square", "triangle"]
        for label in ["circle", "square", "triangle"]:
            files = sorted((shape_folder / split / label).glob("*.png"))
            assert len(files) == count
            with Image.open(files[0]) as image:
                assert image.size == (32, 32)


def test_classification_folder_counts_and_stable_splits(tmp_path: Path) -> None:
    classes = ["red", "blue"]
    a = write_classification_folder(
        tmp_path / "a",
        classes=classes,
        attribute="colour",
        per_class={"train": 2, "val": 3, "test": 3},
        seed=0,
    )
    b = write_classification_folder(
        tmp_path / "b",
        classes=classes,
        attribute="colour",
        per_class={"train": 5, "val": 3, "test": 3},
        seed=0,
    )
    assert sorted(p.name for p in a.iterdir()) == ["test", "train", "val"]
    assert len(list((b / "train" / "red").glob("*.png"))) == 5
    for split, label in itertools.product(["val", "test"], classes):
        assert len(list((a / split / label).glob("*.png"))) == 3
    # More training images keep the first ones and leave val/test untouched.
    same = ["train/red/0000.png", "train/red/0001.png", "val/blue/0002.png", "test/red/0000.png"]
    for rel in same:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # Labelled by colour: the shape pixels carry the class colour whatever the shape.
    for label in classes:
        for png in (a / "train" / label).glob("*.png"):
            with Image.open(png) as image:
                rgb = pixels(image)
            distances = {c: np.linalg.norm(rgb - np.array(v), axis=-1) for c, v in COLOURS.items()}
            nearest = min(distances, key=lambda c: np.sort(distances[c].ravel())[:30].mean())
            assert nearest == label, png


def test_classification_folder_rejects_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown shape classes"):
        write_classification_folder(
            tmp_path, classes=["circle", "red"], attribute="shape", per_class={"train": 1}, seed=0
        )
    with pytest.raises(ValueError, match="attribute"):
        write_classification_folder(
            tmp_path, classes=["red"], attribute="size", per_class={"train": 1}, seed=0
        )  # type: ignore[arg-type]
