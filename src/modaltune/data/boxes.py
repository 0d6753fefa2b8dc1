"""Bounding boxes: the `Box` type, the registered ``boxes`` field, and the box checks detection data needs.

An example of the ``detect`` task has an ``image`` and ``boxes``: a tuple of `Box` (an empty tuple is a
valid negative image). A box is in **pixels of the decoded image** (after EXIF transposition, as
`data.media.load_image` returns it), corners ``(x0, y0, x1, y1)`` with ``x0 < x1`` and ``y0 < y1``;
its ``label`` is the category *name* (open-vocabulary models read names, not ids).

What the detection readers (``coco-instances``, ``odvg``, ``boxes-jsonl``) leave on a row besides
the field, in ``Example.extra``:

* ``image_size``: ``(width, height)`` the annotation declares (COCO ``images[].width/height``, ODVG
  ``width/height``, a JSONL's optional ``width/height``, else the image header's). Validation
  compares it with the decoded image (``image_size_mismatch``); boxes were clipped to it.
* ``categories``: every category name of the file in a stable order (COCO: by category id; ODVG:
  by label id; JSONL: sorted names), the same tuple on every row: `categories_of` reads it back, so
  a category with no box in a split still has its place (and its per-class AP of "no ground truth").
* ``fixed``: ``{"box_outside_image": n}`` when n boxes stuck out of the image by no more than
  `outside_tolerance` and were clipped; `data.validate.load_dataset` sums these into the report.

Reason codes (``data.validate.REASONS``): ``bad_box`` (not 4 finite numbers, x1 < x0 in a corner
format), ``degenerate_box`` (zero width or height after clipping), ``box_outside_image`` (beyond
the tolerance), ``unknown_category``, ``image_size_mismatch``.

Augmentation moves boxes with the pixels: `BoxesField.transform` maps each box through the crop,
resize and flip of `data.augment.Geometry`, clips it to the new image and drops boxes that leave it
(or keep less than `MIN_SIDE` pixels of a side).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modaltune.data.fields import Field, FieldError, register_field

if TYPE_CHECKING:
    from modaltune.data.augment import Geometry

BoxFormat = Literal["xywh", "xyxy", "cxcywh"]
BOX_FORMATS: tuple[str, ...] = ("xywh", "xyxy", "cxcywh")

#: A box side shorter than this many pixels after augmentation is dropped (nothing is left to see).
MIN_SIDE = 1.0


@dataclass(frozen=True)
class Box:
    """One object: its category name, its corners in decoded-image pixels, COCO's crowd flag.

    ``area`` is COCO's annotated area (the segment's, which COCOeval uses for its small / medium /
    large ranges); None means the box's own area.
    """

    label: str
    xyxy: tuple[float, float, float, float]
    iscrowd: bool = False
    area: float | None = field(default=None, compare=False)

    @property
    def width(self) -> float:
        return self.xyxy[2] - self.xyxy[0]

    @property
    def height(self) -> float:
        return self.xyxy[3] - self.xyxy[1]

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        x0, y0, _, _ = self.xyxy
        return (x0, y0, self.width, self.height)

    @property
    def size_area(self) -> float:
        """The area COCOeval files this box under: the annotated one, else width × height."""
        return self.area if self.area is not None else self.width * self.height

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "xyxy": [round(v, 2) for v in self.xyxy]}
        if self.iscrowd:
            out["iscrowd"] = True
        return out


def to_xyxy(coords: Any, box_format: str = "xywh", *, normalized: bool = False,
            size: tuple[int, int] | None = None) -> tuple[float, float, float, float]:
    """Four numbers in ``box_format`` (``xywh``: top-left corner and size; ``xyxy``: corners;
    ``cxcywh``: centre and size), in pixels or, with ``normalized``, as fractions of ``size``
    (width, height) → pixel corners. `FieldError` ``bad_box`` when they are not four finite numbers
    or the size is negative (x1 < x0)."""
    if box_format not in BOX_FORMATS:
        raise ValueError(f"unknown box format {box_format!r}; use one of {', '.join(BOX_FORMATS)}")
    if not isinstance(coords, (list, tuple)) or len(coords) != 4:
        shown = f"{len(coords)} values" if isinstance(coords, (list, tuple)) else f"a {type(coords).__name__}"
        raise FieldError("bad_box", f"a box must be 4 numbers ({box_format}), got {shown}: {_short(coords)}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in coords):
        raise FieldError("bad_box", f"a box must be 4 numbers ({box_format}), got {_short(coords)}")
    a, b, c, d = (float(v) for v in coords)
    if not all(math.isfinite(v) for v in (a, b, c, d)):
        raise FieldError("bad_box", f"a box holds a NaN or infinite value: {_short(coords)}")
    if box_format == "xywh":
        x0, y0, x1, y1 = a, b, a + c, b + d
    elif box_format == "cxcywh":
        x0, y0, x1, y1 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    else:
        x0, y0, x1, y1 = a, b, c, d
    if x1 < x0 or y1 < y0:
        what = "width or height" if box_format != "xyxy" else "x1 < x0 or y1 < y0"
        raise FieldError("bad_box", f"a box has a negative {what}: {_short(coords)} ({box_format})")
    if normalized:
        if size is None:
            raise ValueError("normalized boxes need the image size")
        if max(abs(v) for v in (x0, y0, x1, y1)) > 1.5:
            raise FieldError("bad_box", f"box {_short(coords)} is not normalized (values are fractions of the "
                                        f"image size, 0..1); drop --normalized for boxes in pixels")
        w, h = size
        x0, y0, x1, y1 = x0 * w, y0 * h, x1 * w, y1 * h
    return (x0, y0, x1, y1)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def outside_tolerance(size: tuple[int, int]) -> float:
    """How far (pixels) a box may stick out of a ``size`` image and still be clipped rather than be
    an error: 2 px or 1 % of the longer side, whichever is more (annotation tools round, or mark
    the last pixel inclusively; a box further out is on the wrong image or in the wrong format)."""
    return max(2.0, 0.01 * max(size))


def clip_box(box: Box, size: tuple[int, int]) -> tuple[Box, bool]:
    """``box`` clipped to a ``size`` (width, height) image, and whether clipping moved it.

    `FieldError` ``box_outside_image`` when it sticks out further than `outside_tolerance`, and
    ``degenerate_box`` when no width or height is left."""
    w, h = size
    x0, y0, x1, y1 = box.xyxy
    out = max(-x0, -y0, x1 - w, y1 - h, 0.0)
    if out > outside_tolerance(size):
        raise FieldError("box_outside_image",
                         f"box {_fmt(box.xyxy)} ({box.label!r}, xyxy pixels) lies {out:.1f} px outside the "
                         f"{w}x{h} image (tolerance {outside_tolerance(size):.1f} px): the wrong image, or boxes "
                         f"in another format (a boxes JSONL says its own: --box-format, --normalized)?")
    clipped = (float(min(max(x0, 0.0), w)), float(min(max(y0, 0.0), h)),
               float(min(max(x1, 0.0), w)), float(min(max(y1, 0.0), h)))
    if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
        raise FieldError("degenerate_box", f"box {_fmt(box.xyxy)} ({box.label!r}, xyxy pixels) has no width or "
                                           f"height inside the {w}x{h} image")
    moved = clipped != box.xyxy
    return (replace(box, xyxy=clipped) if moved else box), moved


def clip_boxes(boxes: Iterable[Box], size: tuple[int, int]) -> tuple[tuple[Box, ...], int]:
    """Every box clipped (`clip_box`), and how many were moved; the first bad box raises."""
    out, moved = [], 0
    for box in boxes:
        clipped, was_moved = clip_box(box, size)
        out.append(clipped)
        moved += was_moved
    return tuple(out), moved


def _fmt(xyxy: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in xyxy) + "]"


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the image at ``path`` as `data.media.load_image` decodes it (EXIF rotation
    applied), read from its header only. `MediaError` (missing_file, not_an_image, corrupt_image)
    when it cannot be opened."""
    from PIL import Image, UnidentifiedImageError

    from modaltune.data.media.base import MediaError, require_nonempty_file

    path = Path(path)
    require_nonempty_file(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = _orientation(im)
    except UnidentifiedImageError as exc:
        raise MediaError("not_an_image", f"{path} is not an image PIL can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError("corrupt_image", f"{path} could not be opened: {exc}") from exc
    # EXIF orientations 5-8 are a transpose or a quarter turn: the decoded image is height x width.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _orientation(im: Any) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except (OSError, SyntaxError, ValueError, TypeError):  # a damaged EXIF block: load_image keeps it unrotated
        return 1


def raw_size(path: str | Path) -> tuple[int, int] | None:
    """The stored (width, height) before EXIF rotation, or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - only an explanation depends on it
        return None


@dataclass(frozen=True)
class BoxesField(Field):
    """``boxes``: a tuple of `Box`, built by the detection readers (they know the box format, the
    category names and the image size). A plain manifest column of boxes cannot be read without its
    labels and format, so `parse` says which reader to use."""

    types: tuple[type, ...] = (tuple, list)
    type_words: str = "list of boxes"

    def parse(self, value: Any, *, root: Path, column: str | None = None) -> Any:
        if value is None:
            return None
        if isinstance(value, (tuple, list)) and all(isinstance(b, Box) for b in value):
            return tuple(value)
        raise FieldError("bad_box", f"a {column or 'boxes'!r} column is read by the detection readers: "
                                    f"--data-format boxes-jsonl (with 'labels' beside 'boxes'), coco-instances "
                                    f"or odvg")

    def is_empty(self, value: Any) -> bool:
        return False  # no boxes is a negative image, a valid example

    def problem(self, example: Any) -> FieldError | None:
        """Missing boxes; a malformed box (rows built in code rather than read); an annotated image
        size that is not the decoded image's; a box outside the decoded image."""
        value = example.get(self.name)
        if value is None:
            return FieldError("missing_field", f"no {self.shown!r} value")
        if not isinstance(value, tuple) or not all(isinstance(b, Box) for b in value):
            return FieldError("bad_box", f"{self.shown!r} must be a tuple of Box, got {type(value).__name__}")
        for box in value:
            if len(box.xyxy) != 4 or not all(math.isfinite(v) for v in box.xyxy):
                return FieldError("bad_box", f"box {box.xyxy!r} ({box.label!r}) is not 4 finite numbers")
            if box.width <= 0 or box.height <= 0:
                return FieldError("degenerate_box", f"box {_fmt(box.xyxy)} ({box.label!r}) has no width or height")
        image = example.media.get("image")
        if image is None:
            return None  # the image field reports it
        try:
            actual = image_size(image)
        except Exception:  # noqa: BLE001 - the image decoder reports an unreadable file with its own code
            return None
        declared = example.extra.get("image_size")
        if declared is not None and tuple(declared) != actual:
            return _size_mismatch(tuple(declared), actual, image)
        for box in value:
            x0, y0, x1, y1 = box.xyxy
            # Readers clip; half a pixel of slack for coordinates written with rounding.
            if x0 < -0.5 or y0 < -0.5 or x1 > actual[0] + 0.5 or y1 > actual[1] + 0.5:
                return FieldError("box_outside_image", f"box {_fmt(box.xyxy)} ({box.label!r}) lies outside the "
                                                       f"{actual[0]}x{actual[1]} image")
        return None

    def transform(self, value: Any, geometry: Geometry) -> Any:
        if not value:
            return value
        moved = []
        for box in value:
            xyxy = geometry.map_box(box.xyxy)
            if xyxy is not None and xyxy[2] - xyxy[0] >= MIN_SIDE and xyxy[3] - xyxy[1] >= MIN_SIDE:
                moved.append(replace(box, xyxy=xyxy, area=None))
        return tuple(moved)


def _size_mismatch(declared: tuple[int, ...], actual: tuple[int, int], image: Path) -> FieldError:
    raw = raw_size(image)
    if raw is not None and raw != actual and tuple(declared) == raw:
        hint = (f"the annotation matches the stored pixels ({raw[0]}x{raw[1]}) but the image's EXIF orientation "
                f"turns it to {actual[0]}x{actual[1]} when decoded, so the boxes would land on the wrong pixels: "
                f"annotate the image as a viewer shows it, or save it without the EXIF orientation tag")
    else:
        hint = "the annotation belongs to another image, or the image was resized after annotating"
    return FieldError("image_size_mismatch", f"the annotation says {declared[0]}x{declared[1]} but {image.name} is "
                                             f"{actual[0]}x{actual[1]}: {hint}")


BOXES = register_field(BoxesField("boxes", empty_reason="missing_field"))


def categories_of(rows: Iterable[Any]) -> list[str]:
    """The category names of ``rows`` in a stable order: the file's declared categories
    (``extra["categories"]``, in file order, first seen first), then any other box label, sorted."""
    declared: dict[str, None] = {}
    seen: set[str] = set()
    for row in rows:
        for name in row.extra.get("categories", ()):
            declared.setdefault(name, None)
        for box in row.get("boxes") or ():
            seen.add(box.label)
    return list(declared) + sorted(seen - set(declared))


def fixed_counts(extra: Mapping[str, Any], clipped: int) -> dict[str, Any]:
    """``extra`` with ``clipped`` boxes counted under ``fixed["box_outside_image"]`` (when any)."""
    if not clipped:
        return dict(extra)
    return {**extra, "fixed": {"box_outside_image": clipped}}
