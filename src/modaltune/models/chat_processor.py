"""Loading a chat model's processor, including the ones that need torchvision only for video.

Qwen2-VL, Qwen2.5-VL and SmolVLM processors hold a video processor, and every video processor in
transformers needs torchvision. Where torchvision is missing (or broken next to a CPU torch), the
stock processor cannot even be built for images: ``ProcessorMixin`` checks each attribute's class
through the video-processor registry, which torchvision's absence leaves half-defined. modaltune
trains on images, so it falls back to an *image-only twin* of the same processor class: the same
class minus its ``video_processor`` attribute. The twin keeps the stock class's ``__name__`` so what it
saves names the stock class and loads with ``AutoProcessor`` wherever torchvision is installed.

`load_processor` is the one entry point: ``AutoProcessor.from_pretrained`` first, the twin when that
fails for want of torchvision.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

_TWINS: dict[type, type] = {}


def image_only(stock: type) -> type:
    """The image-only twin of processor class ``stock`` (cached: one class per stock class).

    ``ProcessorMixin.get_attributes`` reads the sub-processors from ``__init__``'s named parameters
    and ``from_pretrained`` passes only keyword arguments found in ``__init__.__code__.co_varnames``,
    so the twin's ``__init__`` is generated with the stock parameters minus ``video_processor``: a
    ``**kwargs`` init would silently drop ``chat_template`` or ``image_seq_len``.
    """
    if stock in _TWINS:
        return _TWINS[stock]
    params = [p for name, p in inspect.signature(stock).parameters.items() if name != "video_processor"]
    named = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    signature = ", ".join(["self", *(f"{n}=_defaults[{n!r}]" for n in named), "**kwargs"])
    passed = ", ".join([*(f"{n}={n}" for n in named), "video_processor=None", "**kwargs"])
    source = f"def __init__({signature}):\n    _init(self, {passed})\n"
    defaults = {p.name: (None if p.default is p.empty else p.default) for p in params}

    def _init(self: Any, **kwargs: Any) -> None:
        stock.__init__(self, **kwargs)  # type: ignore[misc]
        # SmolVLM's apply_chat_template reads the video processor's sampling settings.
        self.video_processor = SimpleNamespace(num_frames=None, fps=None)

    namespace: dict[str, Any] = {"_init": _init, "_defaults": defaults}
    exec(source, namespace)  # noqa: S102 - a generated signature, built from the stock class's parameter names
    twin = type(stock.__name__, (stock,), {
        "__init__": namespace["__init__"],
        "__module__": __name__,
        "__doc__": f"{stock.__name__} without its video processor (images only; no torchvision needed).",
    })
    twin.__qualname__ = f"image_only({stock.__name__})"
    _TWINS[stock] = twin
    return twin


def needs_twin(error: BaseException) -> bool:
    """Whether loading failed for the video half: it needs torchvision, or a folder saved by an
    image-only twin has no video processor settings to read."""
    text = f"{type(error).__name__}: {error}"
    marks = ("VIDEO_PROCESSOR_MAPPING", "torchvision", "videoprocessor", "video processor", "video_preprocessor")
    return any(mark in text.lower() for mark in (m.lower() for m in marks))


def stock_processor_class(source: str | Path, **kwargs: Any) -> Any:
    """The processor class a model folder or hub name declares (``processor_class``), else its config's."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name
    from transformers.utils import PROCESSOR_NAME, cached_file

    name = None
    try:
        found = cached_file(str(source), PROCESSOR_NAME, _raise_exceptions_for_missing_entries=False, **kwargs)
    except OSError:
        found = None
    if found:
        import json

        name = json.loads(Path(found).read_text(encoding="utf-8")).get("processor_class")
    cls = processor_class_from_name(name) if name else None
    if cls is None:
        cls = PROCESSOR_MAPPING[type(AutoConfig.from_pretrained(source, **kwargs))]
    return cls


def load_processor(source: str | Path, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained(source)``; for a processor whose video half needs torchvision
    and cannot load here, its image-only twin (same files, same chat template, images only)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source, **kwargs)
    except (AttributeError, ImportError, ValueError, OSError) as exc:
        if not needs_twin(exc):
            raise
        stock = stock_processor_class(source, **{k: v for k, v in kwargs.items() if k in ("trust_remote_code",)})
        twin: Any = image_only(stock)
        return twin.from_pretrained(source, **kwargs)
