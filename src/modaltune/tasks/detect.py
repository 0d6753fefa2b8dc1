"""Open-vocabulary object detection (`detect`): Grounding DINO, OWLv2 and OWL-ViT, from zero-shot to
fine-tuned, scored with COCO mAP.

The classes are text: the model is prompted with the category names (learned from the training
boxes, saved with the model, or given with ``--labels``), so a detector never trained on a class
can still be asked for it. What differs between the models (prompts, scores, box frames, loss,
towers) is asked of their adapter (`modaltune.models.detection`); this module names no model type.

Boxes travel through a batch as tensors: ``target_boxes`` (B, M, 4) in the model's normalised
(cx, cy, w, h) frame and ``target_labels`` (B, M) category indices, -1 for padding and for crowd
boxes (COCO's ``iscrowd``: not an object to match; COCOeval ignores detections on them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from modaltune.config.task_options import TaskOptions
from modaltune.data.fields import IMAGE
from modaltune.data.rows import Row
from modaltune.errors import ConfigError, DataError
from modaltune.feature_cache import CacheSplit
from modaltune.models.base import backbone_of, blocks_at, hf_config
from modaltune.models.detection import DetectionAdapter, Detections, OwlAdapter, Prompt, detection_adapter
from modaltune.tasks.base import BackboneModel, Loaded, ModelOptions, Task, read_meta, register, unwrap, write_meta

Batch = dict[str, torch.Tensor]
#: Validation images shown with their boxes in the report, and the most boxes drawn on each.
SAMPLES = 6
SAMPLE_BOXES = 10
#: predict's default score threshold.
DEFAULT_THRESHOLD = 0.3
AUTO_CLASSES = ("AutoModelForZeroShotObjectDetection",)
#: Detections per image that evaluation scores (COCO's maxDets).
COCO_DETECTIONS = 100


class DetectOptions(TaskOptions):
    threshold: float | None = Field(default=None, ge=0, le=1, description=(
        f"predict: keep detections scoring at least this (default {DEFAULT_THRESHOLD}); eval scores every "
        "detection, as COCOeval expects"))
    max_detections: int | None = Field(default=None, ge=1, description=(
        "predict: most detections per image, highest scores first (default 100; eval keeps COCO's 100)"))
    save_images: str | None = Field(default=None, description=(
        "predict: draw each image's detections into this folder (PNG, one per input)"))


def _boxes_field() -> Any:
    from modaltune.data.boxes import BOXES

    return BOXES


@register("detect")
class DetectTask(Task):
    family = "detection"
    fields = (IMAGE, _boxes_field())
    primary_metric = "map"
    uses_labels = False
    feature_output = "image_embeds"
    Options = DetectOptions

    def __init__(self, categories: list[str] | None = None, labels: list[str] | None = None,
                 threshold: float | None = None, max_detections: int | None = None,
                 save_images: str | None = None, **options: Any) -> None:
        names = categories or labels
        self.categories = _unique_names(names) if names else None
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        self.max_detections = 100 if max_detections is None else int(max_detections)
        self.save_images = save_images
        self.options = options

    @classmethod
    def options_from_rows(cls, rows: list[Row]) -> dict[str, Any]:
        """The categories: the data's declared ones in its order (COCO: by id), then any other box label."""
        from modaltune.data.boxes import categories_of

        names = categories_of(rows)
        return {"categories": names} if names else {}

    # ---- model -------------------------------------------------------------------------------

    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False,
             options: ModelOptions | None = None) -> Loaded:
        from modaltune.tasks.vl import load_pretrained

        backbone, processor = load_pretrained(source, AUTO_CLASSES, scratch=scratch,
                                              trust_remote_code=trust_remote_code, task=self.name, options=options)
        detection_adapter(backbone).prepare(backbone)  # a model that is not a detector is a clear error
        saved = read_meta(Path(source)) if Path(source).is_dir() else None
        saved_state = (saved.get("state") or {}) if saved and saved.get("task") == "detect" else {}
        categories = self.categories or saved_state.get("categories")
        if not categories:
            raise ConfigError(f"task detect needs the class names to look for: {source} is not a modaltune detector, "
                              "so pass --labels a,b,c or training data with boxes")
        return Loaded(model=BackboneModel(backbone), processor=processor, state={"categories": list(categories)})

    def attach(self, other: Loaded) -> Loaded:
        """The other model, asked for this task's categories (the old task's own classes)."""
        if not self.categories:
            raise ConfigError("detect needs its categories before it can be attached to another model")
        return Loaded(model=other.model, processor=other.processor, meta=dict(other.meta),
                      media_options=dict(other.media_options), state={"categories": list(self.categories)})

    def save(self, loaded: Loaded, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        backbone_of(loaded.model).save_pretrained(directory)  # type: ignore[operator]
        loaded.processor.save_pretrained(directory)
        categories = _categories(loaded)
        write_meta(directory, {
            "task": "detect", "state": {"categories": categories},
            "usage": "AutoModelForZeroShotObjectDetection + AutoProcessor; ask for the categories in 'state' "
                     "(Grounding DINO: one prompt 'a . b .'; OWL: one text query per category)"})

    # ---- data --------------------------------------------------------------------------------

    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> Batch:
        model = _plain(loaded)
        adapter = detection_adapter(model)
        categories = _categories(loaded)
        index = {name: i for i, name in enumerate(categories)}
        images = [media["image"] for _, media in items]
        batch = adapter.image_inputs(loaded.processor, images)
        size = len(items)
        for k, prompt in enumerate(adapter.prompts(loaded.processor, model, categories)):
            # Every row carries the prompt (batches are sliced and moved by row); the first row's is read back.
            for key, value in prompt.inputs.items():
                batch[f"prompt{k}:{key}"] = value.unsqueeze(0).repeat(size, *([1] * value.dim()))
            batch[f"prompt{k}:classes"] = torch.tensor(prompt.classes).repeat(size, 1)
        batch["image_size"] = torch.tensor([[image.width, image.height] for image in images], dtype=torch.float32)
        if all(row.get("boxes") is not None for row, _ in items):
            batch.update(_targets(adapter, [row for row, _ in items], batch["image_size"], index))
        return batch

    def loss(self, loaded: Loaded, batch: Batch) -> dict[str, torch.Tensor]:
        adapter = detection_adapter(_plain(loaded))
        return adapter.loss(backbone_of(loaded.model), _image_inputs(batch), _prompts(batch), _target_list(batch))

    def outputs(self, loaded: Loaded, batch: Batch) -> Batch:
        """Every query's box in pixels (x0, y0, x1, y1) and its probability per category."""
        adapter = detection_adapter(_plain(loaded))
        found = adapter.detect(backbone_of(loaded.model), _image_inputs(batch), _prompts(batch),
                               len(_categories(loaded)))
        return _in_pixels(adapter, found, batch["image_size"])

    def cache_split(self, loaded: Loaded, strategy: str, layers: int | None) -> CacheSplit | None:
        """OWL's linear probe: the heads read only the image tower's final states and the text
        queries' embeddings, both frozen, so the image states are cached (one (1 + patches) x width
        tensor per image, followed by the decoded image's width and height, which the box targets
        and pixel boxes need) and the queries are embedded once. Grounding DINO has no such cut:
        whatever it trains reads prompt-conditioned fusion states (benchmarks/RESULTS.md)."""
        model = _plain(loaded)
        adapter = _adapter(loaded)
        if strategy != "linear-probe" or not isinstance(adapter, OwlAdapter) or backbone_of(loaded.model) is not model:
            return None  # LoRA changes the towers themselves
        if any(p.requires_grad and not name.startswith(adapter.head_prefixes) for name, p in model.named_parameters()):
            return None  # something under the heads trains: its outputs change every step
        index = {name: i for i, name in enumerate(_categories(loaded))}
        (prompt,) = adapter.prompts(loaded.processor, model, list(index))
        width = int(hf_config(model).vision_config.hidden_size)
        text = [model.get_submodule(f"{adapter.prefix}.{name}") for name in ("text_model", "text_projection")]
        queries: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

        def query(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
            # Frozen, so embedded once, in eval mode as the cached image states are.
            if device not in queries:
                modes = [m.training for m in text]
                try:
                    for m in text:
                        m.eval()
                    with torch.no_grad():
                        queries[device] = adapter.query_embeds(model, prompt, device)
                finally:
                    for m, mode in zip(text, modes):
                        m.train(mode)
            return queries[device]

        def encode(batch: Batch) -> torch.Tensor:
            states = adapter.image_states(model, batch["pixel_values"])
            return torch.cat([states.flatten(1), batch["image_size"].to(states)], dim=1)

        def collate(items: list[tuple[Row, torch.Tensor]]) -> Batch:
            features = torch.stack([f for _, f in items])
            sizes = features[:, -2:].clone()
            batch = {"image_states": features[:, :-2].reshape(len(items), -1, width), "image_size": sizes}
            if all(row.get("boxes") is not None for row, _ in items):
                batch.update(_targets(adapter, [row for row, _ in items], sizes, index))
            return batch

        def heads(batch: Batch) -> Any:
            states = batch["image_states"]
            return adapter.heads(model, states, *query(states.device))

        return CacheSplit(
            name=f"detect:{adapter.prefix}-image-states", encode=encode, collate=collate,
            frozen=[model.get_submodule(f"{adapter.prefix}.vision_model")],
            loss=lambda batch: adapter.loss_of(heads(batch), _target_list(batch)),  # type: ignore[arg-type,return-value]
            outputs=lambda batch: _in_pixels(adapter, adapter.detections_of(heads(batch)), batch["image_size"]),
            preprocessing={"image": loaded.processor.image_processor.to_dict(), "media": dict(loaded.media_options)})

    # ---- scores and predictions ----------------------------------------------------------------

    def _detections(self, outputs: Batch, row: int, *, threshold: float | None,
                    limit: int | None = None) -> list[dict[str, Any]]:
        """One image's detections, best first: each query's score for each category, at most
        ``limit`` (else ``max_detections``) of them, above ``threshold`` when one is given."""
        scores = outputs["scores"][row]
        flat = scores.flatten()
        count = min(limit or self.max_detections, flat.numel())
        top = torch.topk(flat, count)
        found = []
        classes = scores.shape[-1]
        for value, position in zip(top.values.tolist(), top.indices.tolist()):
            if threshold is not None and value < threshold:
                break
            query, category = divmod(position, classes)
            box = [float(v) for v in outputs["boxes"][row, query].tolist()]
            found.append({"box": box, "category": category, "score": float(value)})
        return found

    def evaluate(self, loaded: Loaded, outputs: Batch, rows: list[Row]) -> dict[str, Any]:
        """COCO metrics over every detection (no threshold), and sample images for the report."""
        from modaltune.metrics.detection import coco_metrics

        categories = _categories(loaded)
        unknown = sorted({box.label for row in rows for box in (row.get("boxes") or ())} - set(categories))
        if unknown:
            raise DataError(f"evaluation boxes of {unknown} are not among the categories the model is asked for "
                            f"({categories}); evaluate on data of those categories, or load the base model with "
                            "--labels naming them all")
        predictions = []
        for i, row in enumerate(rows):
            for det in self._detections(outputs, i, threshold=None, limit=COCO_DETECTIONS):
                predictions.append({"image_id": row.id, "box": det["box"], "label": categories[det["category"]],
                                    "score": det["score"]})
        truth = [{"image_id": row.id, "width": int(outputs["image_size"][i, 0]),
                  "height": int(outputs["image_size"][i, 1]), "boxes": list(row.get("boxes") or ())}
                 for i, row in enumerate(rows)]
        metrics = dict(coco_metrics(predictions, truth, categories, max_detections=COCO_DETECTIONS))
        metrics["samples"] = [self._sample(row, outputs, i, categories) for i, row in enumerate(rows[:SAMPLES])]
        return metrics

    def _sample(self, row: Row, outputs: Batch, i: int, categories: list[str]) -> dict[str, Any]:
        # Unrounded: a merged LoRA model scores within 1e-6 of the trained one, and a rounding boundary
        # between the two would make the same sample differ.
        found = self._detections(outputs, i, threshold=self.threshold, limit=SAMPLE_BOXES)
        boxes = [{"box": d["box"], "label": categories[d["category"]], "score": d["score"]} for d in found]
        truth = [{"box": [round(float(v), 2) for v in box.xyxy], "label": box.label}
                 for box in (row.get("boxes") or ())]
        text = ", ".join(f"{b['label']} {b['score']:.2f}" for b in boxes) or "nothing"
        return {"id": row.id, "image": str(row.media["image"]), "prediction": f"{len(boxes)}: {text}",
                "references": [b["label"] for b in truth] or ["(no objects)"], "boxes": boxes,
                "reference_boxes": truth}

    def predict(self, loaded: Loaded, outputs: Batch, rows: list[Row]) -> list[dict]:
        categories = _categories(loaded)
        results = []
        for i, row in enumerate(rows):
            found = self._detections(outputs, i, threshold=self.threshold)
            results.append({"input": row.id, "boxes": [[round(v, 2) for v in d["box"]] for d in found],
                            "labels": [categories[d["category"]] for d in found],
                            "scores": [round(d["score"], 6) for d in found]})
        if self.save_images:
            _save_drawings(Path(self.save_images), rows, results)
        return results

    @classmethod
    def chance(cls, rows: list[Row]) -> float:
        return 0.0  # boxes placed and labelled at random match nothing at IoU >= 0.5

    # ---- strategies --------------------------------------------------------------------------

    def blocks(self, loaded: Loaded) -> dict[str, list[nn.Module]]:
        """Every stack's blocks by path: the image backbone's stages, the text encoder's layers, and
        the fusion encoder's and decoder's layers where the model has them."""
        model = _plain(loaded)
        return {tower.blocks: blocks_at(model, tower.blocks) for tower in _adapter(loaded).towers(model).values()}

    def top_parameters(self, loaded: Loaded) -> list[str]:
        model = _plain(loaded)
        adapter = _adapter(loaded)
        stacks = tuple(tower.blocks + "." for tower in adapter.towers(model).values())
        return ["backbone." + name for name in self._reached(loaded)
                if not name.startswith(stacks) and not any(part in name for part in adapter.below_blocks)]

    def used_parameters(self, loaded: Loaded) -> list[str]:
        return ["backbone." + name for name in self._reached(loaded)]

    def probe_parameters(self, loaded: Loaded) -> list[str]:
        heads = _adapter(loaded).head_prefixes
        return ["backbone." + name for name in self._reached(loaded) if name.startswith(heads)]

    def lora_targets(self, loaded: Loaded) -> str:
        model = _plain(loaded)
        return _adapter(loaded).lora_pattern(model)

    def _reached(self, loaded: Loaded) -> list[str]:
        """The plain model's parameter names that the task's loss reaches (all but ``unreached``)."""
        adapter = _adapter(loaded)
        return [name for name, _ in _plain(loaded).named_parameters()
                if not any(name.startswith(p) or name == p for p in adapter.unreached)]


# --------------------------------------------------------------------------- helpers


def _plain(loaded: Loaded) -> nn.Module:
    return unwrap(backbone_of(loaded.model))


def _adapter(loaded: Loaded) -> DetectionAdapter:
    return detection_adapter(_plain(loaded))


def _categories(loaded: Loaded) -> list[str]:
    categories = loaded.state.get("categories")
    if not categories:
        raise ConfigError("detect has no categories: load the model through the detect task (with --labels or "
                          "training data)")
    return list(categories)


def _unique_names(names: list[str]) -> list[str]:
    cleaned = [str(name).strip() for name in names]
    if any(not name for name in cleaned):
        raise ConfigError(f"detect: a category name is empty in {names}")
    return list(dict.fromkeys(cleaned))


def _image_inputs(batch: Batch) -> Batch:
    return {k: batch[k] for k in ("pixel_values", "pixel_mask") if k in batch}


def _prompts(batch: Batch) -> list[Prompt]:
    """The text prompts of a batch (the same for every image: the first row's)."""
    prompts = []
    k = 0
    while f"prompt{k}:classes" in batch:
        inputs = {key.split(":", 1)[1]: value[0] for key, value in batch.items()
                  if key.startswith(f"prompt{k}:") and not key.endswith(":classes")}
        prompts.append(Prompt(inputs, tuple(int(c) for c in batch[f"prompt{k}:classes"][0].tolist())))
        k += 1
    return prompts


def _target_list(batch: Batch) -> list[dict[str, torch.Tensor]]:
    """The padded ``target_boxes`` / ``target_labels`` as the per-image targets a loss takes."""
    targets = []
    for boxes, labels in zip(batch["target_boxes"], batch["target_labels"]):
        keep = labels >= 0
        targets.append({"class_labels": labels[keep], "boxes": boxes[keep]})
    return targets


def _in_pixels(adapter: DetectionAdapter, found: Detections, image_size: torch.Tensor) -> Batch:
    """Detections as ``outputs`` returns them: boxes as (x0, y0, x1, y1) pixels inside each image."""
    sizes = image_size.to(found.boxes.device)
    scale = torch.tensor([adapter.box_scale(int(w), int(h)) for w, h in sizes.tolist()],
                         device=found.boxes.device).repeat(1, 2)[:, None, :]
    cx, cy, w, h = found.boxes.float().unbind(-1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * scale
    limit = sizes.repeat(1, 2)[:, None, :]
    corners = torch.minimum(corners.clamp(min=0), limit)
    return {"boxes": corners, "scores": found.scores.float(), "image_embeds": found.embeds.float(),
            "image_size": sizes.float()}


def _targets(adapter: DetectionAdapter, rows: list[Row], image_size: torch.Tensor, index: dict[str, int]) -> Batch:
    """Each image's boxes as (cx, cy, w, h) in the model's normalised frame, padded to the longest;
    ``image_size`` (B, 2) is each decoded image's width and height."""
    per_image = []
    for row, (width, height) in zip(rows, image_size.tolist()):
        sx, sy = adapter.box_scale(int(width), int(height))
        boxes = []
        for box in row.get("boxes") or ():
            if box.label not in index:
                raise DataError(f"{row.id}: box label {box.label!r} is not among the categories {list(index)}")
            x0, y0, x1, y1 = (float(v) for v in box.xyxy)
            label = -1 if getattr(box, "iscrowd", False) else index[box.label]
            boxes.append(((x0 + x1) / 2 / sx, (y0 + y1) / 2 / sy, (x1 - x0) / sx, (y1 - y0) / sy, label))
        per_image.append(boxes)
    longest = max(1, max(len(b) for b in per_image))
    coords = torch.zeros(len(rows), longest, 4)
    labels = torch.full((len(rows), longest), -1, dtype=torch.long)
    for i, boxes in enumerate(per_image):
        for j, (*xywh, label) in enumerate(boxes):
            coords[i, j] = torch.tensor(xywh)
            labels[i, j] = label
    return {"target_boxes": coords, "target_labels": labels}


def _save_drawings(folder: Path, rows: list[Row], results: list[dict]) -> None:
    from modaltune.data.media import load_image
    from modaltune.drawing import draw_boxes

    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for row, result in zip(rows, results):
        path = Path(row.media["image"])
        name = path.stem
        while name in taken:  # two inputs of the same name from different folders
            name += "_"
        taken.add(name)
        drawn = draw_boxes(load_image(path), result["boxes"], result["labels"], result["scores"])
        drawn.save(folder / f"{name}.png")

