"""Dual encoders (CLIP, SigLIP, CLAP: a media tower and a text tower): `classify` and `retrieve`.

One task per job for every dual encoder: what differs between CLIP and CLAP (how the model loads,
which media it reads and how they become inputs, its embeddings, logit scale, loss and where its
media tower can be cut) is asked of the model adapter (`modaltune.models.dual_encoder`), so this
module names no model type.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from modaltune.config.task_options import ClassifyOptions
from modaltune.data.fields import IMAGE_OR_AUDIO, LABEL, TEXT
from modaltune.data.rows import Row
from modaltune.errors import ConfigError, ModaltuneError
from modaltune.feature_cache import CacheSplit
from modaltune.models import adapter_for
from modaltune.models.base import backbone_of, hf_config
from modaltune.models.dual_encoder import DualEncoderAdapter, dual_encoder_adapter, load_dual_encoder
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
Batch = dict[str, torch.Tensor]

#: Validation examples shown with their predictions in the report.
SAMPLES = 8


def load_backbone(source: str | Path, *, scratch: bool, trust_remote_code: bool,
                  options: ModelOptions | None = None) -> tuple[nn.Module, Any, DualEncoderAdapter]:
    """A dual-encoder model, its processor and adapter, with errors a user can act on."""
    try:
        return load_dual_encoder(source, scratch=scratch, trust_remote_code=trust_remote_code,
                                 options=options or ModelOptions())
    except (OSError, ValueError) as exc:
        raise load_error(source, exc) from exc


def _plain(loaded: Loaded) -> nn.Module:
    """The plain transformers model of ``loaded`` (under a PEFT wrapper, if any)."""
    return unwrap(backbone_of(loaded.model))


def _classifier(loaded: Loaded) -> DualEncoderClassifier:
    return cast(DualEncoderClassifier, loaded.model)


def _adapter(loaded: Loaded) -> DualEncoderAdapter:
    return dual_encoder_adapter(_plain(loaded))


def _media(loaded: Loaded, items: list[tuple[Row, dict[str, Any]]]) -> Batch:
    """The media inputs of a batch, checking that the rows hold what the model's media tower reads."""
    model = _plain(loaded)
    adapter = dual_encoder_adapter(model)
    kind = adapter.media_kind
    for row, media in items:
        if kind not in media:
            held = ", ".join(sorted(media)) or "no media"
            raise ConfigError(
                f"the model ({hf_config(model).model_type}) reads {kind}, but example {row.id!r} holds {held}: "
                f"give this model {kind} data, or use a model whose media tower reads {held}")
    return adapter.media_inputs(loaded.processor, [media[kind] for _, media in items])


def _media_inputs(loaded: Loaded, batch: Batch) -> Batch:
    return {k: batch[k] for k in _adapter(loaded).media_keys if k in batch}


def _text_inputs(batch: Batch) -> Batch:
    return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}


class _FrozenPartsInEval(nn.Module):
    """A task model whose frozen parts run as at inference while the rest trains.

    A frozen part is a fixed function of its input: its dropout is off and its batch norms keep
    their running statistics. CLAP needs this: its audio tower has dropout, and it normalises its
    input with a BatchNorm2d that in train mode would normalise by batch statistics and overwrite
    the pretrained ones although its weights are frozen (a linear probe would change the tower).
    It is also what the feature cache computes, so cached and uncached training are the same
    computation. A module with parameters, none of them trainable, is put in eval mode with
    everything inside it; CLIP and SigLIP have no dropout, so nothing changes for them.
    """

    def train(self, mode: bool = True) -> _FrozenPartsInEval:
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self


class DualEncoderModel(BackboneModel, _FrozenPartsInEval):
    """The dual encoder alone, as ``.backbone`` (retrieval)."""


class DualEncoderClassifier(_FrozenPartsInEval):
    """The media tower + a linear head on normalised media embeddings (the WiSE-FT formulation).

    Initialised from the class-prompt text embeddings times the logit scale, the head *is* the
    model's zero-shot classifier, so training starts from the zero-shot baseline instead of from chance.
    """

    def __init__(self, backbone: nn.Module, num_labels: int, embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        # In the backbone's dtype: a model loaded in bf16 feeds the head bf16 embeddings.
        self.head = nn.Linear(embed_dim, num_labels, dtype=next(backbone.parameters()).dtype)

    def forward(self, *media: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits; the media inputs by name (``input_features=...``), or the main one positionally."""
        return cast(torch.Tensor, self.head(self.embed(*media, **inputs)))

    def embed(self, *media: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        plain = unwrap(self.backbone)
        adapter = dual_encoder_adapter(plain)
        inputs = {**dict(zip(adapter.media_keys, media)), **inputs}
        # Through the backbone as it is (a PEFT wrapper forwards to the model it wraps).
        return adapter.media_features(self.backbone, inputs)


class DualEncoderTask(Task):
    """Shared plumbing of classify and retrieve; they differ in head, loss and metrics."""

    family = "dual_encoder"
    feature_output = "media_embeds"

    #: Whether the task uses the media side only (classification with a head) or both towers.
    media_side_only = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    def _scopes(self, loaded: Loaded) -> tuple[str, ...] | None:
        """Parameter-name prefixes of the backbone this task uses; None = all of it."""
        return _adapter(loaded).media_scopes() if self.media_side_only else None

    def blocks(self, loaded: Loaded) -> dict[str, list[nn.Module]]:
        model = _plain(loaded)
        return {name: blocks for name, blocks in adapter_for(model).blocks(model).items()
                if name in self._towers(loaded)}

    def _towers(self, loaded: Loaded) -> list[str]:
        """The towers this task's forward pass goes through."""
        model = _plain(loaded)
        scopes = self._scopes(loaded)
        towers = adapter_for(model).towers(model)
        return [name for name, tower in towers.items()
                if scopes is None or any(scope.startswith(tower.prefix + ".") for scope in scopes)]

    def top_parameters(self, loaded: Loaded) -> list[str]:
        """Everything of the towers in scope that sits neither below the blocks nor in them, and what
        is outside every tower (projections, final norms, poolers, logit scales)."""
        model = _plain(loaded)
        adapter = adapter_for(model)
        towers = adapter.towers(model)
        scopes = self._scopes(loaded)
        names = []
        for name, _ in model.named_parameters():
            if scopes is not None and not name.startswith(scopes):
                continue
            tower = adapter.tower_of(model, name)
            if tower is not None and (name.startswith(towers[tower].blocks + ".")
                                      or any(part in name for part in adapter.below_blocks)):
                continue  # a block (last-n picks those), or below the blocks: frozen under last-n
            names.append("backbone." + name)
        return names

    def used_parameters(self, loaded: Loaded) -> list[str]:
        scopes = self._scopes(loaded)
        if scopes is None:
            return ["backbone."]
        # Through a PEFT wrapper the same parameters sit under base_model.model.
        wrapped = loaded.model.backbone is not _plain(loaded)
        inner = "backbone.base_model.model." if wrapped else "backbone."
        return [inner + scope for scope in scopes] + ["head."]

    def lora_targets(self, loaded: Loaded) -> str:
        model = _plain(loaded)
        return adapter_for(model).lora_pattern(model, self._towers(loaded))


@register("classify")
class ClassifyTask(DualEncoderTask):
    fields = (IMAGE_OR_AUDIO, LABEL)
    primary_metric = "accuracy"
    uses_labels = True
    media_side_only = True
    Options = ClassifyOptions

    def __init__(
        self,
        labels: list[str] | None = None,
        prompt_template: str | None = None,
        class_weights: list[float] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if prompt_template is not None and "{}" not in prompt_template:
            raise ConfigError(f"prompt template {prompt_template!r} must contain '{{}}' where the label goes")
        #: User options: the classes (else read from a saved classifier) and the class prompt (else the
        #: saved one, else the model's default for its media: "a photo of a {}.", "the sound of {}").
        self.labels = list(labels) if labels else None
        self.prompt_template = prompt_template
        self.class_weights = class_weights

    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False,
             options: ModelOptions | None = None) -> Loaded:
        backbone, processor, adapter = load_backbone(source, scratch=scratch, trust_remote_code=trust_remote_code,
                                                     options=options)
        saved = read_meta(Path(source)) if Path(source).is_dir() else None
        saved_head = saved is not None and saved.get("task") == "classify" and not scratch
        # Runs saved before the state had its own key kept labels and prompt at the top level.
        saved_state = (saved.get("state") or saved) if saved_head and saved is not None else {}
        labels = self.labels or saved_state.get("labels")
        if not labels:
            raise ConfigError(
                f"task classify needs class labels: {source} is not a modaltune classifier, so pass "
                "labels (--labels a,b,c) or training data"
            )
        prompt = self.prompt_template or saved_state.get("prompt_template") or adapter.default_prompt
        state = {"labels": list(labels), "prompt_template": prompt}
        model = DualEncoderClassifier(backbone, len(labels), adapter.embed_dim(backbone))
        if saved_head and list(saved_state.get("labels", [])) == state["labels"]:
            model.head.load_state_dict(load_file(str(Path(source) / HEAD_FILE)))
        else:
            _init_head_from_prompts(model, processor, state)
        return Loaded(model=model, processor=processor, state=state, media_options=adapter.media_options(processor))

    def _labels(self, loaded: Loaded | None) -> list[str]:
        # Scoring outputs needs only the labels: without a model, the task's own option stands in.
        labels = loaded.state.get("labels") if loaded is not None else self.labels
        if not labels:
            raise ConfigError("classify has no labels: load a model first, or give labels")
        return list(labels)

    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> Batch:
        batch = _media(loaded, items)
        if all(row.label is not None for row, _ in items):
            index = {label: i for i, label in enumerate(self._labels(loaded))}
            batch["labels"] = torch.tensor([index[row.label] for row, _ in items])
        return batch

    def loss(self, loaded: Loaded, batch: Batch) -> torch.Tensor:
        return self._ce(loaded.model(**_media_inputs(loaded, batch)), batch["labels"])

    def outputs(self, loaded: Loaded, batch: Batch) -> Batch:
        model = _classifier(loaded)
        embeds = model.embed(**_media_inputs(loaded, batch))
        return {"logits": model.head(embeds).float(), "media_embeds": embeds.float()}

    def attach(self, other: Loaded) -> Loaded:
        if self.labels is None:
            raise ConfigError("classify needs labels before it can be attached to another model")
        backbone = backbone_of(other.model)
        adapter = dual_encoder_adapter(unwrap(backbone))
        state = {"labels": list(self.labels), "prompt_template": self.prompt_template or adapter.default_prompt}
        model = DualEncoderClassifier(backbone, len(self.labels), adapter.embed_dim(unwrap(backbone)))
        # The old task's head is the zero-shot classifier from the (current) text tower.
        _init_head_from_prompts(model, other.processor, state)
        model.head.requires_grad_(False)
        model.head.to(next(backbone.parameters()).device)
        return Loaded(model=model, processor=other.processor, state=state, media_options=dict(other.media_options))

    @classmethod
    def chance(cls, rows: list[Row]) -> float:
        return 1.0 / max(1, len({row.label for row in rows}))

    def evaluate(self, loaded: Loaded, outputs: Batch, rows: list[Row]) -> dict[str, Any]:
        from modaltune.metrics import classification_metrics

        labels = self._labels(loaded)
        index = {label: i for i, label in enumerate(labels)}
        unknown = sorted({row.label for row in rows} - set(index))
        if unknown:
            raise ModaltuneError(
                f"evaluation labels {unknown} are not among the model's labels {labels}; "
                "evaluate on data with the same classes the model was trained on"
            )
        targets = [index[row.label] for row in rows]
        logits = outputs["logits"]
        # Top-1 (accuracy, the confusion matrix) and top-5 come from the ranking predict() uses.
        metrics = classification_metrics(None, targets, labels, scores=logits.float())
        metrics["loss"] = round(float(F.cross_entropy(logits, torch.tensor(targets))), 6)
        # The first examples with their media, for the report (a thumbnail, or a spectrogram and a player).
        metrics["samples"] = [{"id": row.id, **{kind: str(path) for kind, path in row.media.items()},
                               "prediction": p["label"], "score": round(p["score"], 4), "references": [row.label]}
                              for row, p in zip(rows[:SAMPLES], self.predict(loaded, {"logits": logits[:SAMPLES]},
                                                                             rows[:SAMPLES]))]
        return metrics

    def predict(self, loaded: Loaded, outputs: Batch, rows: list[Row]) -> list[dict]:
        from modaltune.metrics import top_indices

        labels = self._labels(loaded)
        logits = outputs["logits"].float()
        probs = logits.softmax(-1)
        # Ranked by the logits with evaluate()'s rule: equal probabilities after softmax (or equal
        # logits) cannot order the list differently from the label that evaluate() scores.
        order = top_indices(logits, min(5, len(labels)))
        results = []
        for row, p, top in zip(rows, probs, order.tolist()):
            ranked = [{"label": labels[i], "score": round(float(p[i]), 6)} for i in top]
            results.append({"input": row.id, "label": ranked[0]["label"], "score": ranked[0]["score"],
                            "top": ranked})
        return results

    def probe_parameters(self, loaded: Loaded) -> list[str]:
        return ["head."]

    def cache_split(self, loaded: Loaded, strategy: str, layers: int | None) -> CacheSplit | None:
        """Cut at the pooled embedding (linear probe) or after the last frozen media block (last-n)."""
        model = loaded.model
        if not isinstance(model, DualEncoderClassifier) or model.backbone is not unwrap(model.backbone):
            return None  # LoRA changes the towers themselves
        backbone = model.backbone
        adapter = dual_encoder_adapter(backbone)
        preprocessing = adapter.preprocessing(loaded.processor)
        labels = {label: i for i, label in enumerate(self._labels(loaded))}

        def collate(items: list[tuple[Row, torch.Tensor]]) -> Batch:
            batch = {"features": torch.stack([f for _, f in items])}
            if all(row.label is not None for row, _ in items):
                batch["labels"] = torch.tensor([labels[row.label] for row, _ in items])
            return batch

        def head_outputs(embeds: torch.Tensor) -> Batch:
            return {"logits": model.head(embeds).float(), "media_embeds": embeds.float()}

        if strategy == "linear-probe":
            return CacheSplit(
                name="classify:embeds", frozen=adapter.media_modules(backbone),
                encode=lambda batch: model.embed(**_media_inputs(loaded, batch)), collate=collate,
                loss=lambda batch: self._ce(model.head(batch["features"]), batch["labels"]),
                outputs=lambda batch: head_outputs(batch["features"]), preprocessing=preprocessing)
        blocks = adapter.blocks(backbone)[adapter.media_tower]
        if strategy != "last-n" or layers is None or not 0 < layers < len(blocks):
            return None
        cut = len(blocks) - layers
        halves = adapter.cut_media_tower(backbone, cut)
        if halves is None:
            return None
        bottom, top = halves
        return CacheSplit(
            name=f"classify:{adapter.media_tower}-block-{cut}/{len(blocks)}",
            frozen=[*adapter.below_modules(backbone, adapter.media_tower), *blocks[:cut]],
            encode=lambda batch: bottom(_media_inputs(loaded, batch)), collate=collate,
            loss=lambda batch: self._ce(model.head(top(batch["features"])), batch["labels"]),
            outputs=lambda batch: head_outputs(top(batch["features"])), preprocessing=preprocessing)

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.class_weights is not None:
            weight = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        return F.cross_entropy(logits.float(), labels, weight=weight)

    def save(self, loaded: Loaded, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        backbone = backbone_of(loaded.model)
        adapter = dual_encoder_adapter(backbone)
        state = dict(loaded.state)
        labels = self._labels(loaded)
        config = hf_config(backbone)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        backbone.save_pretrained(directory)  # type: ignore[operator]
        loaded.processor.save_pretrained(directory)
        head = {k: v.detach().contiguous().cpu() for k, v in _classifier(loaded).head.state_dict().items()}
        save_file(head, str(directory / HEAD_FILE))
        features = "get_audio_features(input_features)" if adapter.media_kind == "audio" \
            else "get_image_features(pixel_values)"
        write_meta(directory, {
            "task": "classify", "state": state,
            # The run directory's documented layout (README: the label order) keeps these at the top too.
            "labels": labels, "prompt_template": state["prompt_template"], "head": HEAD_FILE,
            "usage": f"logits = normalize(model.{features}.pooler_output) @ weight.T + bias, "
                     "with weight/bias from classifier.safetensors",
        })


@torch.no_grad()
def _init_head_from_prompts(model: DualEncoderClassifier, processor: Any, state: dict[str, Any]) -> None:
    """The head as the zero-shot classifier: class-prompt text embeddings × the logit scale."""
    backbone = unwrap(model.backbone)
    adapter = dual_encoder_adapter(backbone)
    prompts = [state["prompt_template"].format(label) for label in state["labels"]]
    device = next(backbone.parameters()).device
    tokens = {k: v.to(device) for k, v in adapter.text_inputs(processor, backbone, prompts).items()}
    text = adapter.text_features(model.backbone, tokens).to(model.head.weight.device)
    model.head.weight.copy_(adapter.logit_scale(backbone) * text)
    model.head.bias.zero_()


@register("retrieve")
class RetrieveTask(DualEncoderTask):
    fields = (IMAGE_OR_AUDIO, TEXT)
    primary_metric = "r_mean"
    uses_labels = False

    def __init__(self, texts: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        #: Candidate texts for `predict` (ranked for each image or clip).
        self.texts = list(texts) if texts else None

    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False,
             options: ModelOptions | None = None) -> Loaded:
        backbone, processor, adapter = load_backbone(source, scratch=scratch, trust_remote_code=trust_remote_code,
                                                     options=options)
        return Loaded(model=DualEncoderModel(backbone), processor=processor,
                      media_options=adapter.media_options(processor))

    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> Batch:
        batch = _media(loaded, items)
        texts = [row.text for row, _ in items]
        if all(texts):
            batch.update(_adapter(loaded).text_inputs(loaded.processor, _plain(loaded), texts))
        return batch

    def loss(self, loaded: Loaded, batch: Batch) -> torch.Tensor:
        # The model's own contrastive loss (symmetric InfoNCE for CLIP and CLAP, sigmoid for SigLIP).
        return cast(torch.Tensor, backbone_of(loaded.model)(**batch, return_loss=True).loss)

    def outputs(self, loaded: Loaded, batch: Batch) -> Batch:
        backbone = backbone_of(loaded.model)
        adapter = _adapter(loaded)
        out = {"media_embeds": adapter.media_features(backbone, _media_inputs(loaded, batch))}
        if "input_ids" in batch:
            out["text_embeds"] = adapter.text_features(backbone, _text_inputs(batch))
        return {k: v.float() for k, v in out.items()}

    def evaluate(self, loaded: Loaded, outputs: Batch, rows: list[Row]) -> dict[str, Any]:
        from modaltune.metrics import retrieval_metrics

        similarity = outputs["media_embeds"] @ outputs["text_embeds"].T
        # Rows of one media file are one item (a clip with several captions).
        metrics = retrieval_metrics(similarity, [_media_key(row) for row in rows])
        with torch.no_grad():
            loss = _adapter(loaded).contrastive_loss(_plain(loaded), outputs["media_embeds"], outputs["text_embeds"])
        metrics["loss"] = round(float(loss), 6)
        return metrics

    def predict(self, loaded: Loaded, outputs: Batch, rows: list[Row]) -> list[dict]:
        if not self.texts:
            return [{"input": row.id, "embedding": emb.tolist()} for row, emb in zip(rows, outputs["media_embeds"])]
        from modaltune.metrics import top_indices

        adapter = _adapter(loaded)
        tokens = adapter.text_inputs(loaded.processor, _plain(loaded), self.texts)
        text = adapter.text_features(backbone_of(loaded.model), tokens).float()
        similarity = outputs["media_embeds"] @ text.T
        probs = (similarity * adapter.logit_scale(_plain(loaded))).softmax(-1)
        results = []
        for row, p, order in zip(rows, probs, top_indices(similarity, 5).tolist()):
            ranked = [{"text": self.texts[i], "score": round(float(p[i]), 6)} for i in order]
            results.append({"input": row.id, "text": ranked[0]["text"], "score": ranked[0]["score"], "top": ranked})
        return results

    def attach(self, other: Loaded) -> Loaded:
        return Loaded(model=DualEncoderModel(backbone_of(other.model)), processor=other.processor,
                      media_options=dict(other.media_options))

    @classmethod
    def chance(cls, rows: list[Row]) -> float:
        # r_mean averages R@1/5/10 both ways; a random ranking of n candidates hits R@k with k/n.
        n = max(1, len(rows))
        return sum(min(k, n) / n for k in (1, 5, 10)) / 3

    def probe_parameters(self, loaded: Loaded) -> list[str]:
        # A retrieval "head" is the pair of projections into the shared space.
        return [n for n in self.top_parameters(loaded) if "projection" in n]

    def cache_split(self, loaded: Loaded, strategy: str, layers: int | None) -> CacheSplit | None:
        """Linear probe: cache both towers' pooled outputs, train the two projections on them."""
        model = backbone_of(loaded.model)
        if strategy != "linear-probe" or model is not unwrap(model):
            return None  # LoRA changes the towers themselves
        adapter = dual_encoder_adapter(model)
        if adapter.media_projection is None or adapter.text_projection is None:
            return None  # SigLIP: no projection of its own to train apart from its towers
        media_projection = model.get_submodule(adapter.media_projection)
        text_projection = model.get_submodule(adapter.text_projection)
        text_model = model.get_submodule(adapter.text_model)
        width = int(hf_config(model).text_config.hidden_size)  # the text pooler's width, last in a row
        tokenizer = loaded.processor.tokenizer

        def encode(batch: Batch) -> torch.Tensor:
            media = adapter.pooled_media(model, _media_inputs(loaded, batch))
            text = text_model(**_text_inputs(batch)).pooler_output
            return torch.cat([media, text], dim=-1)

        def embeds(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            features = batch["features"]
            return (F.normalize(media_projection(features[:, :-width]), dim=-1),
                    F.normalize(text_projection(features[:, -width:]), dim=-1))

        def loss(batch: Batch) -> torch.Tensor:
            return adapter.contrastive_loss(model, *embeds(batch))

        def outputs(batch: Batch) -> Batch:
            media, text = embeds(batch)
            return {"media_embeds": media.float(), "text_embeds": text.float()}

        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
        return CacheSplit(
            name=f"retrieve:pooled-{adapter.media_kind}-and-text",
            frozen=[model.get_submodule(adapter.media_model), text_model], encode=encode,
            collate=lambda items: {"features": torch.stack([f for _, f in items])}, loss=loss, outputs=outputs,
            preprocessing={adapter.media_kind: adapter.preprocessing(loaded.processor),
                           "tokenizer": [type(tokenizer).__name__, adapter.text_max_length(loaded.processor, model),
                                         hashlib.sha256(vocab.encode()).hexdigest()]})

    def save(self, loaded: Loaded, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        backbone_of(loaded.model).save_pretrained(directory)  # type: ignore[operator]
        loaded.processor.save_pretrained(directory)
        write_meta(directory, {"task": "retrieve", "state": dict(loaded.state)})


def _media_key(row: Row) -> str:
    """The media file of a row (the item retrieval ranks), whatever its kind."""
    return ",".join(str(path) for _, path in sorted(row.media.items())) or row.id
