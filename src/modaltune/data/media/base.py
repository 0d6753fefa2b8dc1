"""What every media decoder shares: the error it raises and the small interface the registry holds."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from modaltune.errors import DataError


class MediaError(DataError):
    """A media file that cannot be used; ``reason`` is a code from ``data.validate.REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MediaDecoder(ABC):
    """Decodes one kind of media file (``"image"``, ``"audio"``, …) or says why it cannot be used.

    A decoder is stateless; the registry in `modaltune.data.media` holds one instance per kind.
    Options (limits such as ``max_pixels`` / ``max_seconds``, or a target ``sampling_rate``) are
    keyword arguments of `load` and `check`. A decoder ignores options meant for other kinds, so a
    caller can hand the same set (e.g. ``max_pixels=…, max_seconds=…``) to whichever decoder a
    file needs.
    """

    #: The media kind this decoder handles; unique in the registry.
    kind: ClassVar[str]
    #: Lower-case file extensions, with the dot, that this decoder claims (for `media_kind`).
    extensions: ClassVar[frozenset[str]]

    @abstractmethod
    def load(self, path: str | Path, **options: Any) -> Any:
        """Fully decode ``path``; raise `MediaError` with a reason code if it cannot be used."""

    def check(self, path: str | Path, **options: Any) -> None:
        """Raise `MediaError` if ``path`` is unusable, as cheaply as the format allows.

        The default decodes fully (and discards the result); decoders whose headers say enough
        (size, length) override it to validate without decoding.
        """
        self.load(path, **options)

    def sniff(self, head: bytes) -> bool:
        """Whether a file starting with ``head`` (its first bytes, at least 16 when the file has
        them) looks like this kind; used by `media_kind` for extensions no decoder claims."""
        return False


def require_nonempty_file(path: Path) -> None:
    """The checks every decoder starts with: ``missing_file`` and ``empty_file``."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise MediaError("missing_file", f"{path} {what}")
    if path.stat().st_size == 0:
        raise MediaError("empty_file", f"{path} is 0 bytes")
