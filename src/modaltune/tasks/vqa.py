"""Visual question answering, two ways, behind one task:

* **classifier** (ViLT, ``ViltForQuestionAnswering``): answers are labels. The vocabulary is the
  model's own answers plus every (normalised) answer of the training data; new answers get new
  rows in the classifier's last layer, so the base model's answers keep working. Several annotator
  answers become soft targets (VQA's min(count / 3, 1)); an evaluation answer outside the
  vocabulary cannot be predicted, and ``unknown_answer_rate`` says how often that happens.
* **generative** (BLIP VQA: question encoder + answer decoder; or any image-text-to-text model that
  continues a prompt, e.g. GIT): the answer is generated text; training is teacher-forced on the
  most common annotator answer.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modaltune.config.task_options import GenerationOptions
from modaltune.data.fields import ANSWERS, IMAGE, QUESTION
from modaltune.data.rows import Row
from modaltune.errors import ConfigError
from modaltune.models.base import backbone_of, hf_config
from modaltune.tasks import vl
from modaltune.tasks.base import BackboneModel, Loaded, ModelOptions, register

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MAX_QUESTION_TOKENS = 40
MAX_ANSWER_TOKENS = 16


def _normalize(answer: str) -> str:
    from modaltune.metrics import normalize_vqa_answer

    return normalize_vqa_answer(answer)


def majority_answer(answers: tuple[str, ...] | list[str]) -> str:
    """The most common annotator answer (after normalisation; the first such as written)."""
    counts = Counter(_normalize(a) for a in answers)
    top = max(counts.values())
    return next(a for a in answers if counts[_normalize(a)] == top)


def _row_answers(row: Row) -> tuple[str, ...]:
    """A row's annotator answers; none for a question asked without them (prediction)."""
    return tuple(row.answers or ())


def soft_scores(answers: tuple[str, ...] | list[str]) -> dict[str, float]:
    """VQA soft target per normalised answer: min(count / min(3, #answers), 1) — the metric's rule."""
    counts = Counter(_normalize(a) for a in answers)
    need = min(3, len(answers))
    return {a: min(c / need, 1.0) for a, c in counts.items()}


@register("vqa")
class VqaTask(vl.StackedBlocksTask):
    family = "vqa"
    fields = (IMAGE, QUESTION, ANSWERS)
    primary_metric = "vqa_accuracy"
    uses_labels = False
    feature_output = "image_embeds"
    auto_classes = ("AutoModelForVisualQuestionAnswering", "AutoModelForImageTextToText")
    default_max_new_tokens = 10
    Options = GenerationOptions

    def __init__(self, train_answers: list[str] | None = None, num_beams: int | None = None,
                 max_new_tokens: int | None = None, **options: Any) -> None:
        vl.check_generation(num_beams, max_new_tokens)
        #: Normalised answers of the training data, merged into a classifier's vocabulary.
        self.train_answers = list(train_answers) if train_answers else []
        # The user's generation settings; None: those the model was saved with, else the defaults.
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.options = options
        # What a loaded model adds (its head mode, the classifier's answer vocabulary in id order, the
        # resolved generation settings) is that model's ``Loaded.state``, never this object's.

    @classmethod
    def options_from_rows(cls, rows: list[Row]) -> dict[str, Any]:
        # An answer that normalises to nothing ("a", "the") cannot be a class of its own.
        answers = {_normalize(a) for row in rows for a in row.answers or ()}
        return {"train_answers": sorted(a for a in answers if a)}

    # ---- model -------------------------------------------------------------------------------

    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False,
             options: ModelOptions | None = None) -> Loaded:
        backbone, processor = vl.load_pretrained(source, self.auto_classes, scratch=scratch,
                                                 trust_remote_code=trust_remote_code, task=self.name,
                                                 options=options)
        model = vl.hf_model(backbone)
        mode = _mode_of(model, source)
        # A saved model's vocabulary is its config's labels (the training answers already among them).
        state: dict[str, Any] = {"mode": mode}
        if mode == "classifier":
            state["answers"] = _merge_vocabulary(model, self.train_answers)
        generation = self._generation(vl.saved_state(source))
        state["generation"] = generation.state()
        if mode != "classifier":
            vl.check_generation_room(backbone, processor.tokenizer, generation.max_new_tokens)
        return Loaded(model=BackboneModel(backbone), processor=processor, state=state)

    def _generation(self, saved: dict[str, Any]) -> vl.Generation:
        return vl.Generation.resolve(self.num_beams, self.max_new_tokens, saved, self.default_max_new_tokens)

    def attach(self, other: Loaded) -> Loaded:
        # The other model's head (mode and vocabulary) with this task's generation settings, else the defaults.
        state: dict[str, Any] = {key: other.state[key] for key in ("mode", "answers") if key in other.state}
        state["generation"] = self._generation({}).state()
        return Loaded(model=other.model, processor=other.processor, meta=dict(other.meta),
                      media_options=dict(other.media_options), state=state)

    # ---- data --------------------------------------------------------------------------------

    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> dict[str, torch.Tensor]:
        processor = loaded.processor
        images = [media["image"] for _, media in items]
        questions = [row.question or "" for row, _ in items]
        answers = [_row_answers(row) for row, _ in items]
        labelled = all(answers)
        backbone = backbone_of(loaded.model)
        mode = _mode(loaded)
        positions = vl.text_positions(backbone, processor.tokenizer)
        answer_limit = min(MAX_ANSWER_TOKENS, positions // 4)
        if mode == "prefix-lm":
            # Question and answer share the positions: leave the answer (and start/end tokens) room.
            question_limit = min(MAX_QUESTION_TOKENS, positions - answer_limit - 2)
            tokens = vl.special_tokens(backbone, processor.tokenizer)
            prompts = [[tokens.bos] + ids for ids in vl.text_ids(processor.tokenizer, questions, question_limit)]
            targets = None
            if labelled:
                targets = [ids + [tokens.eos] for ids in vl.text_ids(
                    processor.tokenizer, [majority_answer(a) for a in answers], answer_limit)]
            batch = vl.prefix_lm_batch(prompts, targets, tokens)
            batch["pixel_values"] = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
            return batch
        batch = dict(processor(images=images, text=questions, padding="longest", truncation=True,
                               max_length=min(MAX_QUESTION_TOKENS, positions), return_tensors="pt"))
        if labelled and mode == "classifier":
            vocabulary = _answers(loaded)
            index = _answer_index(vocabulary)
            soft = torch.zeros(len(items), len(vocabulary))
            for i, row_answers in enumerate(answers):
                for answer, score in soft_scores(row_answers).items():
                    if answer in index:
                        soft[i, index[answer]] = score
            batch["labels"] = soft
        elif labelled:  # BLIP: the answer decoder starts at bos and stops at [SEP]
            tokens = vl.special_tokens(backbone, processor.tokenizer)
            ids = [[tokens.bos] + t + [tokens.eos] for t in vl.text_ids(
                processor.tokenizer, [majority_answer(a) for a in answers], answer_limit)]
            padded = vl.prefix_lm_batch(ids, None, tokens)
            batch["decoder_input_ids"] = padded["input_ids"]
            batch["decoder_attention_mask"] = padded["attention_mask"]
            batch["labels"] = padded["input_ids"].masked_fill(padded["attention_mask"] == 0, -100)
        return batch

    # ---- training and inference --------------------------------------------------------------

    def loss(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return backbone_of(loaded.model)(**batch).loss

    def outputs(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        backbone = backbone_of(loaded.model)
        model = vl.hf_model(backbone)
        mode = _mode(loaded)
        pixel_values = batch["pixel_values"]
        if mode == "classifier":
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            pooled = model.get_submodule("vilt")(**inputs).pooler_output if hasattr(model, "vilt") else None
            if pooled is None:
                return {"logits": backbone(**inputs).logits.float(),
                        "image_embeds": vl.image_embedding(backbone, pixel_values)}
            return {"logits": model.get_submodule("classifier")(pooled).float(), "image_embeds": pooled.float()}
        generation = vl.Generation.of(loaded)
        kwargs = generation.kwargs()
        width = generation.max_new_tokens + 1
        if mode == "blip":
            generated = vl.generate(backbone, input_ids=batch["input_ids"], pixel_values=pixel_values,
                                    attention_mask=batch["attention_mask"], **kwargs)
            sequences = [seq[1:] for seq in generated]  # drop the decoder's start token
        else:
            sequences = self._generate_after_prompts(backbone, batch, kwargs)
        return {"generated": vl.pad_generated(sequences, width),
                "image_embeds": vl.image_embedding(backbone, pixel_values)}

    @staticmethod
    def _generate_after_prompts(backbone: nn.Module, batch: dict[str, torch.Tensor],
                                kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """Questions of equal length generate together, so no prompt needs padding (which not every
        prefix-LM handles exactly); the output after each prompt is the answer."""
        lengths = batch["attention_mask"].sum(1).tolist()
        sequences: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(lengths)
        for length in sorted(set(lengths)):
            rows = [i for i, n in enumerate(lengths) if n == length]
            ids = batch["input_ids"][rows, :length]
            room = vl.text_positions(backbone, None) - length  # a long question leaves less room
            out = vl.generate(backbone, pixel_values=batch["pixel_values"][rows], input_ids=ids,
                              attention_mask=torch.ones_like(ids),
                              **{**kwargs, "max_new_tokens": max(1, min(kwargs["max_new_tokens"], room))})
            for i, seq in zip(rows, out):
                sequences[i] = seq[length:]
        return sequences

    def answers_of(self, loaded: Loaded, outputs: dict[str, torch.Tensor]) -> list[str]:
        if _mode(loaded) == "classifier":
            from modaltune.metrics import top_indices

            vocabulary = _answers(loaded)
            # The same ranking as predict()'s list, so its first answer is the one scored here.
            return [vocabulary[i] for i in top_indices(outputs["logits"].float(), 1)[:, 0].tolist()]
        tokens = vl.special_tokens(backbone_of(loaded.model), loaded.processor.tokenizer)
        return vl.decode(loaded.processor.tokenizer, outputs["generated"], tokens)

    def evaluate(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> dict[str, Any]:
        from modaltune.metrics import VQA_RULE, vqa_accuracy_official, vqa_metrics

        predictions = self.answers_of(loaded, outputs)
        answers = [list(_row_answers(r)) for r in rows]
        metrics: dict[str, Any] = vqa_metrics(predictions, answers)
        # Percent with 2 decimals, rounded as the official script reports it.
        metrics["vqa_accuracy_official"] = vqa_accuracy_official(predictions, answers)
        metrics["vqa_rule"] = VQA_RULE
        if _mode(loaded) == "classifier":
            vocabulary = set(_answer_index(_answers(loaded)))
            unknown = sum(1 for r in rows if not any(_normalize(a) in vocabulary for a in _row_answers(r)))
            # Questions whose every answer is outside the vocabulary: no prediction can score on them.
            metrics["unknown_answer_rate"] = round(unknown / max(1, len(rows)), 6)
        metrics["samples"] = [{"id": r.id, "image": str(r.image), "question": r.question, "prediction": p,
                               "references": list(dict.fromkeys(_row_answers(r)))}
                              for r, p in list(zip(rows, predictions))[:8]]
        return metrics

    def predict(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> list[dict]:
        from modaltune.metrics import top_indices

        answers = self.answers_of(loaded, outputs)
        vocabulary = _answers(loaded) if _mode(loaded) == "classifier" else None
        results = []
        for i, (row, answer) in enumerate(zip(rows, answers)):
            result: dict[str, Any] = {"input": row.id, "question": row.question, "answer": answer}
            if vocabulary is not None:
                logits = outputs["logits"][i].float()
                probs = logits.sigmoid()
                # Ranked by the logits (sigmoid saturates to equal scores) with answers_of's rule.
                top = top_indices(logits, min(5, len(vocabulary))).tolist()
                result["score"] = round(float(probs[top[0]]), 6)
                result["top"] = [{"answer": vocabulary[j], "score": round(float(probs[j]), 6)} for j in top]
            results.append(result)
        return results

    @classmethod
    def chance(cls, rows: list[Row]) -> float:
        """What answering every question with the most common answer scores (the answer prior)."""
        from modaltune.metrics import vqa_metrics

        if not rows:
            return 0.0
        common = Counter(_normalize(majority_answer(_row_answers(r))) for r in rows).most_common(1)[0][0]
        return float(vqa_metrics([common] * len(rows), [list(_row_answers(r)) for r in rows])["vqa_accuracy"])

    # ---- strategies --------------------------------------------------------------------------

    def probe_parameters(self, loaded: Loaded) -> list[str]:
        if _mode(loaded) == "classifier":
            return ["backbone.classifier."]
        return vl.output_head_prefixes(backbone_of(loaded.model))

    def lora_modules_to_save(self, loaded: Loaded) -> list[str]:
        """A classifier's answer head trains beside the adapters: new answers have no other weights."""
        return ["classifier"] if _mode(loaded) == "classifier" else []


# ---- the head a model has, and its state ----------------------------------------------------------

#: How a model answers: "classifier" (scores a fixed vocabulary), "blip" (BLIP's question encoder and
#: answer decoder) or "prefix-lm" (continues the question with the answer).
MODES = ("classifier", "blip", "prefix-lm")


def _mode_of(model: PreTrainedModel, source: str | Path) -> str:
    """The head ``model`` answers with, read from its structure."""
    if hasattr(model, "classifier") and not model.can_generate():
        return "classifier"
    if hf_config(model).model_type == "blip" and hasattr(model, "text_encoder"):
        return "blip"
    if model.can_generate():
        return "prefix-lm"
    raise ConfigError(f"model {source!r} ({type(model).__name__}) neither classifies answers nor "
                      "generates text; vqa supports ViLT-style classifiers and image-text generators")


def _mode(loaded: Loaded) -> str:
    mode = vl.state_entry(loaded, "mode")
    if mode not in MODES:
        raise ConfigError(f"unknown vqa head mode {mode!r} in the model's task state; expected one of {MODES}")
    return str(mode)


def _answers(loaded: Loaded) -> list[str]:
    """A classifier's answer vocabulary, in class-id order."""
    return list(vl.state_entry(loaded, "answers"))


def _answer_index(answers: list[str]) -> dict[str, int]:
    """Normalised answer -> class id (a model label written "Red" is the answer "red")."""
    index: dict[str, int] = {}
    for i, answer in enumerate(answers):
        index.setdefault(_normalize(answer), i)
    return index


@torch.no_grad()
def _merge_vocabulary(model: PreTrainedModel, train_answers: list[str]) -> list[str]:
    """The vocabulary of ``model``'s classifier: its answers, then the training answers it lacks,
    which get new rows of the last layer (``model`` and its config grow in place)."""
    config = hf_config(model)
    # Labels in id order (transformers gives id2label int keys; a hand-written config may have strings).
    labels = [label for _, label in sorted((int(i), str(label)) for i, label in (config.id2label or {}).items())]
    known = {_normalize(label) for label in labels}
    new = [a for a in train_answers if a not in known]
    answers = labels + new
    if not new:
        return answers
    classifier = model.get_submodule("classifier")
    last = classifier[-1] if isinstance(classifier, nn.Sequential) else classifier
    if not isinstance(last, nn.Linear):
        raise ConfigError(f"{type(model).__name__}: the answer classifier does not end in a linear layer, "
                          "so new answers cannot be added")
    grown = nn.Linear(last.in_features, len(answers), device=last.weight.device, dtype=last.weight.dtype)
    std = getattr(config, "initializer_range", 0.02)
    grown.weight.normal_(0.0, std)
    grown.weight[: last.out_features] = last.weight
    # New answers start as likely as the average known one, not at sigmoid(0) = 0.5 above all of them.
    grown.bias.fill_(float(last.bias.mean()))
    grown.bias[: last.out_features] = last.bias
    if isinstance(classifier, nn.Sequential):
        classifier[-1] = grown
    else:
        model.set_submodule("classifier", grown)
    config.id2label = dict(enumerate(answers))
    config.label2id = {a: i for i, a in enumerate(answers)}
    config.num_labels = len(answers)
    return answers
