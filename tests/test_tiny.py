"""Tiny offline CLIP: tokenizer training, config, save/load round trip, determinism."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, AutoTokenizer, CLIPModel, CLIPTokenizer

from modaltune.testing.tiny_clip import (
    EOT,
    SOT,
    build_clip,
    load_clip_tokenizer,
    tiny_clip_config,
    train_clip_tokenizer,
)

TEXTS = [
    "a red circle on the left",
    "a small blue square",
    "there is a large yellow star",
    "a green cross in the centre on a white background",
    "a photo of a red square",
] * 4
SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = dict(
    hidden_size=32, layers=2, heads=4, intermediate_size=37, image_size=32, patch_size=8, max_text_len=16
)


@contextlib.contextmanager
def transformers_warnings() -> Iterator[list[str]]:
    """Collect transformers' logged warnings and Python warnings raised inside the block."""
    records: list[str] = []
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("transformers")  # does not propagate, so caplog would miss it
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
    finally:
        logger.removeHandler(handler)
    records.extend(line for line in stream.getvalue().splitlines() if line.strip())
    records.extend(
        str(w.message) for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))
    )


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_clip_tokenizer(TEXTS, out, vocab_size=400)
    return out


def test_tokenizer_round_trips_and_keeps_common_words_whole(tok_dir: Path) -> None:
    tok = load_clip_tokenizer(tok_dir)
    ids = tok("a red circle")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [SOT, "a</w>", "red</w>", "circle</w>", EOT]
    assert tok.decode(ids, skip_special_tokens=True) == "a red circle"
    # CLIP lowercases and ignores extra whitespace.
    assert tok("A  Red\tCIRCLE")["input_ids"] == ids
    for word in ["circle", "square", "background", "yellow", "there", "photo"]:
        assert tok.tokenize(word) == [word + "</w>"]


def test_unseen_words_tokenize_without_unknown_tokens(tok_dir: Path) -> None:
    tok = load_clip_tokenizer(tok_dir)
    text = "Zebra-quartz, 42 x's {weird} ~words~!"
    ids = tok(text)["input_ids"]
    # The unknown token is <|endoftext|>: it must appear only once, at the end.
    assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")


def test_vocab_files_have_clip_layout(tok_dir: Path) -> None:
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (tok_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert vocab[SOT] == len(vocab) - 2 and vocab[EOT] == len(vocab) - 1
    assert len(vocab) <= 400
    # Every printable ASCII character exists alone and as a word end.
    for code in range(ord("!"), ord("~") + 1):
        assert chr(code) in vocab and chr(code) + "</w>" in vocab
    # Every merge's parts and result are in the vocab (else BPE refuses to load).
    for a, b in (line.split(" ") for line in merges[1:]):
        assert a in vocab and b in vocab and a + b in vocab


def test_vocab_size_is_respected_and_validated(tmp_path: Path) -> None:
    train_clip_tokenizer(TEXTS * 10, tmp_path / "small", vocab_size=200)
    assert len(json.loads((tmp_path / "small" / "vocab.json").read_text())) == 200
    with pytest.raises(ValueError, match="too small"):
        train_clip_tokenizer(TEXTS, tmp_path / "tiny", vocab_size=100)


def test_tokenizer_training_is_identical_across_processes(tmp_path: Path) -> None:
    # tokenizers' BpeTrainer breaks ties in per-process random hash order; ours must not.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from modaltune.testing.tiny_clip import train_clip_tokenizer;"
        f"train_clip_tokenizer({TEXTS!r}, sys.argv[2])"
    )
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        subprocess.run([sys.executable, "-c", script, str(SRC), str(out)], check=True)
    for name in ["vocab.json", "merges.txt"]:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_transformers_loaders_agree(tok_dir: Path, tmp_path: Path) -> None:
    ours = load_clip_tokenizer(tok_dir)
    by_path = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    ours.save_pretrained(tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    text = "a large purple heart at the bottom"
    assert by_path(text)["input_ids"] == ours(text)["input_ids"] == auto(text)["input_ids"]


# --------------------------------------------------------------------------- config


def test_config_matches_tokenizer_ids_and_defaults() -> None:
    config = tiny_clip_config(vocab_size=300)
    text, vision = config.text_config, config.vision_config
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (298, 299, 299)
    assert text.intermediate_size == vision.intermediate_size == 128  # 4 x hidden
    assert config.projection_dim == text.projection_dim == vision.projection_dim == 32
    assert text.max_position_embeddings == 16
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers) == (32, 8, 2)


# --------------------------------------------------------------------------- built model


def test_round_trip_gives_identical_weights(tiny_clip: Path) -> None:
    saved = load_file(tiny_clip / "model.safetensors")
    with transformers_warnings() as logged:
        model, info = CLIPModel.from_pretrained(tiny_clip, output_loading_info=True)
        AutoProcessor.from_pretrained(tiny_clip)
    assert logged == []
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    state = model.state_dict()
    assert set(state) >= set(saved)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    assert type(AutoModel.from_pretrained(tiny_clip)) is CLIPModel


def test_processor_prepares_model_inputs(tiny_clip: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_clip)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    images = [Image.new("RGB", (70, 50), "red"), Image.new("L", (32, 32), 128)]  # odd size, grey mode
    long_text = "a large yellow star " * 10
    batch = processor(
        text=["a red circle", long_text], images=images, return_tensors="pt", padding=True, truncation=True
    )
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    max_len = model.config.text_config.max_position_embeddings
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, max_len)  # truncated to fit
    with torch.no_grad():
        out = model(**batch)
        alone = model.get_text_features(**processor(text=["a red circle"], return_tensors="pt"))
    assert out.logits_per_image.shape == (2, 2)
    # Text is pooled at the first <|endoftext|>, so padding (also <|endoftext|>) changes nothing.
    assert torch.allclose(
        out.text_embeds[0], torch.nn.functional.normalize(_features(alone)[0], dim=-1), atol=1e-5
    )


def _features(output: torch.Tensor | object) -> torch.Tensor:
    # transformers 5's get_*_features returns a ModelOutput (projected features in pooler_output);
    # 4.x returned the tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_build_is_deterministic_and_seeded(tmp_path: Path) -> None:
    kwargs = dict(texts=TEXTS, **SMALL)
    rng_before = torch.get_rng_state()
    a = build_clip(tmp_path / "a", seed=3, **kwargs)
    b = build_clip(tmp_path / "b", seed=3, **kwargs)
    c = build_clip(tmp_path / "c", seed=4, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    for name in ["model.safetensors", "config.json", "vocab.json", "merges.txt", "tokenizer.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    wa, wc = load_file(a / "model.safetensors"), load_file(c / "model.safetensors")
    assert not torch.equal(
        wa["text_model.embeddings.token_embedding.weight"], wc["text_model.embeddings.token_embedding.weight"]
    )
