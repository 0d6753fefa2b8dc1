"""Image captioning with image-to-text generators (BLIP, GIT and other `AutoModelForImageTextToText`
models whose processor takes images and text): teacher-forced training, beam-search generation,
BLEU / CIDEr / ROUGE-L."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from modaltune.config.task_options import GenerationOptions
from modaltune.data.fields import IMAGE, TEXT
from modaltune.data.rows import Row
from modaltune.errors import ConfigError
from modaltune.models.base import backbone_of, hf_config
from modaltune.tasks import vl
from modaltune.tasks.base import BackboneModel, Loaded, ModelOptions, register

DEFAULT_MAX_NEW_TOKENS = 30
MAX_TEXT_TOKENS = 64


@register("caption")
class CaptionTask(vl.StackedBlocksTask):
    family = "caption"
    fields = (IMAGE, TEXT.named("caption", "empty_caption"))
    primary_metric = "cider"
    uses_labels = False
    feature_output = "image_embeds"
    auto_classes = ("AutoModelForImageTextToText",)
    default_max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    Options = GenerationOptions

    def __init__(self, num_beams: int | None = None, max_new_tokens: int | None = None, **options: Any) -> None:
        vl.check_generation(num_beams, max_new_tokens)
        # The user's generation settings; None: those the model was saved with, else the defaults.
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.options = options

    # ---- model -------------------------------------------------------------------------------

    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False,
             options: ModelOptions | None = None) -> Loaded:
        backbone, processor = vl.load_pretrained(source, self.auto_classes, scratch=scratch,
                                                 trust_remote_code=trust_remote_code, task=self.name,
                                                 options=options)
        if not vl.hf_model(backbone).can_generate():
            raise ConfigError(f"model {source!r} ({type(backbone).__name__}) cannot generate text; "
                              "captioning needs an image-to-text generator such as BLIP or GIT")
        generation = self._generation(vl.saved_state(source))
        vl.check_generation_room(backbone, processor.tokenizer, generation.max_new_tokens)
        return Loaded(model=BackboneModel(backbone), processor=processor,
                      state={"generation": generation.state()})

    def _generation(self, saved: dict[str, Any]) -> vl.Generation:
        return vl.Generation.resolve(self.num_beams, self.max_new_tokens, saved, self.default_max_new_tokens)

    def attach(self, other: Loaded) -> Loaded:
        # Scoring another captioning model: this task's own generation settings, else the defaults.
        return Loaded(model=other.model, processor=other.processor, meta=dict(other.meta),
                      media_options=dict(other.media_options), state={"generation": self._generation({}).state()})

    # ---- data --------------------------------------------------------------------------------

    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> dict[str, torch.Tensor]:
        processor = loaded.processor
        batch = {"pixel_values": processor.image_processor(images=[media["image"] for _, media in items],
                                                           return_tensors="pt")["pixel_values"]}
        texts = [row.text or "" for row, _ in items]
        if all(texts):
            backbone = backbone_of(loaded.model)
            tokens = vl.special_tokens(backbone, processor.tokenizer)
            # Start and end token around the caption, all within the model's text positions.
            limit = min(MAX_TEXT_TOKENS, vl.text_positions(backbone, processor.tokenizer) - 2)
            targets = [ids + [tokens.eos] for ids in vl.text_ids(processor.tokenizer, texts, limit)]
            batch.update(vl.prefix_lm_batch([[tokens.bos]] * len(items), targets, tokens))
        return batch

    def eval_rows(self, rows: list[Row]) -> list[Row]:
        """One row per image, its captions as references (COCO gives five per image)."""
        grouped: OrderedDict[Any, list[Row]] = OrderedDict()
        for row in rows:
            grouped.setdefault(row.image, []).append(row)
        return [Row(id=group[0].id, image=group[0].image, text=group[0].text,
                    extra={**group[0].extra, "references": _references(group)}) for group in grouped.values()]

    # ---- training and inference --------------------------------------------------------------

    def loss(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask", "labels")}
        return backbone_of(loaded.model)(**inputs).loss

    def outputs(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        backbone = backbone_of(loaded.model)
        generation = vl.Generation.of(loaded)
        pixel_values = batch["pixel_values"]
        tokens = vl.special_tokens(backbone, loaded.processor.tokenizer)
        n = pixel_values.shape[0]
        kwargs = generation.kwargs()
        if hf_config(vl.hf_model(backbone)).model_type != "blip":
            # BLIP starts its decoder itself; others continue the start token given as a prompt.
            kwargs["input_ids"] = torch.full((n, 1), tokens.bos, dtype=torch.long, device=pixel_values.device)
        generated = vl.generate(backbone, pixel_values=pixel_values, **kwargs)
        # Both layouts return the start token first: the caption is what follows it.
        sequences = [seq[1:] for seq in generated]
        return {"generated": vl.pad_generated(sequences, generation.max_new_tokens + 1),
                "image_embeds": vl.image_embedding(backbone, pixel_values)}

    def captions(self, loaded: Loaded, outputs: dict[str, torch.Tensor]) -> list[str]:
        tokens = vl.special_tokens(backbone_of(loaded.model), loaded.processor.tokenizer)
        return vl.decode(loaded.processor.tokenizer, outputs["generated"], tokens)

    def evaluate(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> dict[str, Any]:
        from modaltune.metrics import caption_metrics

        captions = self.captions(loaded, outputs)
        predictions: dict[str, str] = {}
        references: dict[str, list[str]] = {}
        for row, caption in zip(rows, captions):
            key = str(row.image)
            predictions.setdefault(key, caption)  # an image is captioned once, whatever its rows
            references.setdefault(key, []).extend(_references([row]))
        metrics: dict[str, Any] = dict(caption_metrics(predictions, references))
        metrics["samples"] = [{"id": row.id, "image": str(row.image), "prediction": caption,
                               "references": references[str(row.image)]}
                              for row, caption in list(zip(rows, captions))[:8]]
        return metrics

    def predict(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> list[dict]:
        return [{"input": row.id, "caption": caption} for row, caption in zip(rows, self.captions(loaded, outputs))]

    @classmethod
    def chance(cls, rows: list[Row]) -> float:
        return 0.0  # a model that knows nothing shares no n-grams with the references

    # ---- strategies --------------------------------------------------------------------------

    def probe_parameters(self, loaded: Loaded) -> list[str]:
        return vl.output_head_prefixes(backbone_of(loaded.model))


def _references(rows: list[Row]) -> list[str]:
    """The rows' reference captions: a grouped row's list, else each row's own caption.

    Identical captions by two annotators both count, as in the official evaluation (CIDEr-D
    averages over references, so dropping a duplicate changes the score).
    """
    refs: list[str] = []
    for row in rows:
        if "references" in row.extra:
            refs.extend(row.extra["references"])
        elif row.text:
            refs.append(row.text)
    return refs
