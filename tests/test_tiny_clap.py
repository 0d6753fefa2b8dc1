"""The tiny CLAP (built offline, loaded back through from_pretrained; the ``tiny_clap`` fixture of
conftest.py) and its model adapter: what the audio–text family builds on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from modaltune.models import adapter_for
from modaltune.testing.synthetic_audio import SOUND_KINDS, audio_caption_texts, sound
from modaltune.testing.tiny_clap import SAMPLING_RATE, build_clap

PROMPTS = [f"the sound of {kind}" for kind in SOUND_KINDS]


def _clips(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [sound(SOUND_KINDS[i % len(SOUND_KINDS)], 1.0, SAMPLING_RATE, rng) for i in range(n)]


def test_tiny_clap_loads_like_a_hub_checkpoint_and_trains(tiny_clap: Path) -> None:
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(tiny_clap), AutoProcessor.from_pretrained(tiny_clap)
    assert type(model).__name__ == "ClapModel" and type(processor).__name__ == "ClapProcessor"
    inputs = processor(text=PROMPTS, audio=_clips(4), sampling_rate=SAMPLING_RATE, padding=True,
                       return_tensors="pt")
    out = model(**inputs, return_loss=True)
    assert out.logits_per_audio.shape == (4, 4) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.audio_projection.linear1.weight.grad is not None


def test_the_same_seed_builds_the_same_model(tiny_clap: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    again = AutoModel.from_pretrained(build_clap(tmp_path / "again", texts=audio_caption_texts() * 4, seed=0))
    first = AutoModel.from_pretrained(tiny_clap)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_clap_adapter_knows_the_audio_and_text_towers(tiny_clap: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_clap)
    adapter = adapter_for(model)
    assert type(adapter).__name__ == "ClapAdapter"
    assert list(adapter.towers(model)) == ["audio", "text"]
    blocks = adapter.blocks(model)
    assert len(blocks["audio"]) == len(model.config.audio_config.depths)  # HTSAT stages
    assert len(blocks["text"]) == model.config.text_config.num_hidden_layers
    assert adapter.tower_of(model, "audio_model.audio_encoder.batch_norm.weight") == "audio"
    assert "batch_norm" in adapter.below_blocks  # the input norm stays frozen under last-n
    assert adapter.tower_of(model, "audio_projection.linear1.weight") is None

    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=adapter.lora_pattern(model, ["audio"])))
    names = {name.rsplit(".lora_A", 1)[0] for name, _ in wrapped.named_parameters() if ".lora_A" in name}
    # query, key, value and the attention output of each Swin block of each stage, and nothing else
    per_block = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"}
    assert len(names) == 4 * sum(model.config.audio_config.depths)
    assert all(name.split(".blocks.")[1].split(".", 1)[1] in per_block for name in names)
    assert all("audio_encoder.layers." in name for name in names)
