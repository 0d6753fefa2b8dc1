"""Open-vocabulary detectors: Grounding DINO (one text prompt of phrases) and OWLv2 / OWL-ViT (one
text query per class).

What the `detect` task asks of a model lives here, so the task names no model type:

* how class names become text inputs, and how the model's per-token or per-query logits become
  one probability per class: Grounding DINO reads the classes as phrases of one prompt in its
  ``"a . b ."`` convention (split into several prompts when the names do not fit its text length)
  and scores a class by the mean sigmoid over the phrase's tokens; OWL asks one query per class;
* where its predicted boxes live: normalised to the image (Grounding DINO, OWL-ViT, which
  stretches) or to the image padded to a square at the bottom and right (OWLv2);
* its loss: Grounding DINO's own (transformers computes it when ``labels`` are passed); OWL has
  none in transformers, so its loss is built from transformers' Grounding DINO matcher and
  criterion with one "token" per query (Hungarian matching on focal class + L1 + GIoU costs, then
  sigmoid focal, L1 and GIoU losses), plus OWLv2's objectness against the matched predictions;
* its towers and blocks (strategies), the detection heads a linear probe trains, the parameters no
  loss reaches, and the projections LoRA wraps (attention and feed-forward).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from modaltune.errors import ConfigError
from modaltune.models.base import ModelAdapter, Tower, hf_config, register_adapter

Batch = dict[str, torch.Tensor]
#: Loss weights of the class, L1 and GIoU terms (Grounding DINO's own: transformers' weight_dict).
CLASS_WEIGHT, BBOX_WEIGHT, GIOU_WEIGHT = 2.0, 5.0, 2.0
#: Hungarian matching costs for OWL (class, L1, GIoU), as DETR-style detectors match.
MATCH_COSTS = (2.0, 5.0, 2.0)


@dataclass(frozen=True)
class Prompt:
    """One text input: its tokens (``input_ids`` etc., shape (1, length)) and the classes it asks
    for, by index into the task's category list, in the order of the model's class outputs."""

    inputs: dict[str, torch.Tensor]
    classes: tuple[int, ...]


@dataclass
class Detections:
    """A batch of raw detections: ``boxes`` (B, N, 4) as (cx, cy, w, h) in the model's normalised
    frame, ``scores`` (B, N, C) a probability per category, ``embeds`` (B, D) one image vector."""

    boxes: torch.Tensor
    scores: torch.Tensor
    embeds: torch.Tensor


class DetectionAdapter(ModelAdapter, ABC):
    """What `detect` asks of an open-vocabulary detector."""

    #: Parameter-name prefixes of the detection heads (what a linear probe trains).
    head_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Parameter-name prefixes that no loss of this task reaches (full and scratch leave them).
    unreached: ClassVar[tuple[str, ...]] = ()
    #: Linear layers LoRA wraps inside the blocks: attention and feed-forward projections.
    lora_layers: ClassVar[str] = r"q_proj|k_proj|v_proj|o_proj|out_proj|query|key|value|fc1|fc2|dense"
    #: Whether boxes are normalised by the longer side (an image padded to a square) or by each side.
    square_boxes: ClassVar[bool] = False

    def lora_pattern(self, model: nn.Module, towers: list[str] | None = None) -> str:
        chosen = self.towers(model)
        paths = [re.escape(chosen[name].blocks) for name in (towers or list(chosen))]
        return rf"({'|'.join(paths)})\.\d+\.(.*\.)?({self.lora_layers})$"

    def box_scale(self, width: int, height: int) -> tuple[float, float]:
        """Pixels per normalised unit along x and y for an image of ``width`` x ``height``."""
        if self.square_boxes:
            side = float(max(width, height))
            return side, side
        return float(width), float(height)

    def prepare(self, model: nn.Module) -> None:
        """Fix up a freshly loaded model for training here (nothing by default)."""

    def image_inputs(self, processor: Any, images: list[Any]) -> Batch:
        return dict(processor.image_processor(images=images, return_tensors="pt"))

    @abstractmethod
    def prompts(self, processor: Any, model: nn.Module, categories: list[str]) -> list[Prompt]:
        ...

    @abstractmethod
    def detect(self, model: nn.Module, images: Batch, prompts: list[Prompt], categories: int) -> Detections:
        ...

    @abstractmethod
    def loss(self, model: nn.Module, images: Batch, prompts: list[Prompt], targets: list[dict[str, torch.Tensor]],
             ) -> dict[str, torch.Tensor]:
        """``{"loss": total, part: value, ...}``; ``targets`` per image: ``class_labels`` (category
        indices) and ``boxes`` (cx, cy, w, h) in the model's normalised frame."""


def _prompt_text(name: str) -> str:
    # "." and "?" end a phrase for Grounding DINO: inside a class name they would split it in two.
    return re.sub(r"\s+", " ", re.sub(r"[.?]", " ", name)).strip().lower()


@register_adapter
class GroundingDinoAdapter(DetectionAdapter):
    """``GroundingDinoForObjectDetection``: a Swin (or ResNet) image backbone, a BERT text backbone,
    a fusion encoder and a decoder whose queries are scored against the prompt's tokens."""

    model_types = ("grounding-dino",)
    tower_specs = (("text", "model.text_backbone", "model.text_backbone.encoder.layer"),
                   ("encoder", "model.encoder", "model.encoder.layers"),
                   ("decoder", "model.decoder", "model.decoder.layers"))
    below_blocks = ("embeddings", "level_embed")
    head_prefixes = ("bbox_embed.", "model.decoder.bbox_embed.", "model.text_projection.",
                     "model.enc_output.", "model.enc_output_norm.", "model.encoder_output_bbox_embed.")
    # The two-stage proposal head only ranks proposals (a top-k, no gradient) in transformers'
    # implementation, whose "_enc" loss terms read the detached proposals; the Swin's final norm is
    # not used by the backbone (its stage norms are).
    unreached = ("model.enc_output.", "model.enc_output_norm.", "model.encoder_output_bbox_embed.",
                 "model.backbone.conv_encoder.model.layernorm.", "model.backbone.conv_encoder.model.swin.layernorm.")
    lora_layers = (r"q_proj|k_proj|v_proj|o_proj|out_proj|query|key|value|fc1|fc2|attention\.output\.dense|"
                   r"intermediate\.dense|output\.dense|value_proj|output_proj|vision_proj|text_proj|"
                   r"values_vision_proj|values_text_proj|out_vision_proj|out_text_proj")

    def towers(self, model: nn.Module) -> dict[str, Tower]:
        found = {}
        stages = [path for path, module in model.named_modules()
                  if path.startswith("model.backbone.") and isinstance(module, nn.ModuleList)
                  and path.rsplit(".", 1)[-1] in ("layers", "stages")]
        if stages:
            found["backbone"] = Tower("backbone", "model.backbone", stages[0])
        return {**found, **super().towers(model)}

    def prepare(self, model: nn.Module) -> None:
        """PEFT asks a model whose tied weights are declared as a dict for its input embeddings, which
        ``GroundingDinoForObjectDetection`` does not implement (transformers 5): they are the BERT's
        word embeddings, given on this instance only."""
        try:
            model.get_input_embeddings()  # type: ignore[operator]
        except NotImplementedError:
            text = model.get_submodule("model.text_backbone")
            model.get_input_embeddings = text.get_input_embeddings

    def prompts(self, processor: Any, model: nn.Module, categories: list[str]) -> list[Prompt]:
        """The classes as phrases of as few prompts as fit the model's text length, in order."""
        tokenizer = processor.tokenizer
        limit = int(hf_config(model).max_text_len)
        limit = min(limit, int(getattr(tokenizer, "model_max_length", limit) or limit))
        chunks: list[list[int]] = [[]]
        used = 2  # [CLS] ... [SEP]
        for index, name in enumerate(categories):
            text = _prompt_text(name)
            cost = len(tokenizer.tokenize(text)) + 1  # the phrase and its "."
            if not text or cost - 1 == 0:
                raise ConfigError(f"category {name!r} has no words Grounding DINO can prompt with")
            if cost + 2 > limit:
                raise ConfigError(f"category {name!r} is {cost - 1} tokens long, more than the model's text "
                                  f"length ({limit} tokens with [CLS], [SEP] and '.') allows: shorten the name")
            if used + cost > limit:
                chunks.append([])
                used = 2
            chunks[-1].append(index)
            used += cost
        prompts = []
        for chunk in chunks:
            text = " . ".join(_prompt_text(categories[i]) for i in chunk) + " ."
            inputs = dict(tokenizer(text, return_tensors="pt"))
            phrases = _phrase_count(inputs["input_ids"])
            if phrases != len(chunk):
                raise ConfigError(
                    f"the prompt {text!r} splits into {phrases} phrases, not {len(chunk)}: the tokenizer must keep "
                    "bert-base-uncased's ids for [CLS] (101), [SEP] (102), '.' (1012) and '?' (1029), which "
                    "Grounding DINO hard-codes")
            prompts.append(Prompt(inputs, tuple(chunk)))
        return prompts

    def _forward(self, model: nn.Module, images: Batch, prompt: Prompt, **kwargs: Any) -> Any:
        size = images["pixel_values"].shape[0]
        device = images["pixel_values"].device
        text = {k: v.to(device).repeat(size, 1) for k, v in prompt.inputs.items()}
        return model(**images, **text, **kwargs)

    def detect(self, model: nn.Module, images: Batch, prompts: list[Prompt], categories: int) -> Detections:
        boxes, scores, embeds = [], [], None
        for prompt in prompts:
            out = self._forward(model, images, prompt)
            # A class's score: the mean probability over its phrase's tokens (the label map the loss uses).
            maps = _label_map(prompt.inputs["input_ids"], out.logits.shape[-1]).to(out.logits)
            probs = out.logits.sigmoid().nan_to_num(0.0)  # positions past the prompt are -inf: probability 0
            phrase = probs @ (maps / maps.sum(-1, keepdim=True)).T  # (B, Q, phrases)
            full = phrase.new_zeros((*phrase.shape[:2], categories))
            full[..., list(prompt.classes)] = phrase
            boxes.append(out.pred_boxes)
            scores.append(full)
            if embeds is None:
                embeds = out.encoder_last_hidden_state_vision.mean(dim=1)
        assert embeds is not None, "there is at least one prompt"
        return Detections(torch.cat(boxes, 1), torch.cat(scores, 1), embeds)

    def loss(self, model: nn.Module, images: Batch, prompts: list[Prompt], targets: list[dict[str, torch.Tensor]],
             ) -> dict[str, torch.Tensor]:
        """Grounding DINO's own loss for each prompt, over the boxes of the classes it asks for."""
        total: dict[str, torch.Tensor] = {}
        for prompt in prompts:
            position = {c: i for i, c in enumerate(prompt.classes)}
            labels = []
            for target in targets:
                keep = torch.tensor([int(c) in position for c in target["class_labels"].tolist()], dtype=torch.bool,
                                    device=target["boxes"].device)
                phrase = torch.tensor([position[int(c)] for c in target["class_labels"][keep].tolist()],
                                      dtype=torch.long, device=target["boxes"].device)
                labels.append({"class_labels": phrase, "boxes": target["boxes"][keep]})
            out = self._forward(model, images, prompt, labels=labels)
            _accumulate(total, {"loss": out.loss, **out.loss_dict})
        return total


def _phrase_count(input_ids: torch.Tensor) -> int:
    return int(_label_map(input_ids, input_ids.shape[-1]).shape[0])


def _label_map(input_ids: torch.Tensor, width: int) -> torch.Tensor:
    """(phrases, width) 0/1: which token positions belong to each phrase of a one-prompt batch, as
    Grounding DINO's loss groups them (``build_label_maps``)."""
    from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps

    return build_label_maps(torch.zeros(1, 1, width), cast(torch.LongTensor, input_ids[:1]))[0].float()


def _accumulate(total: dict[str, torch.Tensor], parts: dict[str, torch.Tensor]) -> None:
    for name, value in parts.items():
        total[name] = total[name] + value if name in total else value


class OwlAdapter(DetectionAdapter):
    """OWL-ViT / OWLv2: a CLIP-style image tower whose patch tokens each predict a box, scored
    against one text query per class."""

    prefix: ClassVar[str]
    lora_layers = r"q_proj|k_proj|v_proj|out_proj|fc1|fc2"

    def prompts(self, processor: Any, model: nn.Module, categories: list[str]) -> list[Prompt]:
        tokenizer = processor.tokenizer
        length = int(hf_config(model).text_config.max_position_embeddings)
        inputs = tokenizer([name.strip() for name in categories], padding="max_length", truncation=True,
                           max_length=length, return_tensors="pt")
        return [Prompt({k: inputs[k] for k in ("input_ids", "attention_mask")}, tuple(range(len(categories))))]

    def _forward(self, model: nn.Module, images: Batch, prompt: Prompt) -> Any:
        size = images["pixel_values"].shape[0]
        device = images["pixel_values"].device
        # (B · queries, length): every image asks the same queries.
        text = {k: v.to(device).repeat(size, 1) for k, v in prompt.inputs.items()}
        return model(pixel_values=images["pixel_values"], **text)

    def detect(self, model: nn.Module, images: Batch, prompts: list[Prompt], categories: int) -> Detections:
        (prompt,) = prompts
        return self.detections_of(self._forward(model, images, prompt))

    def loss(self, model: nn.Module, images: Batch, prompts: list[Prompt], targets: list[dict[str, torch.Tensor]],
             ) -> dict[str, torch.Tensor]:
        (prompt,) = prompts
        return self.loss_of(self._forward(model, images, prompt), targets)

    # ---- the heads apart from the towers (a linear probe's feature cache) ----------------------
    # The heads read only the image tower's final states and the text queries' embeddings, both
    # frozen under a linear probe, so a probe can train on stored image states (`DetectTask.cache_split`).

    def image_states(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1 + patches, D): the image tower's last hidden states after its final norm, all that
        the detection heads read of an image (the model's ``image_embedder`` up to ``post_layernorm``)."""
        vision = cast(Any, model.get_submodule(f"{self.prefix}.vision_model"))
        return cast(torch.Tensor, vision.post_layernorm(vision(pixel_values=pixel_values).last_hidden_state))

    def query_embeds(self, model: nn.Module, prompt: Prompt, device: torch.device,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's (queries, D) unit-length text embeddings and (queries,) mask of real queries,
        as the model's forward computes them."""
        owl = cast(Any, model.get_submodule(self.prefix))
        ids = prompt.inputs["input_ids"].to(device)
        pooled = owl.text_model(input_ids=ids, attention_mask=prompt.inputs["attention_mask"].to(device)).pooler_output
        embeds = owl.text_projection(pooled)
        return embeds / torch.linalg.norm(embeds, ord=2, dim=-1, keepdim=True), ids[:, 0] > 0

    def heads(self, model: nn.Module, states: torch.Tensor, queries: torch.Tensor, query_mask: torch.Tensor) -> Any:
        """What the model's forward returns (``logits``, ``pred_boxes``, ``objectness_logits``,
        ``image_embeds``) from ``image_states`` and ``query_embeds``, through the model's own predictors."""
        from types import SimpleNamespace

        owl = cast(Any, model)
        size = states.shape[0]
        cls = torch.broadcast_to(states[:, :1, :], states[:, :-1].shape)
        feats = owl.layer_norm(states[:, 1:, :] * cls)
        grid = (size, int(owl.num_patches_height), int(owl.num_patches_width), feats.shape[-1])
        feature_map = feats.reshape(grid)
        feats = feature_map.reshape(size, grid[1] * grid[2], grid[3])
        logits, _ = owl.class_predictor(feats, queries.expand(size, -1, -1), query_mask.expand(size, -1))
        boxes = owl.box_predictor(feats, feature_map)
        predictor = getattr(owl, "objectness_predictor", None)
        return SimpleNamespace(logits=logits, pred_boxes=boxes, image_embeds=feature_map,
                               objectness_logits=predictor(feats) if predictor is not None else None)

    def detections_of(self, out: Any) -> Detections:
        return Detections(out.pred_boxes, out.logits.sigmoid(), out.image_embeds.flatten(1, 2).mean(dim=1))

    def loss_of(self, out: Any, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The loss parts of the model's outputs ``out`` (see `owl_loss`), OWLv2's objectness included."""
        parts, matched = owl_loss(out.logits, out.pred_boxes, targets)
        objectness = getattr(out, "objectness_logits", None)
        if objectness is not None:
            # OWLv2's objectness: is this patch's box one of the objects (a matched prediction)?
            parts["loss_objectness"] = nn.functional.binary_cross_entropy_with_logits(objectness, matched)
            parts["loss"] = parts["loss"] + parts["loss_objectness"]
        return parts


def owl_loss(logits: torch.Tensor, pred_boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]],
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The DETR-style set loss of per-query logits (B, P, C) and boxes (B, P, 4), through
    transformers' Grounding DINO matcher and criterion with one token per query: Hungarian matching
    on (focal class, L1, GIoU) costs, then sigmoid focal, L1 and GIoU losses normalised by the number
    of boxes. Returns the parts (weighted total under "loss") and the (B, P) matched-prediction mask."""
    from transformers.loss.loss_grounding_dino import GroundingDinoHungarianMatcher, GroundingDinoImageLoss

    batch, patches, queries = logits.shape
    matcher = GroundingDinoHungarianMatcher(class_cost=MATCH_COSTS[0], bbox_cost=MATCH_COSTS[1],
                                            giou_cost=MATCH_COSTS[2])
    criterion = GroundingDinoImageLoss(matcher=matcher, focal_alpha=0.25, losses=["labels", "boxes", "cardinality"])
    # Every image asks the same queries, so each has the same one-hot "label map" (a query is its own
    # token); the criterion indexes these maps with an offset that is only right when they are equal.
    eye = torch.eye(queries, dtype=torch.long, device=logits.device)
    outputs = {"logits": logits, "pred_boxes": pred_boxes, "label_maps": tuple(eye for _ in range(batch)),
               "text_mask": torch.ones_like(logits, dtype=torch.bool)}
    labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"]} for t in targets]
    parts = criterion(outputs, labels)
    matched = torch.zeros(batch, patches, device=logits.device, dtype=logits.dtype)
    for i, (rows, _) in enumerate(matcher(outputs, labels)):
        matched[i, rows.to(logits.device)] = 1.0
    parts["loss"] = (CLASS_WEIGHT * parts["loss_ce"] + BBOX_WEIGHT * parts["loss_bbox"]
                     + GIOU_WEIGHT * parts["loss_giou"])
    return parts, matched


@register_adapter
class Owlv2Adapter(OwlAdapter):
    model_types = ("owlv2",)
    prefix = "owlv2"
    tower_specs = (("vision", "owlv2.vision_model", "owlv2.vision_model.encoder.layers"),
                   ("text", "owlv2.text_model", "owlv2.text_model.encoder.layers"))
    below_blocks = ("embeddings", "pre_layernorm", "pre_layrnorm")
    head_prefixes = ("class_head.", "box_head.", "objectness_head.", "layer_norm.")
    # The CLIP logit scale and image projection belong to the contrastive model, not the detector.
    unreached = ("owlv2.logit_scale", "owlv2.visual_projection.")
    square_boxes = True  # OWLv2 pads the image to a square (bottom/right) before resizing


@register_adapter
class OwlViTAdapter(OwlAdapter):
    model_types = ("owlvit",)
    prefix = "owlvit"
    tower_specs = (("vision", "owlvit.vision_model", "owlvit.vision_model.encoder.layers"),
                   ("text", "owlvit.text_model", "owlvit.text_model.encoder.layers"))
    below_blocks = ("embeddings", "pre_layernorm", "pre_layrnorm")
    head_prefixes = ("class_head.", "box_head.", "layer_norm.")
    unreached = ("owlvit.logit_scale", "owlvit.visual_projection.")


def detection_adapter(model: nn.Module) -> DetectionAdapter:
    """The adapter of a detector (a plain transformers model), or an error naming the ones supported."""
    from modaltune.models.base import adapter_for_type

    model_type = getattr(getattr(model, "config", None), "model_type", "")
    adapter = adapter_for_type(model_type)
    if not isinstance(adapter, DetectionAdapter):
        supported = "grounding-dino, owlv2, owlvit"
        raise ConfigError(f"task detect needs an open-vocabulary detector ({supported}); this model is "
                          f"{model_type or type(model).__name__!r}")
    return adapter
