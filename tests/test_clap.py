"""The audio–text family: CLAP through the same classify and retrieve tasks as CLIP, its adapter
doing what differs (audio inputs, get_audio_features, logit_scale_a/t, HTSAT stages)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modaltune.data.rows import Row
from modaltune.errors import ConfigError
from modaltune.strategies import apply_strategy
from modaltune.tasks.base import create_task
from modaltune.testing.synthetic_audio import sound
from modaltune.testing.tiny_clap import SAMPLING_RATE

LABELS = ["chirp", "noise", "tone"]


def _items(n: int = 6, seconds: float = 1.0) -> list[tuple[Row, dict]]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        row = Row(id=f"{label}/{i}.wav", audio=Path(f"{label}/{i}.wav"), label=label, text=f"the sound of {label}")
        out.append((row, {"audio": sound(label, seconds, SAMPLING_RATE, rng)}))
    return out


def _classify(model_dir: Path, **options):
    task = create_task("classify", labels=LABELS, **options)
    loaded = task.load(model_dir)
    loaded.model.eval()
    return task, loaded


def test_zero_shot_logits_are_clap_s_own(tiny_clap: Path) -> None:
    task, loaded = _classify(tiny_clap)
    assert loaded.state == {"labels": LABELS, "prompt_template": "the sound of {}"}  # the audio default
    assert loaded.media_options == {"sampling_rate": SAMPLING_RATE}
    items = _items()
    with torch.no_grad():
        logits = task.outputs(loaded, task.collate(loaded, items))["logits"]
        inputs = loaded.processor(text=[f"the sound of {c}" for c in LABELS], audio=[m["audio"] for _, m in items],
                                  sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt")
        expected = loaded.model.backbone(**inputs).logits_per_audio
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert task.predict(loaded, {"logits": logits}, [r for r, _ in items])[0]["label"] == \
        LABELS[int(expected[0].argmax())]


def test_a_model_loaded_in_bf16_scores_float32_features(tiny_clap: Path) -> None:
    """The extractor writes float32 and CLAP's input batch norm does not cast: the adapter does."""
    from modaltune.tasks.base import ModelOptions

    task = create_task("classify", labels=LABELS)
    half = task.load(tiny_clap, options=ModelOptions(dtype="bf16"))
    full = task.load(tiny_clap)
    assert next(half.model.backbone.parameters()).dtype == torch.bfloat16
    items = _items(3)
    with torch.no_grad():
        logits = task.outputs(half, task.collate(half, items))["logits"]
        reference = task.outputs(full, task.collate(full, items))["logits"]
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, reference, atol=0.5, rtol=0.05)  # bf16 keeps 8 bits of mantissa


def test_the_user_prompt_wins_over_the_audio_default(tiny_clap: Path) -> None:
    _, loaded = _classify(tiny_clap, prompt_template="a recording of a {}")
    backbone = loaded.model.backbone
    tokens = loaded.processor.tokenizer([f"a recording of a {c}" for c in LABELS], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = F.normalize(backbone.get_text_features(**tokens).pooler_output, dim=-1)
    torch.testing.assert_close(loaded.model.head.weight, backbone.logit_scale_a.exp() * text, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("strategy", "layers"), [("linear-probe", None), ("last-n", 1)])
def test_the_feature_cache_gives_the_uncached_logits(tiny_clap: Path, strategy: str, layers: int | None) -> None:
    task, loaded = _classify(tiny_clap)
    apply_strategy(task, loaded, strategy, layers=layers)
    split = task.cache_split(loaded, strategy, layers)
    assert split is not None
    # clips longer than the extractor's 1 s are cut to their middle, so the cut is deterministic
    items = _items(seconds=1.4)
    batch = task.collate(loaded, items)
    loaded.model.eval()
    with torch.no_grad():
        features = split.encode(batch)
        cached = split.collate([(row, f) for (row, _), f in zip(items, features)])
        torch.testing.assert_close(split.outputs(cached)["logits"], task.outputs(loaded, batch)["logits"],
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(split.loss(cached), task.loss(loaded, batch), atol=1e-5, rtol=0)
    if strategy == "last-n":
        assert split.name == "classify:audio-block-1/2" and features.ndim == 3  # after HTSAT stage 0


def test_frozen_parts_keep_their_statistics_while_the_head_trains(tiny_clap: Path) -> None:
    task, loaded = _classify(tiny_clap)
    apply_strategy(task, loaded, "linear-probe")
    norm = loaded.model.backbone.audio_model.audio_encoder.batch_norm
    before = norm.running_mean.clone()
    loaded.model.train()
    assert not norm.training and not loaded.model.backbone.training and loaded.model.head.training
    task.loss(loaded, task.collate(loaded, _items())).backward()
    assert torch.equal(norm.running_mean, before)


def test_save_and_reload(tiny_clap: Path, tmp_path: Path) -> None:
    from transformers import ClapModel

    task, loaded = _classify(tiny_clap)
    with torch.no_grad():
        loaded.model.head.weight.mul_(1.5)  # as if trained
    items = _items()
    batch = task.collate(loaded, items)
    with torch.no_grad():
        logits = task.outputs(loaded, batch)["logits"]
    task.save(loaded, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "modaltune.json").read_text())
    assert meta["state"] == {"labels": LABELS, "prompt_template": "the sound of {}"}

    plain = ClapModel.from_pretrained(tmp_path / "model")
    assert plain.config.id2label == dict(enumerate(LABELS))
    again = create_task("classify")
    reloaded = again.load(tmp_path / "model")
    reloaded.model.eval()
    assert reloaded.state == loaded.state
    with torch.no_grad():
        torch.testing.assert_close(again.outputs(reloaded, again.collate(reloaded, items))["logits"], logits,
                                   atol=1e-6, rtol=0)


def test_a_classifier_saved_before_the_state_key_still_loads(tiny_clap: Path, tmp_path: Path) -> None:
    task, loaded = _classify(tiny_clap, prompt_template="a {} sound")
    task.save(loaded, tmp_path / "model")
    meta_file = tmp_path / "model" / "modaltune.json"
    meta = json.loads(meta_file.read_text())
    assert meta["labels"] == LABELS and meta["prompt_template"] == "a {} sound"  # kept at the top for readers
    del meta["state"]
    meta_file.write_text(json.dumps(meta))  # the layout before the state had its own key
    reloaded = create_task("classify").load(tmp_path / "model")
    assert reloaded.state == {"labels": LABELS, "prompt_template": "a {} sound"}
    torch.testing.assert_close(reloaded.model.head.weight, loaded.model.head.weight)


def test_a_model_given_the_other_media_kind_is_a_clear_error(tiny_clap: Path, tiny_clip: Path) -> None:
    from PIL import Image

    task, loaded = _classify(tiny_clap)
    image = [(Row(id="cats/1.png", image=Path("cats/1.png"), label="chirp"), {"image": Image.new("RGB", (8, 8))})]
    with pytest.raises(ConfigError, match=r"\(clap\) reads audio, but example 'cats/1.png' holds image"):
        task.collate(loaded, image)
    clip_task = create_task("retrieve")
    clip = clip_task.load(tiny_clip)
    with pytest.raises(ConfigError, match=r"\(clip\) reads image, but example .* holds audio"):
        clip_task.collate(clip, _items(2))


def test_retrieve_scores_audio_and_text_both_ways_with_clap_s_loss(tiny_clap: Path) -> None:
    task = create_task("retrieve")
    loaded = task.load(tiny_clap)
    loaded.model.eval()
    items = _items(6)
    rows = [row.replace(text=f"clip {i}: {row.label}") for i, (row, _) in enumerate(items)]
    items = [(row, media) for row, (_, media) in zip(rows, items)]
    batch = task.collate(loaded, items)
    with torch.no_grad():
        outputs = task.outputs(loaded, batch)
        metrics = task.evaluate(loaded, outputs, rows)
        own = loaded.model.backbone(**batch, return_loss=True).loss
    assert {f"{way}_r@{k}" for way in ("i2t", "t2i") for k in (1, 5, 10)} | {"r_mean"} <= set(metrics)
    assert metrics["loss"] == pytest.approx(float(own), abs=1e-5)
    assert task.cache_split(loaded, "linear-probe", None) is not None


def test_retrieve_linear_probe_cache_gives_the_uncached_loss(tiny_clap: Path) -> None:
    task = create_task("retrieve")
    loaded = task.load(tiny_clap)
    apply_strategy(task, loaded, "linear-probe")
    loaded.model.eval()
    split = task.cache_split(loaded, "linear-probe", None)
    assert split is not None and split.name == "retrieve:pooled-audio-and-text"
    items = _items(6)
    rows = [row.replace(text=f"clip {i}") for i, (row, _) in enumerate(items)]
    items = [(row, media) for row, (_, media) in zip(rows, items)]
    batch = task.collate(loaded, items)
    with torch.no_grad():
        cached = split.collate([(row, f) for row, f in zip(rows, split.encode(batch))])
        torch.testing.assert_close(split.loss(cached), task.loss(loaded, batch), atol=1e-5, rtol=0)
        for key, value in split.outputs(cached).items():
            torch.testing.assert_close(value, task.outputs(loaded, batch)[key], atol=1e-5, rtol=0)


def test_towers_train_the_audio_tower_s_last_stage_and_what_sits_above_it(tiny_clap: Path) -> None:
    task, loaded = _classify(tiny_clap)
    apply_strategy(task, loaded, "towers", towers="audio=last-n:1,projections=full,head=full")
    trained = {n.removeprefix("backbone.") for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("audio_model.audio_encoder.layers.1.") for n in trained)
    assert not any(n.startswith("audio_model.audio_encoder.layers.0.") for n in trained)
    assert {"audio_model.audio_encoder.norm.weight", "audio_projection.linear1.weight", "head.weight"} <= trained
    assert not any("batch_norm" in n or "patch_embed" in n or n.startswith("text_") for n in trained)


def test_train_classify_on_a_folder_of_sounds_end_to_end(tiny_clap: Path, sound_folder: Path, tmp_path: Path) -> None:
    from transformers import ClapModel

    from modaltune import api
    from modaltune.config import build_config

    cfg = build_config(task="classify", model=str(tiny_clap), data=str(sound_folder), strategy="linear-probe",
                       epochs=1, batch_size=4, output=str(tmp_path / "run"))
    metrics = api.train(cfg)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "zero_shot" in json.dumps(metrics)
    model_dir = tmp_path / "run" / "model"
    # no prompt given: the audio model's own default, not the image one
    assert json.loads((model_dir / "modaltune.json").read_text())["state"] == {
        "labels": ["chirp", "noise", "tone"], "prompt_template": "the sound of {}"}
    ClapModel.from_pretrained(model_dir)
    clip = next((sound_folder / "val" / "tone").iterdir())
    [prediction] = api.predict(tmp_path / "run", [str(clip)])
    assert prediction["label"] in ("chirp", "noise", "tone") and len(prediction["top"]) == 3
    # the exported model scores the validation clips as the run did
    assert api.evaluate(tmp_path / "run")["accuracy"] == metrics["accuracy"]
    # the report plays the first validation clips, with this model's and the base model's predictions
    report = (tmp_path / "run" / "report.html").read_text()
    shown = metrics["samples"]
    assert shown and all(Path(s["audio"]).suffix in {".wav", ".flac", ".ogg", ".mp3"} for s in shown)
    assert report.count("<audio controls") == len(shown) and "base model (zero-shot)" in report
    assert [s["id"] for s in metrics["zero_shot"]["samples"]] == [s["id"] for s in shown]
