"""The MFU benchmark's FLOPs model (it runs only on a GPU) checked here against torch's FLOP counter."""

import importlib.util
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig, CLIPModel

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mfu.py"


def _bench_mfu():
    spec = importlib.util.spec_from_file_location("bench_mfu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_per_sample_matches_counted_training_flops():
    bench = _bench_mfu()
    width, text_tokens, batch = 64, 12, 4
    config = CLIPConfig(
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=3,
                           num_attention_heads=4, image_size=64, patch_size=8),
        text_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32, vocab_size=100,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        projection_dim=32)
    # Eager attention: the counter has no formula for the CPU's fused attention kernel.
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = CLIPModel(config)
    pixels = torch.randn(batch, 3, 64, 64)
    ids = torch.randint(0, 100, (batch, text_tokens))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
    counted = counter.get_total_flops() / batch
    # Captions at their real length, not the position limit (which would overcount the text tower).
    modelled = bench.flops_per_sample(config, text_tokens)
    # Left out on purpose: patch embedding, projections and the logits (a few percent here).
    assert 0.9 < modelled / counted <= 1.0
    assert bench.flops_per_sample(config) == bench.flops_per_sample(config, 32) > modelled


def test_padded_text_length_is_the_mean_of_each_batch_longest():
    bench = _bench_mfu()

    class Tokenizer:  # one token per word
        def __call__(self, texts, truncation, max_length):
            return {"input_ids": [t.split()[:max_length] for t in texts]}

    captions = ["a b", "a b c d", "a", "a b c"]
    assert bench.padded_text_length(Tokenizer(), captions, batch=4, max_length=10) == 4
    assert bench.padded_text_length(Tokenizer(), captions, batch=1, max_length=10) == 2.5
    assert bench.padded_text_length(Tokenizer(), captions, batch=4, max_length=3) == 3
