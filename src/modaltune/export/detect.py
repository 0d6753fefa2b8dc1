"""ONNX export of open-vocabulary detection (``detect``): OWLv2 and OWL-ViT; Grounding DINO is refused.

OWL's graph: the image's pixels and the text queries (one per category: token ids and mask, padded
to the text tower's length) → per-patch query logits (B, patches, queries), boxes (B, patches, 4) as
(cx, cy, w, h) in the model's normalised frame, and the mean patch embedding. Both the batch and the
number of queries are dynamic, so a prediction may ask for other labels than the run's categories
(``--labels``), as the PyTorch model can. The runtime makes the graph's inputs with the detection
adapter's own image and prompt code and turns its outputs into the task's (probabilities, pixel
corners), which `DetectTask` ranks and thresholds as it does the PyTorch model's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from modaltune.export.registry import ExportError, Graph, Items, OnnxExporter, register_onnx
from modaltune.models.base import adapter_for_type, backbone_of, hf_config
from modaltune.models.detection import DetectionAdapter, Prompt, detection_adapter
from modaltune.tasks.base import unwrap

if TYPE_CHECKING:
    from modaltune.data.rows import Row
    from modaltune.export.onnx_predict import OnnxRuntime
    from modaltune.tasks.base import Loaded, Task

_INPUTS = ("pixel_values", "input_ids", "attention_mask")
_OUTPUTS = ("logits", "boxes", "image_embeds")
#: The model types whose graph exports.
EXPORTED = ("owlv2", "owlvit")
#: How far the exported forward may differ from the adapter's ``detect`` on the trace inputs.
_SAME = 1e-5
GROUNDING_DINO = (
    "Grounding DINO is not exported to ONNX: torch.onnx cannot translate its graph. It builds its text "
    "attention masks from the prompt's phrase separators with torch.isin and torch.cummax / cummin, which "
    "neither torch.onnx exporter (torchscript, dynamo) has an ONNX translation for, and the prompt itself "
    "changes with the class names (split into several prompts when they do not fit the text length). "
    "Serve the PyTorch run instead (`modaltune serve RUN` batches requests), or fine-tune an OWLv2 or "
    "OWL-ViT detector (e.g. --model google/owlv2-base-patch16-ensemble), whose graph exports")


class _Owl(nn.Module):
    """Images x the same text queries for every image → (logits, boxes, mean patch embedding)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # Owlv2ForObjectDetection / OwlViTForObjectDetection

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = pixel_values.shape[0]
        out = self.model(pixel_values=pixel_values, input_ids=input_ids.repeat(size, 1),
                         attention_mask=attention_mask.repeat(size, 1))
        return out.logits.float(), out.pred_boxes.float(), out.image_embeds.flatten(1, 2).mean(dim=1).float()


class _ConfigOnly(nn.Module):
    """The model's config with no weights: what the adapter's prompt code reads of a model."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config


def _plain(loaded: Loaded) -> nn.Module:
    return unwrap(backbone_of(loaded.model))


@register_onnx
class DetectExporter(OnnxExporter):
    task = "detect"

    def unsupported(self, task: Task, loaded: Loaded) -> str | None:
        model_type = hf_config(_plain(loaded)).model_type
        if model_type in EXPORTED:
            return None
        if model_type == "grounding-dino":
            return GROUNDING_DINO
        return f"detector {model_type!r} has no ONNX export; those that have one: {', '.join(EXPORTED)}"

    def graphs(self, task: Task, loaded: Loaded, items: Items) -> list[Graph]:
        model = _plain(loaded)
        adapter = detection_adapter(model)
        categories = list(loaded.state["categories"])
        pixels = adapter.image_inputs(loaded.processor, [media["image"] for _, media in items])["pixel_values"]
        (prompt,) = adapter.prompts(loaded.processor, model, categories)
        # Other query counts than the traced one: fewer, and more (two more names than the categories).
        (more,) = adapter.prompts(loaded.processor, model, [*categories, "an object", "something else"])
        ids, mask = prompt.inputs["input_ids"], prompt.inputs["attention_mask"]
        samples = [{"pixel_values": pixels[:3], "input_ids": ids, "attention_mask": mask},
                   {"pixel_values": pixels[-1:], "input_ids": ids, "attention_mask": mask},
                   {"pixel_values": pixels[:2], "input_ids": ids[:1], "attention_mask": mask[:1]},
                   {"pixel_values": pixels[:3], "input_ids": more.inputs["input_ids"],
                    "attention_mask": more.inputs["attention_mask"]}]
        module = _Owl(model).eval()
        _check_same_as_adapter(module, adapter, model, samples[0], len(categories))
        return [Graph("detect", module, _INPUTS, _OUTPUTS,
                      {"pixel_values": (0,), "input_ids": (0,), "attention_mask": (0,)}, samples)]

    def state(self, task: Task, loaded: Loaded) -> dict[str, Any]:
        return {"categories": list(loaded.state["categories"]), "model_type": hf_config(_plain(loaded)).model_type}

    def sample_rows(self, loaded: Loaded) -> Items:
        from PIL import Image

        from modaltune.data.rows import Row

        rng = np.random.default_rng(0)
        sizes = [(80, 64), (64, 96), (72, 72), (96, 64)]  # landscape and portrait: OWLv2 pads to a square
        return [(Row(id=f"synthetic-{i}"), {"image": Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))})
                for i, (w, h) in enumerate(sizes)]

    # ---- prediction time --------------------------------------------------------------------

    def _adapter(self, runtime: OnnxRuntime) -> DetectionAdapter:
        adapter = adapter_for_type(runtime.state["model_type"])
        assert isinstance(adapter, DetectionAdapter), runtime.state["model_type"]
        return adapter

    def _categories(self, runtime: OnnxRuntime, options: dict[str, Any]) -> list[str]:
        from modaltune.tasks.detect import DetectTask

        labels = options.get("labels")
        # The task's own cleaning (stripped, no duplicates, none empty), as the PyTorch task applies it.
        return list(DetectTask(categories=labels).categories or []) if labels else list(runtime.state["categories"])

    def run(self, runtime: OnnxRuntime, items: Items, options: dict[str, Any]) -> dict[str, np.ndarray]:
        """`DetectTask.outputs` through the graph: probabilities per (patch, category), boxes as
        pixel corners clipped to the image, the image embedding and size."""
        from transformers import AutoConfig

        adapter = self._adapter(runtime)
        if "config" not in runtime.cache:
            runtime.cache["config"] = AutoConfig.from_pretrained(runtime.directory)
        images = [media["image"] for _, media in items]
        pixels = adapter.image_inputs(runtime.processor, images)["pixel_values"]
        prompts = adapter.prompts(runtime.processor, _ConfigOnly(runtime.cache["config"]),
                                  self._categories(runtime, options))
        (prompt,) = prompts
        out = runtime.run_graph("detect", {"pixel_values": pixels, **prompt.inputs})
        sizes = np.array([[image.width, image.height] for image in images], dtype=np.float32)
        scale = np.array([adapter.box_scale(int(w), int(h)) for w, h in sizes], dtype=np.float32)
        scale = np.tile(scale, 2)[:, None, :]
        cx, cy, w, h = np.moveaxis(out["boxes"].astype(np.float32), -1, 0)
        corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1) * scale
        corners = np.minimum(np.maximum(corners, 0), np.tile(sizes, 2)[:, None, :])
        scores = 1 / (1 + np.exp(-out["logits"].astype(np.float32)))
        return {"boxes": corners, "scores": scores, "image_embeds": out["image_embeds"], "image_size": sizes}

    def task_options(self, runtime: OnnxRuntime, options: dict[str, Any]) -> dict[str, Any]:
        names = ("threshold", "max_detections", "save_images")
        return {"categories": self._categories(runtime, options),
                **{k: options[k] for k in names if options.get(k) is not None}}

    def predict(self, runtime: OnnxRuntime, outputs: dict[str, np.ndarray], rows: list[Row],
                options: dict[str, Any]) -> list[dict]:
        task, loaded = runtime.task_and_state(options, categories=self._categories(runtime, options))
        return task.predict(loaded, {k: torch.from_numpy(v) for k, v in outputs.items()}, rows)


def _check_same_as_adapter(module: _Owl, adapter: DetectionAdapter, model: nn.Module, sample: dict[str, torch.Tensor],
                           categories: int) -> None:
    """The graph computes what the adapter's ``detect`` does (the runtime's sigmoid included), or the
    export stops: a change to the adapter must reach this exporter before its graphs ship."""
    prompt = Prompt({"input_ids": sample["input_ids"], "attention_mask": sample["attention_mask"]},
                    tuple(range(categories)))
    with torch.no_grad():
        logits, boxes, embeds = module(sample["pixel_values"], sample["input_ids"], sample["attention_mask"])
        found = adapter.detect(model, {"pixel_values": sample["pixel_values"]}, [prompt], categories)
    diffs = {"scores": (logits.sigmoid() - found.scores.float()).abs().max(),
             "boxes": (boxes - found.boxes.float()).abs().max(), "embeds": (embeds - found.embeds.float()).abs().max()}
    off = {k: float(v) for k, v in diffs.items() if float(v) > _SAME}
    if off:
        raise ExportError(f"the exported {type(model).__name__} forward no longer computes what its detection "
                          f"adapter's detect does (differences {off}); modaltune/export/detect.py must follow it")
