"""--grad-checkpointing and --compile change speed and memory, never the result."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from modaltune.api import train
from modaltune.config import build_config


def _weights(tiny_clip, shape_folder, out, **kw):
    cfg = build_config(task="classify", model=str(tiny_clip), data=str(shape_folder), output=str(out),
                       strategy="full", epochs=1, batch_size=4, lr=1e-3, keep_last=1, zero_shot_baseline=False, **kw)
    metrics = train(cfg)
    return metrics, load_file(str(out / "model" / "model.safetensors"))


def test_grad_checkpointing_gives_the_same_weights(tiny_clip, shape_folder, tmp_path):
    plain, a = _weights(tiny_clip, shape_folder, tmp_path / "a")
    checkpointed, b = _weights(tiny_clip, shape_folder, tmp_path / "b", grad_checkpointing=True)
    assert checkpointed["accuracy"] == plain["accuracy"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


@pytest.mark.slow
def test_compile_gives_the_same_result(tiny_clip, shape_folder, tmp_path):
    plain, a = _weights(tiny_clip, shape_folder, tmp_path / "a")
    compiled, b = _weights(tiny_clip, shape_folder, tmp_path / "b", compile=True)
    assert compiled["loss"] == pytest.approx(plain["loss"], abs=1e-4)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key
