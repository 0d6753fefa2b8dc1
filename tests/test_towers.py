"""Model adapters and the per-component strategy (``--strategy towers``).

The shorthand strategies must be exactly their per-tower spelling, so the equivalences below
compare the sets of trainable parameters name by name.
"""

from __future__ import annotations

import pytest
import torch

from modaltune.errors import ConfigError
from modaltune.models import StructuralAdapter, Tower, adapter_for, register_adapter
from modaltune.models.base import ModelAdapter
from modaltune.strategies import TowerSetting, apply_strategy, parse_towers
from modaltune.tasks.base import create_task, unwrap


def _trainable(loaded) -> set[str]:
    return {name for name, p in loaded.model.named_parameters() if p.requires_grad}


def _loaded(task_name: str, model_dir, **options):
    labels = {"labels": ["circle", "square", "triangle"]} if task_name == "classify" else {}
    task = create_task(task_name, **labels, **options)
    torch.manual_seed(0)
    return task, task.load(model_dir)


def test_clip_adapter_knows_both_towers(tiny_clip) -> None:
    _, loaded = _loaded("retrieve", tiny_clip)
    backbone = unwrap(loaded.model.backbone)
    adapter = adapter_for(backbone)
    assert type(adapter).__name__ == "ClipAdapter"
    assert list(adapter.towers(backbone)) == ["vision", "text"]
    assert adapter.tower_of(backbone, "vision_model.encoder.layers.0.mlp.fc1.weight") == "vision"
    assert adapter.tower_of(backbone, "visual_projection.weight") is None  # outside the towers: the head
    assert len(adapter.blocks(backbone)["text"]) == backbone.config.text_config.num_hidden_layers


@pytest.mark.parametrize(
    ("task_name", "shorthand", "layers", "towers"),
    [
        ("classify", "last-n", 1, "vision=last-n:1,projections=full"),
        ("retrieve", "last-n", 1, "vision=last-n:1,text=last-n:1,projections=full"),
        ("classify", "full", None, "vision=full,projections=full,head=full"),
        ("retrieve", "full", None, "vision=full,text=full,projections=full,head=full"),
        ("classify", "lora", None, "vision=lora,head=full"),
        ("retrieve", "lora", None, "vision=lora,text=lora,head=full"),
    ],
)
def test_shorthands_are_their_per_tower_spelling(tiny_clip, task_name, shorthand, layers, towers) -> None:
    task, a = _loaded(task_name, tiny_clip)
    apply_strategy(task, a, shorthand, layers=layers)
    task, b = _loaded(task_name, tiny_clip)
    info = apply_strategy(task, b, "towers", towers=towers)
    assert _trainable(a) == _trainable(b) and info.trainable_params > 0


def test_towers_set_independently(tiny_clip) -> None:
    task, loaded = _loaded("retrieve", tiny_clip)
    info = apply_strategy(task, loaded, "towers", towers="vision=last-n:1,text=frozen")
    trainable = _trainable(loaded)
    assert trainable and all(name.startswith("backbone.vision_model.") for name in trainable)
    depth = unwrap(loaded.model.backbone).config.vision_config.num_hidden_layers
    assert any(f"encoder.layers.{depth - 1}." in name for name in trainable)
    assert not any(f"encoder.layers.{depth - 2}." in name for name in trainable)
    assert "vision last-n 1" in info.description and "text frozen" in info.description


def test_bad_tower_settings_say_what_to_write(tiny_clip) -> None:
    with pytest.raises(ConfigError, match="frozen, full, last-n:N, lora"):
        parse_towers("vision=half")
    with pytest.raises(ConfigError, match="set twice"):
        parse_towers("vision=full,vision=frozen")
    assert parse_towers({"audio": "last-n 2"}) == {"audio": TowerSetting("last-n", 2)}
    task, loaded = _loaded("classify", tiny_clip)
    with pytest.raises(ConfigError, match="does not have; its components: vision, text, projections, head"):
        apply_strategy(task, loaded, "towers", towers="audio=full")
    with pytest.raises(ConfigError, match="does not use the text tower"):
        apply_strategy(task, loaded, "towers", towers="text=full")
    with pytest.raises(ConfigError, match="has 2 blocks"):
        apply_strategy(task, loaded, "towers", towers="vision=last-n:9")
    with pytest.raises(ConfigError, match="combines with frozen towers, towers trained in full"):
        apply_strategy(*_loaded("retrieve", tiny_clip), "towers", towers="vision=lora,text=last-n:1")
    with pytest.raises(ConfigError, match="only applies to --strategy towers"):
        apply_strategy(task, loaded, "full", towers="vision=full")


def test_structural_fallback_finds_the_towers_of_an_unknown_type(tiny_blip_caption) -> None:
    _, loaded = _loaded("caption", tiny_blip_caption)
    backbone = unwrap(loaded.model.backbone)
    towers = StructuralAdapter().towers(backbone)
    assert "vision_model" in towers and towers["vision_model"].blocks == "vision_model.encoder.layers"
    assert isinstance(adapter_for(backbone), StructuralAdapter)  # BLIP has no adapter of its own


def test_an_adapter_claims_a_model_type_once() -> None:
    class Twice(ModelAdapter):
        model_types = ("clip",)
        tower_specs = (("vision", "vision_model", "vision_model.encoder.layers"),)

    with pytest.raises(ValueError, match="already has the adapter ClipAdapter"):
        register_adapter(Twice)
    assert Tower("a", "b", "b.layers").prefix == "b"


def test_train_with_per_tower_settings_end_to_end(tiny_clip, caption_manifest, tmp_path) -> None:
    import json

    from modaltune.api import train
    from modaltune.config import build_config

    cfg = build_config(task="retrieve", model=str(tiny_clip), data=str(caption_manifest), strategy="towers",
                       towers="vision=last-n:1,text=frozen,projections=full", epochs=1, batch_size=8,
                       output=str(tmp_path / "run"))
    metrics = train(cfg)
    assert "vision last-n 1" in metrics["run"]["strategy"]["description"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["run"]["strategy"]["trainable_params"] < saved["run"]["strategy"]["total_params"]


def test_towers_config_is_checked_before_anything_loads() -> None:
    from modaltune.config import build_config

    with pytest.raises(ConfigError, match="strategy towers and towers go together"):
        build_config(task="retrieve", model="m", data="d", strategy="full", towers="vision=full")
    with pytest.raises(ConfigError, match="frozen, full, last-n:N, lora"):
        build_config(task="retrieve", model="m", data="d", strategy="towers", towers="vision=sometimes")


def test_model_loading_options_reach_from_pretrained(tiny_clip, tiny_blip_caption) -> None:
    from modaltune.config import build_config
    from modaltune.tasks.base import ModelOptions

    cfg = build_config(task="classify", model=str(tiny_clip), data="d", model_dtype="bf16",
                       attn_implementation="eager")
    assert cfg.model_options() == ModelOptions("bf16", None, "eager")
    task = create_task("classify", labels=["a", "b"])
    loaded = task.load(tiny_clip, options=cfg.model_options())
    backbone = unwrap(loaded.model.backbone)
    assert backbone.dtype == torch.bfloat16 and backbone.config._attn_implementation == "eager"
    scratch = create_task("classify", labels=["a", "b"]).load(tiny_clip, scratch=True, options=ModelOptions("bf16"))
    assert unwrap(scratch.model.backbone).dtype == torch.bfloat16
    caption = create_task("caption").load(tiny_blip_caption, options=ModelOptions("bf16"))
    assert unwrap(caption.model.backbone).dtype == torch.bfloat16


def test_a_classifier_loaded_in_bf16_runs_forward_and_backward(tiny_clip) -> None:
    from modaltune.tasks.base import ModelOptions

    task = create_task("classify", labels=["a", "b"])
    loaded = task.load(tiny_clip, options=ModelOptions("bf16"))
    assert loaded.model.head.weight.dtype == torch.bfloat16
    size = unwrap(loaded.model.backbone).config.vision_config.image_size
    logits = loaded.model(torch.randn(2, 3, size, size, dtype=torch.bfloat16))
    logits.float().sum().backward()
    assert logits.shape == (2, 2) and loaded.model.head.weight.grad is not None
