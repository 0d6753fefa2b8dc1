"""ONNX export of VQA classifiers (ViLT), and what the generative families do not export.

ViLT's graph: token ids, mask and token types of the question + the image's pixels → the answer
logits and the pooled embedding. Images go through the graph one size at a time, unpadded (the
runtime groups them by size; ViLT's image processor makes every side a multiple of the patch):
ViLT then uses every patch of the image in order, which is what the PyTorch model computes for an
unpadded image (it shuffles the patches with ``torch.multinomial``, and attention is blind to their
order, so only float rounding differs).

Generation (BLIP and GIT captions and answers) is not exported: it is a loop of decoder steps with a
cache around the graphs, which the runtime here does not implement.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modaltune.export.registry import Graph, Items, NotExported, OnnxExporter, register_onnx
from modaltune.models.base import backbone_of, hf_config
from modaltune.tasks import vl
from modaltune.tasks.vqa import MAX_QUESTION_TOKENS

if TYPE_CHECKING:
    from modaltune.export.onnx_predict import OnnxRuntime
    from modaltune.tasks.base import Loaded, Task

_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
_GENERATION = ("is not exported to ONNX: its text is generated token by token (an image encoder, then a "
               "decoder run once per token with a cache), a loop this runtime does not implement. Serve the "
               "PyTorch run (`modaltune serve RUN`), or export its base model with Hugging Face optimum "
               "(`optimum-cli export onnx`), whose image-to-text layout covers encoder-decoder captioners")


class _Vilt(nn.Module):
    """ViLT for an unpadded image: every pixel is real (``pixel_mask`` all ones)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone: Any = backbone  # ViltForQuestionAnswering

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.ones(pixel_values.shape[0], pixel_values.shape[2], pixel_values.shape[3], dtype=torch.long,
                          device=pixel_values.device)
        pooled = self.backbone.vilt(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                    pixel_values=pixel_values, pixel_mask=mask).pooler_output
        return self.backbone.classifier(pooled).float(), pooled.float()


def _visual_embed_in_order(self: Any, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                           max_image_length: int = -1) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``ViltEmbeddings.visual_embed`` for an unpadded image, patches in order instead of shuffled:
    the same position embeddings (interpolated to the image's patch grid) on the same patches."""
    x = self.patch_embeddings(pixel_values)
    batch, channels, height, width = x.shape
    grid = self.config.image_size // self.config.patch_size
    spatial = self.position_embeddings[:, 1:, :].transpose(1, 2).view(1, channels, grid, grid)
    position = F.interpolate(spatial, size=(height, width), mode="bilinear", align_corners=True)
    position = position.flatten(2).transpose(1, 2).expand(batch, -1, -1)
    x = torch.cat((self.cls_token.expand(batch, -1, -1), x.flatten(2).transpose(1, 2)), dim=1)
    position = torch.cat((self.position_embeddings[:, 0, :][:, None, :].expand(batch, -1, -1), position), dim=1)
    x = self.dropout(x + position)
    return x, torch.ones(x.shape[:2], dtype=torch.long, device=x.device), None


def _question_length(loaded: Loaded) -> int:
    return min(MAX_QUESTION_TOKENS, vl.text_positions(backbone_of(loaded.model), loaded.processor.tokenizer))


def vilt_inputs(processor: Any, items: Items, max_length: int) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    """Groups of item indices whose images have one size, with the graph's inputs for each group
    (the questions of a group padded to its longest, as the task's collate pads a batch)."""
    pixels = [processor.image_processor(images=[media["image"]], return_tensors="np")["pixel_values"][0]
              for _, media in items]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(pixels):
        groups.setdefault(tuple(p.shape), []).append(i)
    out = []
    for indices in groups.values():
        tokens = processor.tokenizer([items[i][0].question or "" for i in indices], padding="longest",
                                     truncation=True, max_length=max_length, return_tensors="np")
        feeds = {k: tokens[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        feeds["pixel_values"] = np.stack([pixels[i] for i in indices])
        out.append((indices, feeds))
    return out


@register_onnx
class VqaExporter(OnnxExporter):
    task = "vqa"

    def unsupported(self, task: Task, loaded: Loaded) -> str | None:
        mode = loaded.state.get("mode")
        backbone = vl.hf_model(backbone_of(loaded.model))
        if mode != "classifier":
            return f"generative VQA ({hf_config(backbone).model_type}) {_GENERATION}"
        if not hasattr(backbone, "vilt"):
            return (f"VQA classifier {type(backbone).__name__}: only ViLT's graph is exported (other "
                    "classifiers have no exporter yet)")
        length = getattr(hf_config(backbone), "max_image_length", -1)
        if isinstance(length, int) and length > 0:
            return (f"ViLT with max_image_length {length} keeps a random subset of the patches of a larger "
                    "image, so its answers are random draws; set max_image_length to -1 to export it")
        return None

    def graphs(self, task: Task, loaded: Loaded, items: Items) -> list[Graph]:
        backbone: Any = vl.hf_model(backbone_of(loaded.model))
        length = _question_length(loaded)
        groups = vilt_inputs(loaded.processor, items, length)
        # The largest group of same-size images traces; a single image of it is checked too.
        indices, feeds = max(groups, key=lambda group: len(group[0]))
        one = vilt_inputs(loaded.processor, [items[indices[-1]]], length)[0][1]
        samples = [{k: torch.from_numpy(v[:3]) for k, v in feeds.items()},
                   {k: torch.from_numpy(v) for k, v in one.items()}]
        samples += [{k: torch.from_numpy(v) for k, v in f.items()} for ix, f in groups if ix != indices]
        embeddings = backbone.vilt.embeddings

        @contextmanager
        def in_order() -> Iterator[None]:
            embeddings.visual_embed = types.MethodType(_visual_embed_in_order, embeddings)
            try:
                yield
            finally:
                del embeddings.visual_embed

        return [Graph("vqa", _Vilt(backbone), _INPUTS, ("logits", "image_embeds"),
                      {"input_ids": (0, 1), "attention_mask": (0, 1), "token_type_ids": (0, 1),
                       "pixel_values": (0, 2, 3)}, samples, patch=in_order)]

    def state(self, task: Task, loaded: Loaded) -> dict[str, Any]:
        return {**loaded.state, "question_max_length": _question_length(loaded)}

    def sample_rows(self, loaded: Loaded) -> Items:
        from PIL import Image

        from modaltune.data.rows import Row

        rng = np.random.default_rng(0)
        questions = ["what colour is it?", "is there a circle in the picture?", "how many?", "what shape?"]
        return [(Row(id=f"synthetic-{i}", question=q),
                 {"image": Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))})
                for i, q in enumerate(questions)]

    def run(self, runtime: OnnxRuntime, items: Items, options: dict[str, Any]) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray | None]] = {"logits": [None] * len(items), "image_embeds": [None] * len(items)}
        for indices, feeds in vilt_inputs(runtime.processor, items, runtime.state["question_max_length"]):
            out = runtime.run_graph("vqa", feeds)
            for key in parts:
                for row, value in zip(indices, out[key]):
                    parts[key][row] = value
        return {key: np.stack(values) for key, values in parts.items()}  # type: ignore[arg-type]


@register_onnx
class CaptionExporter(NotExported):
    task = "caption"
    reason = f"captioning (BLIP, GIT) {_GENERATION}"
