"""Image decoding (`data.media`) and augmentation (`data.augment`), on media made in the test."""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from modaltune.data.augment import augment_image
from modaltune.data.media import MediaError, check_image, load_image, to_rgb
from modaltune.errors import DataError


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _noise(size=(64, 48), seed=0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _reason(path: Path, **kwargs) -> str:
    with pytest.raises(MediaError) as info:
        load_image(path, **kwargs)
    return info.value.reason


# --- mode conversion ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_is_scaled_not_clipped(tmp_path, fmt):
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / f"deep.{fmt.lower()}", format=fmt)
    assert Image.open(path).mode.startswith("I")  # the file really is 16-bit
    img = load_image(path)
    assert img.mode == "RGB"
    assert [img.getpixel((x, 0)) for x in range(4)] == [
        (0, 0, 0),
        (1, 1, 1),
        (128, 128, 128),
        (255, 255, 255),
    ]


def test_16bit_big_endian_mode():
    data = np.full((2, 2), 32768, dtype=">u2").tobytes()
    img = to_rgb(Image.frombytes("I;16B", (2, 2), data))
    assert img.getpixel((0, 0)) == (128, 128, 128)


def test_32bit_int_within_16_bits_divides_by_257_and_beyond_scales_by_max():
    in_range = to_rgb(Image.fromarray(np.array([[32768, 65535]], dtype=np.int32)))
    assert in_range.getpixel((0, 0)) == (128, 128, 128)
    wide = to_rgb(Image.fromarray(np.array([[0, 100_000, 200_000]], dtype=np.int32)))
    assert [wide.getpixel((x, 0))[0] for x in range(3)] == pytest.approx([0, 127.5, 255], abs=0.5)


def test_float_in_unit_range_maps_linearly_and_wider_range_is_scaled(tmp_path):
    unit = _save(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), tmp_path / "f.tif")
    assert Image.open(unit).mode == "F"
    assert [load_image(unit).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide = to_rgb(Image.fromarray(np.array([[-10.0, 0.0, 10.0]], dtype=np.float32)))
    assert [wide.getpixel((x, 0))[0] for x in range(3)] == pytest.approx([0, 127.5, 255], abs=0.5)


def test_grayscale_and_bilevel(tmp_path):
    gray = load_image(_save(Image.new("L", (3, 3), 77), tmp_path / "g.png"))
    assert gray.getpixel((1, 1)) == (77, 77, 77)
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    img = load_image(_save(bilevel, tmp_path / "b.png"))
    assert [img.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black (transparent), 1 red
    pal.putpixel((1, 0), 1)
    path = _save(pal, tmp_path / "p.png", transparency=0)
    assert Image.open(path).info.get("transparency") == 0
    img = load_image(path)
    # The black hidden under the transparent pixel must not show through.
    assert [img.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (255, 0, 0)]


def test_palette_without_transparency(tmp_path):
    pal = Image.new("P", (1, 1), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert load_image(_save(pal, tmp_path / "p.gif")).getpixel((0, 0)) == (10, 200, 30)


def test_rgba_and_la_alpha_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    img = load_image(_save(rgba, tmp_path / "a.png"))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in img.getpixel((1, 0)))
    la = load_image(_save(Image.new("LA", (1, 1), (0, 0)), tmp_path / "la.png"))
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_rgb_with_transparency_key_is_composited(tmp_path):
    rgb = Image.new("RGB", (2, 1), (0, 0, 0))
    rgb.putpixel((1, 0), (0, 0, 255))
    img = load_image(_save(rgb, tmp_path / "k.png", transparency=(0, 0, 0)))
    assert [img.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (0, 0, 255)]


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("TIFF", "tif")])
def test_cmyk_converted_to_rgb(tmp_path, fmt, suffix):
    path = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / f"c.{suffix}", format=fmt)
    assert Image.open(path).mode == "CMYK"
    r, g, b = load_image(path).getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def test_exif_orientation_6_rotates(tmp_path):
    # 4 wide x 2 tall, left half red, right half blue; orientation 6 = rotate 90° clockwise to view.
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    img.paste((0, 0, 255), (2, 0, 4, 2))
    exif = img.getexif()
    exif[0x0112] = 6
    out = load_image(_save(img, tmp_path / "rot.png", exif=exif))
    assert out.size == (2, 4)
    assert out.getpixel((0, 0)) == (255, 0, 0)  # former left (red) is now on top
    assert out.getpixel((0, 3)) == (0, 0, 255)


def test_result_is_independent_of_the_file(tmp_path):
    path = _save(_noise(), tmp_path / "n.png")
    img = load_image(path)
    path.unlink()  # no lazy access to the file remains
    assert img.mode == "RGB" and img.size == (64, 48)
    assert np.asarray(img).shape == (48, 64, 3)


# --- reason codes -------------------------------------------------------------------------------


def test_missing_and_empty_file(tmp_path):
    assert _reason(tmp_path / "nope.png") == "missing_file"
    assert _reason(tmp_path) == "missing_file"  # a folder is not an image
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert _reason(tmp_path / "zero.jpg") == "empty_file"


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    (tmp_path / "fake.jpg").write_text("hello, I am a caption\n")
    assert _reason(tmp_path / "fake.jpg") == "not_an_image"


def test_image_cut_inside_its_header_is_corrupt_not_foreign(tmp_path):
    data = _save(_noise(), tmp_path / "n.png").read_bytes()
    (tmp_path / "head.png").write_bytes(data[:20])  # signature intact, IHDR cut
    assert _reason(tmp_path / "head.png") == "corrupt_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_corrupt(tmp_path, fmt):
    buf = io.BytesIO()
    _noise((128, 128)).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path) == "corrupt_image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # detected without changing PIL's global


def test_image_too_large_is_checked_on_the_header_before_decoding(tmp_path):
    path = _save(_noise((10, 10)), tmp_path / "big.png")
    assert _reason(path, max_pixels=99) == "image_too_large"
    load_image(path, max_pixels=100)  # exactly at the limit is fine
    # A truncated file over the limit reports the size: the pixels were never decoded.
    data = path.read_bytes()
    cut = tmp_path / "big_cut.png"
    cut.write_bytes(data[: len(data) // 2])
    assert _reason(cut, max_pixels=50) == "image_too_large"


def test_pil_decompression_bomb_is_reported_and_globals_do_not_leak(tmp_path, monkeypatch):
    path = _save(_noise((20, 20)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)  # pretend 400 px is a bomb (warning zone)
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image(path, max_pixels=10_000).size == (20, 20)  # caller allows more: our limit decides
        assert _reason(path, max_pixels=300) == "image_too_large"  # our header check
        assert _reason(path, max_pixels=200) == "image_too_large"  # PIL's warning, turned into a reason
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice PIL's limit: PIL raises
    assert _reason(path, max_pixels=10_000) == "image_too_large"
    assert Image.MAX_IMAGE_PIXELS == 100
    assert warnings.filters == filters_before


def test_media_error_is_a_data_error_and_check_image_matches(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match="0 bytes"):
        check_image(tmp_path / "zero.png")
    assert check_image(_save(_noise(), tmp_path / "ok.png")) is None


# --- augmentation -------------------------------------------------------------------------------


def test_augment_is_deterministic_for_a_seed_and_keeps_size():
    img = _noise((64, 48))
    a = augment_image(img, random.Random(7))
    b = augment_image(img, random.Random(7))
    assert a.size == img.size and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    outs = {augment_image(img, random.Random(seed)).tobytes() for seed in range(8)}
    assert len(outs) > 1  # different seeds give different crops


def test_augment_flip_only_mirrors():
    img = _noise((16, 8))
    # scale=(1, 1) and ratio = the image's aspect: the crop is the whole image.
    outs = [augment_image(img, random.Random(s), scale=(1, 1), ratio=(2, 2)) for s in range(20)]
    mirrored = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).tobytes()
    kinds = {o.tobytes() for o in outs}
    assert kinds == {img.tobytes(), mirrored}
    no_flip = augment_image(img, random.Random(0), scale=(1, 1), ratio=(2, 2), flip=False)
    assert no_flip.tobytes() == img.tobytes()


def test_augment_fallback_center_crop_for_extreme_aspect():
    # A 100x2 strip cannot fit a ratio-1 crop of ≥50% area in 10 tries: centre crop 2x2, resized back.
    img = Image.new("RGB", (100, 2), (0, 0, 0))
    img.paste((255, 255, 255), (49, 0, 51, 2))
    out = augment_image(img, random.Random(0), scale=(0.5, 1.0), ratio=(1, 1), flip=False)
    assert out.size == (100, 2)
    assert np.asarray(out).min() > 200  # only the white centre was kept


def test_augment_rejects_bad_arguments():
    with pytest.raises(ValueError):
        augment_image(_noise(), random.Random(0), scale=(0.0, 1.0))


def test_augmentation_moves_an_image_coordinate_target_with_the_pixels():
    """A field of image coordinates (a box, as detection will register) is moved by the same crop,
    resize and flip as the pixels: the white rectangle is found where the moved box says."""
    from dataclasses import dataclass

    from modaltune.data.augment import Geometry, augment_example
    from modaltune.data.fields import Field, register_field
    from modaltune.data.rows import Example

    @dataclass(frozen=True)
    class MarkerBox(Field):
        def transform(self, value, geometry: Geometry):
            return geometry.map_box(value)

    register_field(MarkerBox("marker_box_for_test"))
    img = Image.new("RGB", (96, 64), (0, 0, 0))
    box = (30, 20, 60, 44)  # x0, y0, x1, y1
    img.paste((255, 255, 255), box)
    example = Example("e", marker_box_for_test=box, label="thing")
    kept = 0
    sides = set()
    for seed in range(40):
        moved, media = augment_example(example, {"image": img}, random.Random(seed))
        assert moved.label == "thing" and example.marker_box_for_test == box  # the input is untouched
        # the same draws as the plain image augmentation (exact resume depends on it)
        assert media["image"].tobytes() == augment_image(img, random.Random(seed)).tobytes()
        white = np.argwhere(np.asarray(media["image"].convert("L")) > 127)
        target = moved.marker_box_for_test
        if target is None:  # the crop missed the rectangle entirely
            assert len(white) == 0
            continue
        kept += 1
        (y0, x0), (y1, x1) = white.min(0), white.max(0) + 1
        # bilinear resampling blurs edges by about one source pixel, scaled up by the resize
        assert np.allclose((x0, y0, x1, y1), target, atol=3.0), (seed, (x0, y0, x1, y1), target)
        sides.add((target[0] + target[2]) / 2 > 48)  # the rectangle sits left of centre until mirrored
    assert kept >= 30 and sides == {True, False}
