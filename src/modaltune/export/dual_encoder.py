"""ONNX export of the dual encoders (CLIP, SigLIP, CLAP): ``classify`` and ``retrieve``.

Two graphs each. ``media``: the media inputs the model's adapter makes (``pixel_values``, or CLAP's
``input_features`` + ``is_longer``) → the normalised embedding, and for ``classify`` the logits of the
trained head on it (the head is the label embedding matrix, so the run's own labels need no text
tower). ``text``: token ids + mask → the normalised text embedding, for ranking new texts (retrieve's
``--texts``) or classifying over new labels zero-shot (``--labels``: prompts × the logit scale, as
the PyTorch task builds its head).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from modaltune.export.registry import Graph, Items, OnnxExporter, register_onnx
from modaltune.models.base import adapter_for_type, backbone_of, hf_config
from modaltune.models.dual_encoder import ClipAdapter, DualEncoderAdapter, dual_encoder_adapter
from modaltune.tasks.base import unwrap

if TYPE_CHECKING:
    from modaltune.export.onnx_predict import OnnxRuntime
    from modaltune.tasks.base import Loaded, Task

#: Dynamic axes: the batch everywhere, and the token axis of text.
_TEXT_AXES = {"input_ids": (0, 1), "attention_mask": (0, 1)}


class _Media(nn.Module):
    """Media inputs (positional, in the adapter's ``media_keys`` order) → (logits?, embedding)."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...], adapter: DualEncoderAdapter, head: bool) -> None:
        super().__init__()
        self.model: Any = model  # a DualEncoderClassifier (embed, head) or the plain backbone
        self.keys, self.adapter, self.head = keys, adapter, head

    def forward(self, *media: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = dict(zip(self.keys, media))
        if self.head:  # DualEncoderClassifier: its own embed + head, as ClassifyTask.outputs runs them
            embeds = self.model.embed(**inputs)
            return self.model.head(embeds).float(), embeds.float()
        return (self.adapter.media_features(self.model, inputs).float(),)


class _Text(nn.Module):
    def __init__(self, backbone: nn.Module, adapter: DualEncoderAdapter) -> None:
        super().__init__()
        self.backbone, self.adapter = backbone, adapter

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.adapter.text_features(self.backbone, {"input_ids": input_ids, "attention_mask": attention_mask})


def _runtime_adapter(meta_state: dict[str, Any]) -> DualEncoderAdapter:
    """The adapter of the exported model's type: it makes the media inputs exactly as in training.
    A CLIP-style type without an adapter of its own takes CLIP's inputs (as in training)."""
    adapter = adapter_for_type(meta_state["model_type"])
    return adapter if isinstance(adapter, DualEncoderAdapter) else ClipAdapter()


class _DualEncoderExporter(OnnxExporter):
    media_head = False  # classify adds its head's logits to the media graph

    def _parts(self, loaded: Loaded) -> tuple[nn.Module, DualEncoderAdapter]:
        plain = unwrap(backbone_of(loaded.model))
        return plain, dual_encoder_adapter(plain)

    def _texts(self, task: Task, loaded: Loaded) -> list[str]:
        """Texts for the text graph's samples."""
        return ["a photo", "the sound of a bird singing in the morning", "a cat"]

    def graphs(self, task: Task, loaded: Loaded, items: Items) -> list[Graph]:
        plain, adapter = self._parts(loaded)
        kind = adapter.media_kind
        media = [values[kind] for _, values in items]
        three = adapter.media_inputs(loaded.processor, media[:3])
        one = adapter.media_inputs(loaded.processor, media[-1:])
        keys = tuple(k for k in adapter.media_keys if k in three)
        model = loaded.model if self.media_head else backbone_of(loaded.model)
        outputs = ("logits", "media_embeds") if self.media_head else ("media_embeds",)
        texts = self._texts(task, loaded)
        while len(texts) < 3:
            texts = texts + texts
        # Three texts and then one of another length: the token axis must stay dynamic.
        text_samples = [adapter.text_inputs(loaded.processor, plain, texts[:3]),
                        adapter.text_inputs(loaded.processor, plain, [texts[0] + " " + texts[-1]])]
        return [
            Graph("media", _Media(model, keys, adapter, self.media_head), keys, outputs,
                  {key: (0,) for key in keys}, [{k: three[k] for k in keys}, {k: one[k] for k in keys}]),
            Graph("text", _Text(backbone_of(loaded.model), adapter), ("input_ids", "attention_mask"),
                  ("text_embeds",), _TEXT_AXES,
                  [{k: s[k] for k in ("input_ids", "attention_mask")} for s in text_samples]),
        ]

    @torch.no_grad()
    def state(self, task: Task, loaded: Loaded) -> dict[str, Any]:
        plain, adapter = self._parts(loaded)
        return {**loaded.state, "model_type": hf_config(plain).model_type, "media_kind": adapter.media_kind,
                "logit_scale": float(adapter.logit_scale(plain)), "text_padding": adapter.text_padding,
                "text_max_length": adapter.text_max_length(loaded.processor, plain)}

    def sample_rows(self, loaded: Loaded) -> Items:
        from modaltune.data.rows import Row

        _, adapter = self._parts(loaded)
        rng = np.random.default_rng(0)
        if adapter.media_kind == "audio":
            rate = int(adapter.media_options(loaded.processor)["sampling_rate"])
            values: list[Any] = [(0.1 * rng.standard_normal(rate)).astype(np.float32) for _ in range(4)]
        else:
            from PIL import Image

            values = [Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(4)]
        return [(Row(id=f"synthetic-{i}"), {adapter.media_kind: v}) for i, v in enumerate(values)]

    # ---- runtime -----------------------------------------------------------------------------

    def _media_embeds(self, runtime: OnnxRuntime, items: Items) -> dict[str, np.ndarray]:
        state = runtime.state
        adapter = _runtime_adapter(state)
        inputs = adapter.media_inputs(runtime.processor, [media[state["media_kind"]] for _, media in items])
        return runtime.run_graph("media", inputs)

    def text_embeds(self, runtime: OnnxRuntime, texts: list[str]) -> np.ndarray:
        state = runtime.state
        tokens = runtime.processor.tokenizer(texts, padding=state["text_padding"], truncation=True,
                                             max_length=state["text_max_length"], return_tensors="np")
        return runtime.run_graph("text", dict(tokens))["text_embeds"]


@register_onnx
class ClassifyExporter(_DualEncoderExporter):
    task = "classify"
    media_head = True

    def _texts(self, task: Task, loaded: Loaded) -> list[str]:
        return [loaded.state["prompt_template"].format(label) for label in loaded.state["labels"]]

    def _labels(self, runtime: OnnxRuntime, options: dict[str, Any]) -> list[str]:
        return list(options.get("labels") or runtime.state["labels"])

    def run(self, runtime: OnnxRuntime, items: Items, options: dict[str, Any]) -> dict[str, np.ndarray]:
        out = self._media_embeds(runtime, items)
        labels = self._labels(runtime, options)
        if labels != runtime.state["labels"]:
            # Other labels than the run's: the zero-shot head from their prompts (ClassifyTask.load does so).
            prompts = [runtime.state["prompt_template"].format(label) for label in labels]
            weight = runtime.state["logit_scale"] * self.text_embeds(runtime, prompts)
            out["logits"] = out["media_embeds"] @ weight.T
        return out

    def task_options(self, runtime: OnnxRuntime, options: dict[str, Any]) -> dict[str, Any]:
        return {"labels": self._labels(runtime, options)}

    def predict(self, runtime: OnnxRuntime, outputs: dict[str, np.ndarray], rows: list[Any],
                options: dict[str, Any]) -> list[dict]:
        task, loaded = runtime.task_and_state(options, labels=self._labels(runtime, options))
        return cast(list[dict], task.predict(loaded, {k: torch.from_numpy(v) for k, v in outputs.items()}, rows))


@register_onnx
class RetrieveExporter(_DualEncoderExporter):
    task = "retrieve"

    def run(self, runtime: OnnxRuntime, items: Items, options: dict[str, Any]) -> dict[str, np.ndarray]:
        out = self._media_embeds(runtime, items)
        texts = [row.text for row, _ in items]
        if all(texts):  # scoring: each row's own caption
            out["text_embeds"] = self.text_embeds(runtime, cast(list[str], texts))
        return out

    def predict(self, runtime: OnnxRuntime, outputs: dict[str, np.ndarray], rows: list[Any],
                options: dict[str, Any]) -> list[dict]:
        """RetrieveTask.predict's ranking, with the candidate texts through the text graph."""
        from modaltune.metrics import top_indices

        texts = options.get("texts")
        media = torch.from_numpy(outputs["media_embeds"])
        if not texts:
            return [{"input": row.id, "embedding": emb.tolist()} for row, emb in zip(rows, media)]
        text = torch.from_numpy(self.text_embeds(runtime, list(texts)))
        similarity = media @ text.T
        probs = (similarity * runtime.state["logit_scale"]).softmax(-1)
        results = []
        for row, p, order in zip(rows, probs, top_indices(similarity, 5).tolist()):
            ranked = [{"text": texts[i], "score": round(float(p[i]), 6)} for i in order]
            results.append({"input": row.id, "text": ranked[0]["text"], "score": ranked[0]["score"], "top": ranked})
        return results
