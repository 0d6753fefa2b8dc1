"""Check rows against what a task needs, decode their media, and report what was wrong.

A bad row either stops the run with a message listing the rows (the default: silently training on
less data than the user thinks is worse than stopping), or, with ``skip_bad``, is left out and
listed in ``data_report.json``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modaltune.data.fields import Field, as_fields, describe
from modaltune.data.media import DEFAULT_MAX_PIXELS, MediaError, get_decoder
from modaltune.data.readers import read_rows
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError

#: Reason code → what it means. Codes are stable: reports and scripts match on them.
REASONS: dict[str, str] = {
    "missing_file": "the media file does not exist or cannot be read",
    "empty_file": "the media file is 0 bytes",
    "corrupt_image": "the image is truncated or damaged and cannot be fully decoded",
    "not_an_image": "the file is not an image format that can be read (wrong extension?)",
    "path_escapes_root": "the media path is absolute or leads outside the manifest's folder",
    "empty_label": "the label is empty or only whitespace",
    "unknown_label": "the label is not one of the known classes",
    "empty_text": "the text is empty or only whitespace",
    "empty_caption": "the caption is empty or only whitespace",
    "empty_question": "the question is empty or only whitespace",
    "empty_answer": "no answer is given, or an answer is empty or only whitespace",
    "image_too_large": "the image has more pixels than the allowed maximum",
    "corrupt_audio": "the audio file has an audio header but its data is damaged or truncated",
    "not_audio": "the file is not an audio format that can be read (wav, flac, ogg, mp3, …; wrong extension?)",
    "empty_audio": "the audio file holds no samples (0 frames; digital silence is valid audio)",
    "audio_too_long": "the audio clip lasts longer than the allowed maximum (--max-audio-seconds)",
    "bad_json": "the line is not a JSON object, or a value has the wrong JSON type",
    "bad_csv": "the CSV line has more cells than the header has columns",
    "missing_field": "a field the task needs is absent",
    "unsupported_file": "a file or folder that is not part of a supported layout",
    "image_placeholder_mismatch": ("the number of <image> placeholders in a conversation's user turns is not the "
                                   "number of images given (or a placeholder is outside a user turn)"),
    "bad_role_order": ("a conversation's turns do not go (system,) user, assistant, user, assistant, …, ending "
                       "with an assistant turn, or a role is unknown"),
    "empty_turn": "a conversation has no turns, or a turn is empty (a user turn holding only an image is fine)",
    "too_long": ("the conversation is longer than --max-length tokens once its image tokens are expanded; it is "
                 "dropped, never cut through its image tokens (--truncate last-turn cuts its last answer instead)"),
    "bad_box": "a box is not 4 finite numbers, or has a negative width or height as written",
    "degenerate_box": "a box has no width or no height left inside the image",
    "box_outside_image": ("a box lies outside the image by more than the tolerance (2 px or 1 % of the longer "
                          "side); boxes outside by less are clipped and counted under 'fixed'"),
    "unknown_category": "a box's category is not one of the file's categories (or the training data's)",
    "image_size_mismatch": ("the annotation's image width/height is not the decoded image's (EXIF rotation "
                            "applied), so its boxes would land on the wrong pixels"),
}

#: Longest audio clip accepted by default, in seconds (``--max-audio-seconds``). Covers the common
#: sets with room to spare (ESC-50 5 s, AudioSet/AudioCaps 10 s, Clotho 15-30 s) while an hour-long
#: recording dropped into a folder by mistake is caught from its header before anything decodes it.
#: CLAP's processor looks at 10 s of a clip anyway (longer ones are cropped or fused).
DEFAULT_MAX_AUDIO_SECONDS = 60.0


def validate_rows(
    rows: Iterable[Row],
    *,
    require: Sequence[Field | str],
    known_labels: set[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_audio_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
) -> tuple[list[Row], list[BadRow]]:
    """Split ``rows`` into usable rows and `BadRow`s (one per row: the first problem found).

    ``require`` is the task's fields (`data.fields`; plain names mean the registered fields): each
    field says whether the row has it and whether it is empty, with its own reason code. Cheap checks
    run first so a row with an empty label is not decoded. Then every media reference is checked by
    the decoder of its kind: an image is fully decoded once here, so a corrupt file is found before
    training rather than in epoch 3; audio from its header (format, frame count, length against
    ``max_audio_seconds``; None: no limit) and its last frame, without decoding the whole clip.
    A task names its fields as it calls them (``TEXT.named("caption", "empty_caption")``: an empty
    caption is reported as ``empty_caption``).
    """
    fields = as_fields(require)
    options = {"max_pixels": max_pixels, "max_seconds": max_audio_seconds}
    good: list[Row] = []
    bad: list[BadRow] = []
    for row in rows:
        problem = _check_row(row, fields, known_labels, options)
        if problem is None:
            good.append(row)
        else:
            bad.append(problem)
    return good, bad


def _check_row(row: Row, fields: tuple[Field, ...], known_labels: set[str] | None,
               options: dict[str, Any]) -> BadRow | None:
    for f in fields:
        problem = f.problem(row)
        if problem is not None:
            detail = problem.detail
            if problem.reason == "missing_field":
                detail += f"; this task needs {describe(fields)}"
            return BadRow(row.id, problem.reason, detail)
    if known_labels is not None and row.label is not None and row.label not in known_labels:
        known = ", ".join(sorted(known_labels)[:10]) + (", …" if len(known_labels) > 10 else "")
        return BadRow(
            row.id, "unknown_label", f"label {row.label!r} is not one of the known labels ({known})"
        )
    if known_labels is not None:  # a detection row's box labels are its labels
        unknown = sorted({b.label for b in row.get("boxes") or () if getattr(b, "label", None) not in known_labels})
        if unknown:
            known = ", ".join(sorted(known_labels)[:10]) + (", …" if len(known_labels) > 10 else "")
            return BadRow(row.id, "unknown_category",
                          f"box categories {', '.join(map(repr, unknown))} are not among the known ones ({known})")
    for kind, path in row.media.items():
        try:
            get_decoder(kind).check(path, **options)
        except MediaError as exc:
            return BadRow(row.id, exc.reason, exc.detail)
    return None


def _natural_key(row_id: str) -> list[Any]:
    """Sort key that puts ``pairs.jsonl:2`` before ``pairs.jsonl:10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", row_id)]


def _label_counts(rows: Sequence[Row]) -> dict[str, int]:
    """Rows per label; for detection rows (boxes, no label), boxes per category."""
    counts = Counter(r.label for r in rows if r.label is not None)
    counts.update(b.label for r in rows if r.label is None for b in r.get("boxes") or ())
    return dict(sorted(counts.items()))


def _fixed_counts(rows: Iterable[Row]) -> dict[str, int]:
    """What readers repaired on the usable rows (``extra["fixed"]``: reason → count), summed."""
    total: Counter[str] = Counter()
    for row in rows:
        total.update(row.extra.get("fixed") or {})
    return dict(sorted(total.items()))


@dataclass
class DataReport:
    """What was read from ``source`` and what was wrong with it; saved as ``data_report.json``."""

    source: str
    rows_read: int
    rows_ok: int
    bad: list[BadRow] = field(default_factory=list)
    label_counts: dict[str, int] = field(default_factory=dict)
    skipped: bool = False  # True when the bad rows were left out (skip_bad) rather than fatal
    #: Problems repaired rather than fatal, reason → count (boxes just outside the image, clipped).
    fixed: dict[str, int] = field(default_factory=dict)

    def reason_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(b.reason for b in self.bad).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_ok": self.rows_ok,
            "rows_bad": len(self.bad),
            "skipped": self.skipped,
            "reasons": self.reason_counts(),
            "fixed": dict(self.fixed),
            "label_counts": dict(self.label_counts),
            "bad": [b.to_dict() for b in self.bad],
        }

    def format_bad(self, limit: int = 20) -> str:
        """The first ``limit`` bad rows as ``id: reason — detail`` lines, then how many more there are."""
        lines = [f"  {b.id}: {b.reason} — {b.detail}" for b in self.bad[:limit]]
        if len(self.bad) > limit:
            lines.append(f"  … and {len(self.bad) - limit} more")
        return "\n".join(lines)


def load_dataset(
    path: str | Path,
    *,
    require: Sequence[Field | str],
    split: str | None = None,
    known_labels: set[str] | None = None,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    data_format: str | None = None,
    max_audio_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
    reader_options: Mapping[str, Any] | None = None,
) -> tuple[list[Row], DataReport]:
    """Read and validate ``path``: the usable rows and a `DataReport`.

    Raises `DataError` listing the bad rows unless ``skip_bad``; with ``skip_bad`` the bad rows are
    left out and listed in the report. No usable rows at all is an error either way. ``data_format``
    names the reader (``--data-format``) instead of sniffing the layout; ``reader_options`` go to the
    reader that takes them (``box_format`` and ``normalized`` for a boxes JSONL; None values are unset).
    """
    rows, format_bad, _root = read_rows(path, split=split, require=require, data_format=data_format,
                                        options=reader_options)
    good, media_bad = validate_rows(rows, require=require, known_labels=known_labels, max_pixels=max_pixels,
                                    max_audio_seconds=max_audio_seconds)
    # Back in file order (format-level problems were found in an earlier pass than media ones).
    bad = sorted(format_bad + media_bad, key=lambda b: _natural_key(b.id))
    source = str(Path(path)) + (f" (split {split})" if split else "")
    report = DataReport(
        source=source,
        rows_read=len(rows) + len(format_bad),
        rows_ok=len(good),
        bad=bad,
        label_counts=_label_counts(good),
        skipped=skip_bad and bool(bad),
        fixed=_fixed_counts(good),
    )
    if bad and (not skip_bad or not good):
        meanings = "\n".join(
            f"  {reason} ({n}): {REASONS.get(reason, '')}" for reason, n in report.reason_counts().items()
        )
        advice = (
            "No usable rows are left, so there is nothing to skip to: fix these rows."
            if not good
            else "To go on, fix these rows or pass --skip-bad to skip them (they will be listed in data_report.json)."
        )
        raise DataError(
            f"{len(bad)} of {report.rows_read} rows in {source} cannot be used:\n{report.format_bad()}\n"
            f"Reasons:\n{meanings}\n{advice}"
        )
    return good, report
