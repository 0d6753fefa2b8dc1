"""Former home of the source-layout readers, kept so ``from modaltune.data.formats import …`` works.

The readers now live in `modaltune.data.readers` (one module per layout, chosen by sniffing or by
``--data-format``); this module re-exports what used to be importable from here.
"""

from modaltune.data.readers import (
    IMAGE_EXTENSIONS,
    MANIFEST_EXTENSIONS,
    SPLIT_ALIASES,
    discover_splits,
    read_rows,
)

__all__ = ["IMAGE_EXTENSIONS", "MANIFEST_EXTENSIONS", "SPLIT_ALIASES", "discover_splits", "read_rows"]
