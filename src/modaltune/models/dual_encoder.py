"""Two-tower contrastive models: a media tower (image or audio) and a text tower, projected into one space.

`DualEncoderAdapter` holds what the ``classify`` and ``retrieve`` tasks need to know about such a
model, so that the tasks hold no model names: how to load it, which media kind its non-text tower
reads, how decoded media become model inputs, the pooled and projected embeddings of each tower,
the logit scale and the model's own contrastive loss, and where the media tower can be cut for the
feature cache. CLIP, SigLIP and CLAP have adapters here; another CLIP-style image–text model
(``get_image_features`` / ``get_text_features``) is handled as CLIP is, with its towers found by
shape.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from modaltune.errors import ConfigError
from modaltune.models.base import (
    ModelAdapter,
    StructuralAdapter,
    Tower,
    adapter_for,
    adapter_for_type,
    hf_config,
    register_adapter,
    registered_adapters,
)

if TYPE_CHECKING:
    from modaltune.tasks.base import ModelOptions

Inputs = dict[str, torch.Tensor]
#: A cut of the media tower after block ``k``: (inputs → hidden state, hidden state → normalised embedding).
MediaCut = tuple[Callable[[Inputs], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _pooled(out: Any) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output is the projected embedding.
    return cast(torch.Tensor, out if isinstance(out, torch.Tensor) else out.pooler_output)


def _symmetric_infonce(logits_per_text: torch.Tensor) -> torch.Tensor:
    target = torch.arange(len(logits_per_text), device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, target) + F.cross_entropy(logits_per_text.T, target)) / 2


class DualEncoderAdapter(ModelAdapter, ABC):
    """Architecture facts of a media–text dual encoder. Subclasses set the class attributes and
    implement the abstract methods (what differs between image and audio towers)."""

    #: The kind of media the non-text tower reads (a media decoder kind: ``"image"``, ``"audio"``).
    media_kind: ClassVar[str]
    #: The name of that tower in ``tower_specs``.
    media_tower: ClassVar[str]
    #: Class prompt for zero-shot classification when the user gives none.
    default_prompt: ClassVar[str]
    #: transformers classes that load the model and its processor.
    model_class: ClassVar[str] = "AutoModel"
    processor_class: ClassVar[str] = "AutoProcessor"
    #: Submodules: the media tower, and the projections into the shared space (None: none of its own).
    media_model: ClassVar[str]
    media_projection: ClassVar[str | None]
    text_model: ClassVar[str] = "text_model"
    text_projection: ClassVar[str | None] = "text_projection"
    #: Model input names the media side of a batch uses (the first is the main one).
    media_keys: ClassVar[tuple[str, ...]]
    #: How text is padded (SigLIP was trained on max_length padding; CLIP masks padding, so the longest is exact).
    text_padding: ClassVar[str] = "longest"
    #: Positions the text tower reserves (RoBERTa counts positions from the pad id + 1).
    position_offset: ClassVar[int] = 0

    # ---- loading -------------------------------------------------------------------------------

    def load(self, source: str, *, scratch: bool, trust_remote_code: bool,
             options: ModelOptions) -> tuple[nn.Module, Any]:
        """The model (random weights from its config when ``scratch``) and its processor."""
        import transformers

        kwargs = {"trust_remote_code": trust_remote_code}
        processor = getattr(transformers, self.processor_class).from_pretrained(source, **kwargs)
        if scratch:
            # Only the architecture is read: the pretrained weights are never opened.
            config = transformers.AutoConfig.from_pretrained(source, **kwargs)
            model = transformers.AutoModel.from_config(config, **kwargs, **options.kwargs(from_config=True))
            return model, processor
        model_class = getattr(transformers, self.model_class)
        return model_class.from_pretrained(source, **kwargs, **options.kwargs()), processor

    def media_options(self, processor: Any) -> dict[str, Any]:
        """Options for the media decoder, so decoded media arrive as the processor expects them."""
        return {}

    @abstractmethod
    def preprocessing(self, processor: Any) -> dict[str, Any]:
        """What the media inputs depend on besides the file (part of a feature cache key)."""

    # ---- inputs --------------------------------------------------------------------------------

    @abstractmethod
    def media_inputs(self, processor: Any, media: list[Any]) -> Inputs:
        """Decoded media (PIL images, float32 waveforms at ``media_options``' rate) → model inputs."""

    def text_max_length(self, processor: Any, model: nn.Module) -> int:
        limit = int(hf_config(model).text_config.max_position_embeddings) - self.position_offset
        return min(int(getattr(processor.tokenizer, "model_max_length", limit) or limit), limit)

    def text_inputs(self, processor: Any, model: nn.Module, texts: list[str]) -> Inputs:
        enc = processor.tokenizer(texts, padding=self.text_padding, truncation=True,
                                  max_length=self.text_max_length(processor, model), return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    # ---- embeddings and scores -----------------------------------------------------------------

    def embed_dim(self, model: nn.Module) -> int:
        return int(hf_config(model).projection_dim)

    @abstractmethod
    def media_features(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        """The normalised, projected embedding of each media input."""

    def text_features(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        fn = cast(Callable[..., Any], model.get_text_features)
        return F.normalize(_pooled(fn(**inputs)), dim=-1)

    def logit_scale(self, model: nn.Module) -> torch.Tensor:
        """The factor turning media→text cosine similarities into the model's logits."""
        return cast(torch.Tensor, model.logit_scale).exp()

    def contrastive_loss(self, model: nn.Module, media: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The model's own training loss over matching (media, text) pairs of normalised embeddings."""
        return _symmetric_infonce(self.logit_scale(model) * text @ media.T)

    # ---- parts, for strategies and the feature cache -------------------------------------------

    def media_scopes(self) -> tuple[str, ...]:
        """Parameter-name prefixes of the media side: its tower and its projection."""
        return (self.media_model + ".",) + ((self.media_projection + ".",) if self.media_projection else ())

    def media_modules(self, model: nn.Module) -> list[nn.Module]:
        names = [self.media_model] + ([self.media_projection] if self.media_projection else [])
        return [model.get_submodule(name) for name in names]

    def pooled_media(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        """The media tower's pooled output, before the projection."""
        return _pooled(model.get_submodule(self.media_model)(**inputs))

    def cut_media_tower(self, model: nn.Module, cut: int) -> MediaCut | None:
        """The media tower split after its first ``cut`` blocks, exactly as the model computes it, or
        None where the tower cannot be split exactly."""
        return None


def dual_encoder_adapter(model: nn.Module) -> DualEncoderAdapter:
    """The dual-encoder adapter of ``model`` (a plain transformers model), or a ConfigError saying why not."""
    adapter = adapter_for(model) if _has_blocks(model) else None
    if isinstance(adapter, DualEncoderAdapter):
        return adapter
    if all(hasattr(model, name) for name in ("get_image_features", "get_text_features", "vision_model")):
        return _StructuralImageText()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    raise ConfigError(
        f"{type(model).__name__} (model type {model_type!r}) is not a media–text dual encoder; tasks classify "
        f"and retrieve support CLIP, SigLIP and CLAP checkpoints (model types "
        f"{', '.join(_dual_types())}) and other CLIP-style image–text models")


def load_dual_encoder(source: str | Path, *, scratch: bool, trust_remote_code: bool,
                      options: ModelOptions) -> tuple[nn.Module, Any, DualEncoderAdapter]:
    """Model, processor and adapter of a dual encoder, by the model type its config names."""
    from transformers import AutoConfig

    source = str(source)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    registered = adapter_for_type(config.model_type)
    loader = registered if isinstance(registered, DualEncoderAdapter) else _StructuralImageText()
    model, processor = loader.load(source, scratch=scratch, trust_remote_code=trust_remote_code, options=options)
    return model, processor, dual_encoder_adapter(model)


def _has_blocks(model: nn.Module) -> bool:
    try:
        adapter_for(model)
    except ConfigError:
        return False
    return True


# ---- image–text: CLIP, SigLIP ------------------------------------------------------------------


@register_adapter
class ClipAdapter(DualEncoderAdapter):
    """CLIP and the models that keep its layout (MetaCLIP, ...)."""

    model_types: ClassVar[tuple[str, ...]] = ("clip",)
    tower_specs = (
        ("vision", "vision_model", "vision_model.encoder.layers"),
        ("text", "text_model", "text_model.encoder.layers"),
    )
    media_kind = "image"
    media_tower = "vision"
    default_prompt = "a photo of a {}."
    media_model = "vision_model"
    media_projection: ClassVar[str | None] = "visual_projection"
    media_keys = ("pixel_values",)

    def preprocessing(self, processor: Any) -> dict[str, Any]:
        return cast(dict[str, Any], processor.image_processor.to_dict())

    def media_inputs(self, processor: Any, media: list[Any]) -> Inputs:
        return {"pixel_values": processor.image_processor(images=media, return_tensors="pt")["pixel_values"]}

    def media_features(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        fn = cast(Callable[..., Any], model.get_image_features)
        return F.normalize(_pooled(fn(pixel_values=inputs["pixel_values"])), dim=-1)

    def cut_media_tower(self, model: nn.Module, cut: int) -> MediaCut | None:
        if hf_config(model).model_type != "clip":
            return None  # a CLIP-style model of another type may pool differently
        embeddings, pre_norm, post_norm, projection = (model.get_submodule(name) for name in (
            "vision_model.embeddings", "vision_model.pre_layrnorm", "vision_model.post_layernorm", "visual_projection"))
        blocks = list(cast(nn.ModuleList, model.get_submodule("vision_model.encoder.layers")))

        def bottom(inputs: Inputs) -> torch.Tensor:
            hidden = pre_norm(embeddings(inputs["pixel_values"]))
            for block in blocks[:cut]:
                hidden = block(hidden, None)
            return cast(torch.Tensor, hidden)

        def top(hidden: torch.Tensor) -> torch.Tensor:
            # What CLIPVisionModel + get_image_features do above block `cut` (no attention mask).
            for block in blocks[cut:]:
                hidden = block(hidden, None)
            return F.normalize(projection(post_norm(hidden[:, 0, :])), dim=-1)

        return bottom, top


class _StructuralImageText(ClipAdapter):
    """A CLIP-style image–text model of a type without an adapter: CLIP's inputs and embeddings,
    towers found by shape."""

    model_types = ()

    def towers(self, model: nn.Module) -> dict[str, Tower]:
        return StructuralAdapter().towers(model)


@register_adapter
class SiglipAdapter(ClipAdapter):
    """SigLIP and SigLIP 2: CLIP's layout, a sigmoid loss with a bias, no projection of their own."""

    model_types = ("siglip", "siglip2")
    media_projection = None
    text_projection = None
    text_padding = "max_length"

    def embed_dim(self, model: nn.Module) -> int:
        return int(hf_config(model).vision_config.hidden_size)

    def contrastive_loss(self, model: nn.Module, media: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # SiglipModel's loss: every pair is a binary match / no-match decision.
        logits = self.logit_scale(model) * text @ media.T + cast(torch.Tensor, model.logit_bias)
        signs = 2 * torch.eye(len(logits), device=logits.device) - 1
        return -F.logsigmoid(signs * logits).sum(dim=-1).mean()

    def cut_media_tower(self, model: nn.Module, cut: int) -> MediaCut | None:
        return None  # its attention-pooling head is not CLIP's class token


# ---- audio–text: CLAP --------------------------------------------------------------------------


@register_adapter
class ClapAdapter(DualEncoderAdapter):
    """CLAP: an HTSAT (Swin) audio tower whose blocks are its stages, and a RoBERTa text tower."""

    model_types = ("clap",)
    tower_specs = (
        ("audio", "audio_model", "audio_model.audio_encoder.layers"),
        ("text", "text_model", "text_model.encoder.layer"),
    )
    # HTSAT normalises the mel bins with a batch norm before the patch embedding.
    below_blocks = (*ModelAdapter.below_blocks, "batch_norm")
    media_kind = "audio"
    media_tower = "audio"
    default_prompt = "the sound of {}"
    model_class = "ClapModel"
    processor_class = "ClapProcessor"
    media_model = "audio_model"
    media_projection = "audio_projection"
    media_keys = ("input_features", "is_longer")
    position_offset = 2

    def media_options(self, processor: Any) -> dict[str, Any]:
        return {"sampling_rate": int(processor.feature_extractor.sampling_rate)}

    def preprocessing(self, processor: Any) -> dict[str, Any]:
        return {**processor.feature_extractor.to_dict(), "crop": "centre"}

    def media_inputs(self, processor: Any, media: list[Any]) -> Inputs:
        extractor = processor.feature_extractor
        clips = [_centre_crop(clip, int(extractor.nb_max_samples), extractor.truncation) for clip in media]
        out = extractor(clips, sampling_rate=extractor.sampling_rate, return_tensors="pt")
        return {"input_features": out["input_features"], "is_longer": out["is_longer"]}

    def media_features(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        fn = cast(Callable[..., Any], model.get_audio_features)
        return F.normalize(_pooled(fn(input_features=_in_dtype_of(model, inputs["input_features"]),
                                      is_longer=inputs.get("is_longer"))), dim=-1)

    def pooled_media(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        return super().pooled_media(model, {**inputs, "input_features": _in_dtype_of(model, inputs["input_features"])})

    def logit_scale(self, model: nn.Module) -> torch.Tensor:
        # logits_per_audio = audio @ text.T * exp(logit_scale_a)
        return cast(torch.Tensor, model.logit_scale_a).exp()

    def contrastive_loss(self, model: nn.Module, media: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # ClapModel's loss, term for term: cross-entropy over logits_per_text (scaled by logit_scale_t)
        # and over logits_per_audio.T (scaled by logit_scale_a); both rank audio clips for each text.
        target = torch.arange(len(text), device=text.device)
        similarity = text @ media.T
        return (F.cross_entropy(cast(torch.Tensor, model.logit_scale_t).exp() * similarity, target)
                + F.cross_entropy(self.logit_scale(model) * similarity, target)) / 2

    def cut_media_tower(self, model: nn.Module, cut: int) -> MediaCut | None:
        """Stages ``[:cut]`` (each with its patch merging) below, the rest and the pooling above: the
        steps of ``ClapAudioEncoder.forward`` in its order. Fusion models are not cut (their inputs
        depend on random crops and on ``is_longer``)."""
        # ClapAudioEncoder: its attributes (sizes, submodules) are read as the model's forward reads them.
        encoder: Any = model.get_submodule("audio_model.audio_encoder")
        if encoder.enable_fusion:
            return None
        projection = model.get_submodule("audio_projection")
        stages = list(cast(nn.ModuleList, encoder.layers))
        resolutions = list(encoder.input_resolutions)
        # reshape_mel2img always yields a (spec_size // freq_ratio * freq_ratio) × spec_size image.
        frames = encoder.spec_size // encoder.freq_ratio * encoder.freq_ratio

        def bottom(inputs: Inputs) -> torch.Tensor:
            features = _in_dtype_of(model, inputs["input_features"]).transpose(1, 3)
            hidden = encoder.reshape_mel2img(encoder.batch_norm(features).transpose(1, 3))
            hidden = encoder.patch_embed(hidden, None)
            for i, stage in enumerate(stages[:cut]):
                hidden = stage(hidden, resolutions[i])[0]
            return cast(torch.Tensor, hidden)

        def top(hidden: torch.Tensor) -> torch.Tensor:
            for i, stage in enumerate(stages[cut:], start=cut):
                hidden = stage(hidden, resolutions[i])[0]
            hidden = encoder.norm(hidden)
            batch, _, channels = hidden.shape
            scale = 2 ** (len(encoder.depths) - 1)
            freq, time = frames // scale // encoder.patch_stride[0], frames // scale // encoder.patch_stride[1]
            hidden = hidden.permute(0, 2, 1).contiguous().reshape(batch, channels, freq, time)
            bins = freq // encoder.freq_ratio
            hidden = hidden.reshape(batch, channels, freq // bins, bins, time)
            hidden = hidden.permute(0, 1, 3, 2, 4).contiguous().reshape(batch, channels, bins, -1)
            pooled = torch.flatten(encoder.avgpool(torch.flatten(hidden, 2)), 1)
            return F.normalize(projection(pooled), dim=-1)

        return bottom, top


def _in_dtype_of(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Float features in the model's dtype: the extractor writes float32, and CLAP's input batch norm
    (unlike CLIP's patch embedding) does not cast, so a model loaded in bf16/fp16 would fail on them."""
    return features.to(next(model.parameters()).dtype)


def _centre_crop(clip: Any, max_samples: int, truncation: str) -> Any:
    """A clip longer than the extractor reads, cut to its middle window. The extractor itself would
    crop at random (``rand_trunc``): evaluation would not be reproducible, nor a feature cache
    correct. Fusion extractors read the whole clip and are left alone."""
    if truncation == "fusion" or len(clip) <= max_samples:
        return clip
    start = (len(clip) - max_samples) // 2
    return clip[start:start + max_samples]


def _dual_types() -> list[str]:
    return sorted(t for a in registered_adapters() if isinstance(a, DualEncoderAdapter) for t in a.model_types)
