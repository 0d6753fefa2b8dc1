"""CLIP-family dual encoders (CLIP, SigLIP through the same Auto classes): `classify` and `retrieve`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from modaltune.config.task_options import ClassifyOptions
from modaltune.data.fields import IMAGE_OR_AUDIO, LABEL, TEXT
from modaltune.data.rows import Row
from modaltune.errors import ConfigError, ModaltuneError
from modaltune.models import adapter_for
from modaltune.tasks.base import (
    BackboneModel,
    Loaded,
    ModelOptions,
    Task,
    load_error,
    read_meta,
    register,
    unwrap,
    write_meta,
)

HEAD_FILE = "classifier.safetensors"
DEFAULT_PROMPT = "a photo of a {}."


def load_backbone(source: str | Path, *, scratch: bool, trust_remote_code: bool,
                  options: ModelOptions | None = None) -> tuple[nn.Module, Any]:
    """A dual-encoder model and its processor through the Auto classes, with errors a user can act on."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    source = str(source)
    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        processor = AutoProcessor.from_pretrained(source, **kwargs)
        if scratch:
            # Only the architecture is read: the pretrained weights are never opened.
            model = AutoModel.from_config(AutoConfig.from_pretrained(source, **kwargs), **kwargs,
                                          **(options or ModelOptions()).kwargs(from_config=True))
        else:
            model = AutoModel.from_pretrained(source, **kwargs, **(options or ModelOptions()).kwargs())
    except (OSError, ValueError) as exc:
        raise load_error(source, exc) from exc
    for needed in ("get_image_features", "get_text_features", "vision_model"):
        if not hasattr(model, needed):
            raise ConfigError(
                f"model {source!r} ({type(model).__name__}) is not a CLIP-style image-text dual encoder "
                f"(it has no {needed}); tasks classify and retrieve support CLIP and SigLIP checkpoints"
            )
    return model, processor


def _text_max_length(processor: Any, backbone: nn.Module) -> int:
    limit = unwrap(backbone).config.text_config.max_position_embeddings
    return min(int(getattr(processor.tokenizer, "model_max_length", limit) or limit), limit)


def _tokenize(processor: Any, backbone: nn.Module, texts: list[str]) -> dict[str, torch.Tensor]:
    # SigLIP was trained on max_length padding; CLIP masks padding, so padding to the longest is exact.
    padding = "max_length" if "siglip" in unwrap(backbone).config.model_type else "longest"
    enc = processor.tokenizer(
        texts, padding=padding, truncation=True, max_length=_text_max_length(processor, backbone),
        return_tensors="pt",
    )
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def _pixels(processor: Any, images: list[Any]) -> torch.Tensor:
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


def _embed(fn, **inputs: torch.Tensor) -> torch.Tensor:
    out = fn(**inputs)
    # transformers >= 5 returns a model output whose pooler_output is the projected embedding.
    emb = out if isinstance(out, torch.Tensor) else out.pooler_output
    return F.normalize(emb, dim=-1)


def _top_parameter_names(backbone: nn.Module, scopes: tuple[str, ...] | None) -> list[str]:
    """Everything of the encoders in scope that is neither embeddings nor a block: projections, norms."""
    names = []
    for name, _ in unwrap(backbone).named_parameters():
        if scopes is not None and not name.startswith(scopes):
            continue
        # Below the blocks (embeddings, CLIP's pre-encoder norm) is not "top": last-n keeps it frozen.
        if ".embeddings." in name or ".encoder.layers." in name or ".pre_layrnorm." in name:
            continue
        names.append("backbone." + name)
    return names


class DualEncoderTask(Task):
    """Shared plumbing for the two CLIP tasks; the subclasses differ in head, loss and metrics."""

    family = "clip"
    feature_output = "image_embeds"

    #: Parameter-name prefixes of the backbone this task uses; None = all of it.
    scopes: tuple[str, ...] | None = None

    def __init__(self, **options: Any) -> None:
        self.options = options

    def blocks(self, loaded: Loaded) -> dict[str, list[nn.Module]]:
        model = unwrap(loaded.model.backbone)
        return {name: blocks for name, blocks in adapter_for(model).blocks(model).items()
                if name in self._towers(model)}

    def _towers(self, model: nn.Module) -> list[str]:
        """The towers this task's forward pass goes through (all of them unless ``scopes`` narrows it)."""
        towers = adapter_for(model).towers(model)
        return [name for name, tower in towers.items()
                if self.scopes is None or any(scope.startswith(tower.prefix + ".") for scope in self.scopes)]

    def top_parameters(self, loaded: Loaded) -> list[str]:
        return _top_parameter_names(loaded.model.backbone, self.scopes)

    def used_parameters(self, loaded: Loaded) -> list[str]:
        if self.scopes is None:
            return ["backbone."]
        # Through a PEFT wrapper the same parameters sit under base_model.model.
        wrapped = loaded.model.backbone is not unwrap(loaded.model.backbone)
        inner = "backbone.base_model.model." if wrapped else "backbone."
        return [inner + scope for scope in self.scopes] + ["head."]

    def lora_targets(self, loaded: Loaded) -> str:
        model = unwrap(loaded.model.backbone)
        return adapter_for(model).lora_pattern(model, self._towers(model))


class ClipClassifier(nn.Module):
    """CLIP image tower + a linear head on normalised image embeddings (the WiSE-FT formulation).

    Initialised from the class-prompt text embeddings times the logit scale, the head *is* CLIP's
    zero-shot classifier, so training starts from the zero-shot baseline instead of from chance.
    """

    def __init__(self, backbone: nn.Module, num_labels: int, embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        # In the backbone's dtype: a model loaded in bf16 feeds the head bf16 embeddings.
        self.head = nn.Linear(embed_dim, num_labels, dtype=next(backbone.parameters()).dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(pixel_values))

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _embed(self.backbone.get_image_features, pixel_values=pixel_values)


@register("classify")
class ClassifyTask(DualEncoderTask):
    fields = (IMAGE_OR_AUDIO, LABEL)
    primary_metric = "accuracy"
    uses_labels = True
    scopes = ("vision_model.", "visual_projection.")
    Options = ClassifyOptions

    def __init__(
        self,
        labels: list[str] | None = None,
        prompt_template: str = DEFAULT_PROMPT,
        class_weights: list[float] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if "{}" not in prompt_template:
            raise ConfigError(f"prompt template {prompt_template!r} must contain '{{}}' where the label goes")
        self.labels = list(labels) if labels else None
        self.prompt_template = prompt_template
        self.class_weights = class_weights

    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False,
             options: ModelOptions | None = None) -> Loaded:
        backbone, processor = load_backbone(source, scratch=scratch, trust_remote_code=trust_remote_code,
                                            options=options)
        saved = read_meta(Path(source)) if Path(source).is_dir() else None
        saved_head = saved is not None and saved.get("task") == "classify" and not scratch
        if self.labels is None:
            if not saved_head:
                raise ConfigError(
                    f"task classify needs class labels: {source} is not a modaltune classifier, so pass "
                    "labels (--labels a,b,c) or training data"
                )
            self.labels = list(saved["labels"])
            self.prompt_template = saved.get("prompt_template", self.prompt_template)
        embed_dim = unwrap(backbone).config.projection_dim
        model = ClipClassifier(backbone, len(self.labels), embed_dim)
        if saved_head and list(saved["labels"]) == self.labels:
            model.head.load_state_dict(load_file(str(Path(source) / HEAD_FILE)))
        else:
            self._init_head_from_prompts(model, processor)
        return Loaded(model=model, processor=processor, meta={"labels": self.labels})

    @torch.no_grad()
    def _init_head_from_prompts(self, model: ClipClassifier, processor: Any) -> None:
        prompts = [self.prompt_template.format(label) for label in self.labels]
        device = next(model.backbone.parameters()).device
        tokens = {k: v.to(device) for k, v in _tokenize(processor, model.backbone, prompts).items()}
        text = _embed(model.backbone.get_text_features, **tokens).to(model.head.weight.device)
        scale = unwrap(model.backbone).logit_scale.exp()
        model.head.weight.copy_(scale * text)
        model.head.bias.zero_()

    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> dict[str, torch.Tensor]:
        batch = {"pixel_values": _pixels(loaded.processor, [media["image"] for _, media in items])}
        if all(row.label is not None for row, _ in items):
            index = {label: i for i, label in enumerate(self.labels)}
            batch["labels"] = torch.tensor([index[row.label] for row, _ in items])
        return batch

    def loss(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._ce(loaded.model(batch["pixel_values"]), batch["labels"])

    def outputs(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds = loaded.model.embed(batch["pixel_values"])
        return {"logits": loaded.model.head(embeds).float(), "image_embeds": embeds.float()}

    def attach(self, other: Loaded) -> Loaded:
        if self.labels is None:
            raise ConfigError("classify needs labels before it can be attached to another model")
        backbone = other.model.backbone
        model = ClipClassifier(backbone, len(self.labels), unwrap(backbone).config.projection_dim)
        # The old task's head is CLIP's zero-shot classifier from the (current) text tower.
        self._init_head_from_prompts(model, other.processor)
        model.head.requires_grad_(False)
        model.head.to(next(backbone.parameters()).device)
        return Loaded(model=model, processor=other.processor, meta={"labels": self.labels})

    @classmethod
    def chance(cls, rows: list[Row]) -> float:
        return 1.0 / max(1, len({row.label for row in rows}))

    def evaluate(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> dict[str, Any]:
        from modaltune.metrics import classification_metrics

        index = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted({row.label for row in rows} - set(index))
        if unknown:
            raise ModaltuneError(
                f"evaluation labels {unknown} are not among the model's labels {self.labels}; "
                "evaluate on data with the same classes the model was trained on"
            )
        targets = [index[row.label] for row in rows]
        logits = outputs["logits"]
        # Top-1 (accuracy, the confusion matrix) and top-5 come from the ranking predict() uses.
        metrics = classification_metrics(None, targets, self.labels, scores=logits.float())
        metrics["loss"] = round(float(F.cross_entropy(logits, torch.tensor(targets))), 6)
        return metrics

    def predict(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> list[dict]:
        from modaltune.metrics import top_indices

        logits = outputs["logits"].float()
        probs = logits.softmax(-1)
        # Ranked by the logits with evaluate()'s rule: equal probabilities after softmax (or equal
        # logits) cannot order the list differently from the label that evaluate() scores.
        order = top_indices(logits, min(5, len(self.labels)))
        results = []
        for row, p, top in zip(rows, probs, order.tolist()):
            ranked = [{"label": self.labels[i], "score": round(float(p[i]), 6)} for i in top]
            results.append({"input": row.id, "label": ranked[0]["label"], "score": ranked[0]["score"],
                            "top": ranked})
        return results

    def probe_parameters(self, loaded: Loaded) -> list[str]:
        return ["head."]

    def cache_split(self, loaded: Loaded, strategy: str, layers: int | None) -> Any:
        """Cut at the pooled embedding (linear probe) or after the last frozen vision block (last-n)."""
        from modaltune.feature_cache import CacheSplit

        model = loaded.model
        if not isinstance(model, ClipClassifier) or model.backbone is not unwrap(model.backbone):
            return None
        clip = model.backbone
        vision = clip.vision_model
        blocks = list(vision.encoder.layers)
        preprocessing = loaded.processor.image_processor.to_dict()
        labels = {label: i for i, label in enumerate(self.labels)}

        def collate(items: list[tuple[Row, torch.Tensor]]) -> dict[str, torch.Tensor]:
            batch = {"features": torch.stack([f for _, f in items])}
            if all(row.label is not None for row, _ in items):
                batch["labels"] = torch.tensor([labels[row.label] for row, _ in items])
            return batch

        if strategy == "linear-probe":
            def head_logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
                return model.head(batch["features"])

            return CacheSplit(
                name="classify:embeds", frozen=[vision, clip.visual_projection],
                encode=lambda batch: model.embed(batch["pixel_values"]), collate=collate,
                loss=lambda batch: self._ce(head_logits(batch), batch["labels"]),
                outputs=lambda batch: {"logits": head_logits(batch).float(), "image_embeds": batch["features"].float()},
                preprocessing=preprocessing)
        if strategy == "last-n" and layers is not None and 0 < layers < len(blocks):
            cut = len(blocks) - layers

            def bottom(batch: dict[str, torch.Tensor]) -> torch.Tensor:
                hidden = vision.pre_layrnorm(vision.embeddings(batch["pixel_values"]))
                for block in blocks[:cut]:
                    hidden = block(hidden, None)
                return hidden

            def top(batch: dict[str, torch.Tensor]) -> torch.Tensor:
                # What CLIPVisionModel + get_image_features do above block `cut` (no attention mask).
                hidden = batch["features"]
                for block in blocks[cut:]:
                    hidden = block(hidden, None)
                pooled = vision.post_layernorm(hidden[:, 0, :])
                return F.normalize(clip.visual_projection(pooled), dim=-1)

            def outputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                embeds = top(batch)
                return {"logits": model.head(embeds).float(), "image_embeds": embeds.float()}

            return CacheSplit(
                name=f"classify:vision-block-{cut}/{len(blocks)}",
                frozen=[vision.embeddings, vision.pre_layrnorm, *blocks[:cut]], encode=bottom, collate=collate,
                loss=lambda batch: self._ce(model.head(top(batch)), batch["labels"]),
                outputs=outputs, preprocessing=preprocessing)
        return None

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.class_weights is not None:
            weight = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        return F.cross_entropy(logits.float(), labels, weight=weight)

    def save(self, loaded: Loaded, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        backbone = loaded.model.backbone
        backbone.config.id2label = dict(enumerate(self.labels))
        backbone.config.label2id = {label: i for i, label in enumerate(self.labels)}
        backbone.save_pretrained(directory)
        loaded.processor.save_pretrained(directory)
        head = {k: v.detach().contiguous().cpu() for k, v in loaded.model.head.state_dict().items()}
        save_file(head, str(directory / HEAD_FILE))
        write_meta(directory, {
            "task": "classify", "labels": self.labels, "prompt_template": self.prompt_template,
            "head": HEAD_FILE,
            "usage": "logits = normalize(model.get_image_features(pixel_values).pooler_output) "
                     "@ weight.T + bias, with weight/bias from classifier.safetensors",
        })


@register("retrieve")
class RetrieveTask(DualEncoderTask):
    fields = (IMAGE_OR_AUDIO, TEXT)
    primary_metric = "r_mean"
    uses_labels = False

    def __init__(self, texts: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        #: Candidate texts for `predict` (ranked for each image).
        self.texts = list(texts) if texts else None

    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False,
             options: ModelOptions | None = None) -> Loaded:
        backbone, processor = load_backbone(source, scratch=scratch, trust_remote_code=trust_remote_code,
                                            options=options)
        return Loaded(model=BackboneModel(backbone), processor=processor)

    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> dict[str, torch.Tensor]:
        batch = {"pixel_values": _pixels(loaded.processor, [media["image"] for _, media in items])}
        texts = [row.text for row, _ in items]
        if all(texts):
            batch.update(_tokenize(loaded.processor, loaded.model.backbone, texts))
        return batch

    def loss(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The model's own contrastive loss (symmetric InfoNCE for CLIP, sigmoid loss for SigLIP).
        return loaded.model.backbone(**batch, return_loss=True).loss

    def outputs(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        backbone = loaded.model.backbone
        out = {"image_embeds": _embed(backbone.get_image_features, pixel_values=batch["pixel_values"])}
        if "input_ids" in batch:
            text_inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
            out["text_embeds"] = _embed(backbone.get_text_features, **text_inputs)
        return {k: v.float() for k, v in out.items()}

    def evaluate(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> dict[str, Any]:
        from modaltune.metrics import retrieval_metrics

        similarity = outputs["image_embeds"] @ outputs["text_embeds"].T
        metrics = retrieval_metrics(similarity, [str(r.image) for r in rows])
        scale = unwrap(loaded.model.backbone).logit_scale.exp().item()
        logits = similarity * scale
        target = torch.arange(len(rows))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        metrics["loss"] = round(float(loss), 6)
        return metrics

    def predict(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> list[dict]:
        if not self.texts:
            return [{"input": row.id, "embedding": emb.tolist()} for row, emb in zip(rows, outputs["image_embeds"])]
        text = _embed(loaded.model.backbone.get_text_features,
                      **_tokenize(loaded.processor, loaded.model.backbone, self.texts)).float()
        from modaltune.metrics import top_indices

        similarity = outputs["image_embeds"] @ text.T
        probs = (similarity * unwrap(loaded.model.backbone).logit_scale.exp()).softmax(-1)
        results = []
        for row, p, order in zip(rows, probs, top_indices(similarity, 5).tolist()):
            ranked = [{"text": self.texts[i], "score": round(float(p[i]), 6)} for i in order]
            results.append({"input": row.id, "text": ranked[0]["text"], "score": ranked[0]["score"], "top": ranked})
        return results

    def attach(self, other: Loaded) -> Loaded:
        return Loaded(model=BackboneModel(other.model.backbone), processor=other.processor)

    @classmethod
    def chance(cls, rows: list[Row]) -> float:
        # r_mean averages R@1/5/10 both ways; a random ranking of n candidates hits R@k with k/n.
        n = max(1, len(rows))
        return sum(min(k, n) / n for k in (1, 5, 10)) / 3

    def probe_parameters(self, loaded: Loaded) -> list[str]:
        # A retrieval "head" is the pair of projections into the shared space.
        return [n for n in self.top_parameters(loaded) if "projection" in n]

    def cache_split(self, loaded: Loaded, strategy: str, layers: int | None) -> Any:
        """Linear probe on CLIP: cache both towers' pooled outputs, train the two projections on them."""
        from modaltune.feature_cache import CacheSplit

        clip = loaded.model.backbone
        if strategy != "linear-probe" or clip is not unwrap(clip) or clip.config.model_type != "clip":
            return None  # SigLIP pools and scores differently; LoRA changes the towers themselves
        width = clip.config.vision_config.hidden_size
        tokenizer = loaded.processor.tokenizer

        def encode(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            image = clip.vision_model(pixel_values=batch["pixel_values"]).pooler_output
            text = clip.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
            return torch.cat([image, text], dim=-1)

        def embeds(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            features = batch["features"]
            return (F.normalize(clip.visual_projection(features[:, :width]), dim=-1),
                    F.normalize(clip.text_projection(features[:, width:]), dim=-1))

        def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            # CLIPModel's own loss: symmetric cross-entropy over logits_per_text.
            image, text = embeds(batch)
            logits = clip.logit_scale.exp() * text @ image.T
            target = torch.arange(len(logits), device=logits.device)
            return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

        def outputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            image, text = embeds(batch)
            return {"image_embeds": image.float(), "text_embeds": text.float()}

        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
        return CacheSplit(
            name="retrieve:pooled-image-and-text", frozen=[clip.vision_model, clip.text_model], encode=encode,
            collate=lambda items: {"features": torch.stack([f for _, f in items])}, loss=loss, outputs=outputs,
            preprocessing={"image": loaded.processor.image_processor.to_dict(),
                           "tokenizer": [type(tokenizer).__name__, _text_max_length(loaded.processor, clip),
                                         hashlib.sha256(vocab.encode()).hexdigest()]})

    def save(self, loaded: Loaded, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        loaded.model.backbone.save_pretrained(directory)
        loaded.processor.save_pretrained(directory)
        write_meta(directory, {"task": "retrieve"})
