"""Tiny offline vision-language models: save/load round trip, training forward, generation, determinism.

Each test also pins down the input recipe the model needs (which keys, how labels are formed,
what `generate` returns), since the rest of the code relies on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageTextToText,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
    AutoTokenizer,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    GitForCausalLM,
    ViltForQuestionAnswering,
)

from modaltune.testing.tiny_vl import (
    BERT_SPECIALS,
    DEC,
    TinySize,
    _image_processor,
    build_blip_caption,
    build_blip_vqa,
    build_git_caption,
    build_vilt_vqa,
    build_wordpiece_tokenizer,
)

QUESTIONS = ["What colour is the shape?", "Is there a circle?", "How many squares are there?"]
ANSWERS = ["red", "blue", "yes", "no", "two", "a red circle"]
CAPTIONS = ["a red circle on the left", "a small blue square", "a photo of"]


@pytest.fixture(autouse=True)
def _offline_single_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # 32-wide matrices gain nothing from threads; on a busy 2-core machine, 2 threads made these
    # tests some 40x slower (each tiny op waits on the thread pool's hand-offs).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def images() -> list[Image.Image]:
    # Two sizes, so resizing (and ViLT's padding + pixel_mask) is exercised.
    return [Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 56), (0, 0, 255))]


def _load(out: Path, auto_class):
    processor = AutoProcessor.from_pretrained(out)
    model, info = auto_class.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return processor, model


def _built_class(name: str) -> type:
    """The image processor class the builders use (the PIL one here, where torchvision is missing)."""
    return type(_image_processor(name))


def _check_loss_and_grads(model, loss: torch.Tensor) -> None:
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _state(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


# --------------------------------------------------------------------------- tokenizer


def test_wordpiece_tokenizer_vocab_unknown_words_and_round_trip(tmp_path: Path) -> None:
    tok = build_wordpiece_tokenizer(QUESTIONS, tmp_path, max_length=24)
    vocab = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == list(BERT_SPECIALS)
    assert {"what", "colour", "shape", "?", ".", ","} <= set(vocab)
    assert len(vocab) == len(set(vocab)) == len(tok)
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id] == [0, 1, 2, 3]

    ids = tok("What  colour is the ZEBRA?")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "what", "colour", "is", "the", "[UNK]", "?", "[SEP]"]
    assert tok.decode(ids) == "[CLS] what colour is the [UNK]? [SEP]"
    assert tok.decode(ids, skip_special_tokens=True) == "what colour is the?"  # [UNK] is special too

    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is type(tok)
    assert reloaded("What colour is the ZEBRA?")["input_ids"] == ids
    assert reloaded.model_max_length == 24
    assert len(reloaded(" ".join(["shape"] * 50), truncation=True)["input_ids"]) == 24


def test_wordpiece_tokenizer_extra_bos_token(tmp_path: Path) -> None:
    tok = build_wordpiece_tokenizer(CAPTIONS, tmp_path, extra_special_tokens=[DEC], bos_token=DEC)
    assert tok.convert_tokens_to_ids(DEC) == 5 == tok.bos_token_id
    assert tok.decode([5, *tok("a red circle")["input_ids"]], skip_special_tokens=True) == "a red circle"
    with pytest.raises(ValueError, match="bos_token"):
        build_wordpiece_tokenizer(CAPTIONS, tmp_path, bos_token=DEC)


# --------------------------------------------------------------------------- ViLT


def test_vilt_vqa_reloads_trains(tmp_path: Path, images: list[Image.Image]) -> None:
    out = build_vilt_vqa(tmp_path / "vilt", texts=QUESTIONS, answers=ANSWERS)
    processor, model = _load(out, AutoModelForVisualQuestionAnswering)
    assert isinstance(model, ViltForQuestionAnswering)
    assert type(processor.image_processor) is _built_class("Vilt")
    assert model.config.id2label == dict(enumerate(ANSWERS))
    assert model.config.max_position_embeddings >= processor.tokenizer.model_max_length

    inputs = processor(images=images, text=QUESTIONS[:2], return_tensors="pt", padding=True, truncation=True)
    assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask", "pixel_values", "pixel_mask"}
    # Short side -> 32, sides rounded down to multiples of 8, padded to the batch's largest (40x56 is W x H).
    assert inputs["pixel_values"].shape == (2, 3, 40, 32)
    assert inputs["pixel_mask"].sum(dim=(1, 2)).tolist() == [32 * 32, 40 * 32]
    # Labels: soft scores [batch, num_labels] (float); the loss is BCE-with-logits x num_labels.
    labels = torch.zeros(2, len(ANSWERS))
    labels[0, ANSWERS.index("red")] = 1.0
    labels[1, ANSWERS.index("no")] = 0.6
    model.train()
    out_ = model(**inputs, labels=labels)
    assert out_.logits.shape == (2, len(ANSWERS))
    _check_loss_and_grads(model, out_.loss)


# --------------------------------------------------------------------------- BLIP


def test_blip_caption_reloads_trains_generates(tmp_path: Path, images: list[Image.Image]) -> None:
    out = build_blip_caption(tmp_path / "blip", texts=CAPTIONS)
    processor, model = _load(out, AutoModelForImageTextToText)
    assert isinstance(model, BlipForConditionalGeneration)
    assert type(processor.image_processor) is _built_class("Blip")
    tok, text_config = processor.tokenizer, model.config.text_config
    assert text_config.bos_token_id == tok.bos_token_id == tok.convert_tokens_to_ids(DEC)
    assert text_config.sep_token_id == tok.sep_token_id and text_config.pad_token_id == tok.pad_token_id
    # The LM head is tied to the decoder's word embeddings, as in the real checkpoint.
    decoder = model.text_decoder
    assert decoder.cls.predictions.decoder.weight is decoder.bert.embeddings.word_embeddings.weight

    inputs = processor(images=images, text=CAPTIONS[:2], return_tensors="pt", padding=True)
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}  # BlipProcessor drops token_type_ids
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    # Teacher forcing: the decoder starts from [DEC] (what generate feeds it); labels = the same ids
    # with padding -> -100; the model shifts them itself.
    input_ids = inputs["input_ids"].clone()
    input_ids[:, 0] = text_config.bos_token_id
    labels = input_ids.masked_fill(inputs["attention_mask"] == 0, -100)
    model.train()
    result = model(
        pixel_values=inputs["pixel_values"],
        input_ids=input_ids,
        attention_mask=inputs["attention_mask"],
        labels=labels,
    )
    assert result.logits.shape[:2] == input_ids.shape
    _check_loss_and_grads(model, result.loss)

    model.eval()
    generated = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=5)
    assert generated.shape[0] == 2 and generated.shape[1] <= 1 + 5
    assert (generated[:, 0] == text_config.bos_token_id).all()  # output = [DEC] + new tokens
    texts = processor.batch_decode(generated, skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) and DEC not in t for t in texts)
    # With a prompt: its [CLS] becomes [DEC], its final [SEP] is dropped, and the output repeats it.
    prompt = processor(images=images, text=["a photo of"] * 2, return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=5)
    prompt_len = prompt["input_ids"].shape[1] - 1
    assert generated[:, 1:prompt_len].tolist() == prompt["input_ids"][:, 1:-1].tolist()
    assert all(t.startswith("a photo of") for t in processor.batch_decode(generated, skip_special_tokens=True))


def test_blip_vqa_reloads_trains_generates(tmp_path: Path, images: list[Image.Image]) -> None:
    out = build_blip_vqa(tmp_path / "blipvqa", texts=QUESTIONS + ANSWERS)
    processor, model = _load(out, AutoModelForVisualQuestionAnswering)
    assert isinstance(model, BlipForQuestionAnswering)
    assert type(processor.image_processor) is _built_class("Blip")
    text_config = model.config.text_config
    assert text_config.bos_token_id == processor.tokenizer.bos_token_id

    inputs = processor(images=images, text=QUESTIONS[:2], return_tensors="pt", padding=True)
    answers = processor.tokenizer(["red", "a red circle"], return_tensors="pt", padding=True)
    model.train()
    # HF's documented form: labels = answer ids, used as decoder_input_ids too, so no -100 allowed.
    _check_loss_and_grads(model, model(**inputs, labels=answers["input_ids"]).loss)
    with pytest.raises(IndexError):
        model(**inputs, labels=answers["input_ids"].masked_fill(answers["attention_mask"] == 0, -100))
    # Recommended: explicit decoder inputs starting from [DEC] (as generate does), labels with pad -> -100.
    model.zero_grad()
    decoder_input_ids = answers["input_ids"].clone()
    decoder_input_ids[:, 0] = text_config.bos_token_id
    result = model(
        **inputs,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=answers["attention_mask"],
        labels=decoder_input_ids.masked_fill(answers["attention_mask"] == 0, -100),
    )
    _check_loss_and_grads(model, result.loss)
    assert "logits" not in result  # no answer logits: evaluate with generate

    model.eval()
    generated = model.generate(**inputs, max_new_tokens=5)  # input_ids = the question
    assert generated.shape[0] == 2 and generated.shape[1] <= 1 + 5
    assert (generated[:, 0] == text_config.bos_token_id).all()  # answer only: [DEC] + new tokens
    texts = processor.batch_decode(generated, skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


# --------------------------------------------------------------------------- GIT


def test_git_caption_reloads_trains_generates(tmp_path: Path, images: list[Image.Image]) -> None:
    out = build_git_caption(tmp_path / "git", texts=CAPTIONS)
    processor, model = _load(out, AutoModelForImageTextToText)
    assert isinstance(model, GitForCausalLM)
    assert type(processor.image_processor) is _built_class("CLIP")
    tok = processor.tokenizer
    assert (model.config.bos_token_id, model.config.eos_token_id) == (tok.cls_token_id, tok.sep_token_id)

    inputs = processor(images=images, text=CAPTIONS[:2], return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    # Labels = input_ids with padding -> -100; the model skips the image positions and shifts itself.
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    model.train()
    result = model(
        pixel_values=inputs["pixel_values"],
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        labels=labels,
    )
    num_image_tokens = (32 // 8) ** 2 + 1
    assert result.logits.shape[:2] == (2, num_image_tokens + inputs["input_ids"].shape[1])
    _check_loss_and_grads(model, result.loss)

    model.eval()
    generated = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=5)
    assert generated.shape[1] <= 1 + 5 and (generated[:, 0] == tok.cls_token_id).all()
    texts = processor.batch_decode(generated, skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="token_type_ids"):  # forward ignores them, generate refuses them
        model.generate(**inputs, max_new_tokens=1)
    # With a prompt: drop its final [SEP] (and don't pass token_type_ids); the output repeats it.
    prompt_ids = processor(text=["a photo of"] * 2, return_tensors="pt")["input_ids"][:, :-1]
    generated = model.generate(pixel_values=inputs["pixel_values"], input_ids=prompt_ids, max_new_tokens=5)
    assert generated[:, : prompt_ids.shape[1]].tolist() == prompt_ids.tolist()


def test_size_is_configurable(tmp_path: Path) -> None:
    size = TinySize(hidden_size=16, layers=1, heads=2, intermediate_size=32, patch_size=16, max_text_len=24)
    model = GitForCausalLM.from_pretrained(build_git_caption(tmp_path, texts=CAPTIONS, size=size))
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (16, 1)
    assert model.config.vision_config.patch_size == 16
    assert model.config.max_position_embeddings == 48  # room for 24 more tokens after a full prompt
    with pytest.raises(ValueError, match="text_positions"):
        build_git_caption(tmp_path / "bad", texts=CAPTIONS, size=TinySize(text_positions=8))


@pytest.mark.parametrize(
    ("build", "kwargs"),
    [
        (build_vilt_vqa, {"texts": QUESTIONS, "answers": ANSWERS}),
        (build_blip_caption, {"texts": CAPTIONS}),
        (build_blip_vqa, {"texts": QUESTIONS + ANSWERS}),
        (build_git_caption, {"texts": CAPTIONS}),
    ],
    ids=["vilt_vqa", "blip_caption", "blip_vqa", "git_caption"],
)
def test_weights_depend_only_on_the_seed(build, kwargs: dict, tmp_path: Path) -> None:
    """Same seed → identical tensors; another seed → different ones; the caller's RNG is untouched."""
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = _state(build(tmp_path / "a", seed=0, **kwargs))
    assert torch.equal(torch.rand(3), expected_next)
    b = _state(build(tmp_path / "b", seed=0, **kwargs))
    c = _state(build(tmp_path / "c", seed=1, **kwargs))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)
