"""Decode one image file into an 8-bit RGB ``PIL.Image``, or say precisely why it cannot be used.

Every model family consumes 8-bit RGB, but user files arrive as grayscale, palette, CMYK,
16-bit and float scans, with alpha and EXIF rotation. PIL's implicit ``convert("RGB")`` gets
several of these silently wrong (16-bit is clipped to white, alpha is dropped to whatever colour
hides under transparent pixels, EXIF rotation is ignored), so each case is converted explicitly.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modaltune.data.media.base import MediaDecoder, MediaError

#: PIL's own decompression-bomb threshold (about 89.5 megapixels, e.g. 9459 x 9459).
DEFAULT_MAX_PIXELS = 89_478_485

# What a decoder raises on damaged data. PIL is not consistent: truncation is an OSError, a bad PNG
# chunk a SyntaxError, some TIFF/BMP header damage a ValueError or struct.error, zlib streams zlib.error.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and convert ``path`` to RGB; raise `MediaError` with a reason code otherwise.

    The size limit is checked on the header, before any pixel is decoded, so an oversized file
    costs no memory. The returned image owns its pixels: no file handle stays open.
    Uses ``warnings.catch_warnings`` (process-global), so decode in worker processes, not threads.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise MediaError("missing_file", f"{path} {what}")
    if path.stat().st_size == 0:
        raise MediaError("empty_file", f"{path} is 0 bytes")

    with warnings.catch_warnings():
        # PIL warns (rather than fails) between MAX_IMAGE_PIXELS and twice that. Make the warning an
        # error when our limit is at least as strict, so it is reported per file instead of printed;
        # when the caller allows more than PIL does, silence it and let our own check decide.
        action: Literal["error", "ignore"] = "error" if max_pixels <= (Image.MAX_IMAGE_PIXELS or 0) else "ignore"
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise MediaError(
                        "image_too_large",
                        f"{path} is {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{max_pixels:,}; downscale it or raise max_pixels",
                    )
                try:
                    im.load()  # decode now, so a truncated file fails here and not mid-training
                except _DECODE_ERRORS as exc:
                    raise MediaError("corrupt_image", f"{path} could not be decoded: {exc}") from exc
                return to_rgb(_apply_exif_orientation(im))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise MediaError(
                "image_too_large", f"{path} exceeds PIL's decompression-bomb limit: {exc}"
            ) from exc
        except UnidentifiedImageError as exc:
            if _has_image_signature(path):  # e.g. a PNG cut off inside its header
                raise MediaError(
                    "corrupt_image", f"{path} starts like an image but its header is damaged"
                ) from exc
            raise MediaError(
                "not_an_image", f"{path} is not an image PIL can read (is it named with the wrong extension?)"
            ) from exc
        except PermissionError as exc:
            raise MediaError("missing_file", f"{path} cannot be read: permission denied") from exc
        except _DECODE_ERRORS as exc:  # damage in the header, found while opening
            raise MediaError("corrupt_image", f"{path} could not be opened: {exc}") from exc


def check_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise `MediaError` if ``path`` would fail `load_image` (same code path, result discarded)."""
    load_image(path, max_pixels=max_pixels)


# Leading bytes of the formats we accept, to tell a damaged image from a file that never was one.
_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def _has_image_signature(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Rotate/flip as the camera's EXIF tag says, so the model sees what a photo viewer shows."""
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        # A damaged EXIF block must not cost the user the picture itself: keep it unrotated.
        return im.copy()


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, explicitly per mode; always returns a new image."""
    mode = im.mode
    if mode in ("1", "L", "P", "RGB") and "transparency" in im.info:
        # A transparent colour key (tRNS / GIF transparency) is alpha in disguise.
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        return _composite_on_white(im)
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_array_to_rgb(np.asarray(im).astype(np.float64) / 257.0)
    if mode == "I":
        values = np.asarray(im).astype(np.float64)
        # "I" is what 16-bit PNG/TIFF data often decodes to; true 32-bit ranges are rare, so only
        # values beyond 16 bits switch to scaling by the maximum.
        peak = float(values.max(initial=0.0))
        scale = peak / 255.0 if peak > 65535 else 257.0
        return _gray_array_to_rgb(values / scale)
    if mode == "F":
        return _gray_array_to_rgb(_scale_float(np.asarray(im)))
    # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, ...: PIL's converters are correct for these.
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise MediaError("corrupt_image", f"unsupported color mode {mode!r}: {exc}") from exc


def _composite_on_white(im: Image.Image) -> Image.Image:
    """Flatten alpha onto white.

    Dropping alpha would expose the arbitrary colours stored under transparent pixels (often black),
    turning e.g. a logo on a transparent background into a logo on black. White is what a browser
    or document shows behind such images, so it is the rendering the pretrained models saw most.
    """
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Float pixels → 0..255. Data inside [0, 1] maps linearly; wider data is scaled by its range.

    The range is widened to include [0, 1] so a dim [0, 1] image is not contrast-stretched and a
    constant image does not divide by zero.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low = min(float(values.min(initial=0.0)), 0.0)
    high = max(float(values.max(initial=1.0)), 1.0)
    return (values - low) / (high - low) * 255.0


def _gray_array_to_rgb(values: np.ndarray) -> Image.Image:
    """A 2-D array already in 0..255 (float) → RGB image; rounds, and clips only rounding spill."""
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


class ImageDecoder(MediaDecoder):
    """The registry's ``"image"`` decoder: `load_image` / `check_image` (a full decode, as validation needs)."""

    kind = "image"
    extensions = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

    def load(self, path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, **_: Any) -> Image.Image:
        return load_image(path, max_pixels=max_pixels)

    def check(self, path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, **_: Any) -> None:
        check_image(path, max_pixels=max_pixels)

    def sniff(self, head: bytes) -> bool:
        return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
