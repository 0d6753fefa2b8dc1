"""The frozen-feature cache: same results as training through the whole model, and never stale."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from modaltune.api import train
from modaltune.config import build_config
from modaltune.data import load_dataset
from modaltune.feature_cache import cache_key
from modaltune.tasks.base import create_task

METRICS = ("accuracy", "macro_f1", "loss")


def _run(tiny_clip, data, out, **kw):
    defaults = dict(task="classify", model=str(tiny_clip), data=str(data), output=str(out), epochs=3, batch_size=4,
                    lr=1e-2, keep_last=1, zero_shot_baseline=False, cache_dir=str(out) + "-cache")
    return train(build_config(**{**defaults, **kw}))


@pytest.mark.parametrize(("strategy", "layers"), [("linear-probe", None), ("last-n", 1)])
def test_cached_training_matches_uncached(strategy, layers, tiny_clip, shape_folder, tmp_path):
    cached = _run(tiny_clip, shape_folder, tmp_path / "c", strategy=strategy, layers=layers)
    plain = _run(tiny_clip, shape_folder, tmp_path / "p", strategy=strategy, layers=layers, feature_cache=False)
    assert cached["run"]["feature_cache"]["hit"] is False and plain["run"]["feature_cache"] is None
    for key in METRICS:
        assert cached[key] == pytest.approx(plain[key], abs=1e-5), key
    # The per-epoch validation curve agrees too (evaluation ran on cached features).
    def evals(run):
        return [json.loads(x)["loss"] for x in (run / "history.jsonl").read_text().splitlines()
                if json.loads(x)["kind"] == "eval"]
    assert evals(tmp_path / "c") == pytest.approx(evals(tmp_path / "p"), abs=1e-5)
    # A second run with the same model, data and split point reads the cache.
    again = _run(tiny_clip, shape_folder, tmp_path / "c2", strategy=strategy, layers=layers,
                 cache_dir=str(tmp_path / "c") + "-cache")
    assert again["run"]["feature_cache"]["hit"] is True
    assert again["accuracy"] == cached["accuracy"] and again["loss"] == pytest.approx(cached["loss"], abs=1e-6)


def test_retrieve_linear_probe_cache_matches_uncached_and_sees_caption_edits(tiny_clip, caption_manifest, tmp_path):
    kw = dict(task="retrieve", strategy="linear-probe")
    cached = _run(tiny_clip, caption_manifest, tmp_path / "c", **kw)
    plain = _run(tiny_clip, caption_manifest, tmp_path / "p", feature_cache=False, **kw)
    assert cached["run"]["feature_cache"]["hit"] is False and plain["run"]["feature_cache"] is None
    for key in ("r_mean", "i2t_r@1", "t2i_r@1", "loss"):
        assert cached[key] == pytest.approx(plain[key], abs=1e-5), key
    task = create_task("retrieve")
    rows, _ = load_dataset(caption_manifest, require=("image", "text"))
    loaded = task.load(tiny_clip)
    split = task.cache_split(loaded, "linear-probe", None)
    edited = [rows[0].__class__(id=rows[0].id, image=rows[0].image, text=rows[0].text + " indeed"), *rows[1:]]
    assert cache_key(split, rows) != cache_key(split, edited)  # an edited caption is a new entry


def test_cache_is_not_used_where_the_frozen_input_changes(tiny_clip, shape_folder, tmp_path):
    augmented = _run(tiny_clip, shape_folder, tmp_path / "a", strategy="linear-probe", augment=True, epochs=1)
    full = _run(tiny_clip, shape_folder, tmp_path / "f", strategy="full", epochs=1)
    assert augmented["run"]["feature_cache"] is None and full["run"]["feature_cache"] is None


def _key(model_dir, rows, strategy="linear-probe", layers=None):
    task = create_task("classify", labels=sorted({r.label for r in rows}))
    loaded = task.load(model_dir)
    return cache_key(task.cache_split(loaded, strategy, layers), rows)


def test_cache_key_changes_with_model_transform_and_data(tiny_clip, shape_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shape_folder / "train", data)
    rows, _ = load_dataset(data, require=("image", "label"))
    base = _key(tiny_clip, rows)
    assert _key(tiny_clip, rows) == base  # deterministic
    assert _key(tiny_clip, rows, "last-n", 1) != base  # another split point

    model = tmp_path / "model"
    shutil.copytree(tiny_clip, model)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(model / "model.safetensors"))
    name = next(k for k in weights if "vision_model.encoder.layers.0" in k and k.endswith("weight"))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    assert _key(model, rows) != base  # changed frozen weights

    transform = tmp_path / "transform"
    shutil.copytree(tiny_clip, transform)
    config = transform / "preprocessor_config.json"
    if not config.exists():
        config = transform / "processor_config.json"
    values = json.loads(config.read_text())
    target = values.get("image_processor", values)
    target["image_mean"] = [0.5, 0.5, 0.5]
    config.write_text(json.dumps(values))
    assert _key(transform, rows) != base  # changed preprocessing

    image = next(data.rglob("*.png"))
    image.write_bytes(image.read_bytes())  # same bytes, rewritten: the file may have changed
    import os

    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 1_000_000))
    rows2, _ = load_dataset(data, require=("image", "label"))
    assert _key(tiny_clip, rows2) != base  # changed data file


def test_bf16_runs_with_and_without_cache(tiny_clip, shape_folder, tmp_path):
    for cache in (True, False):
        metrics = _run(tiny_clip, shape_folder, tmp_path / f"b{cache}", strategy="last-n", layers=1,
                       precision="bf16", epochs=1, feature_cache=cache)
        assert torch.isfinite(torch.tensor(metrics["loss"]))
