"""Every task family × every strategy: which parameters train (checked against the base weights),
the export, its reload in plain transformers, and the same metrics after the round trip.

One body for all registered families (timm-style), so a new family is tested the day it registers:
the shared check lives in ``modaltune.testing.conformance``; a family adds its case to CASES.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from modaltune.errors import ConfigError, ModaltuneError
from modaltune.strategies import apply_strategy
from modaltune.tasks.base import create_task, list_tasks
from modaltune.testing.conformance import TRAINED_STRATEGIES, check_strategy, make_task

#: (task, model fixture, data fixture): every registered family, and each model layout a family
#: handles differently (VQA: a classifier and a generator; captioning: BLIP and a generic model).
CASES = [
    ("classify", "tiny_clip", "shape_folder"),
    ("retrieve", "tiny_clip", "caption_manifest"),
    ("vqa", "tiny_vilt", "vqa_manifest"),
    ("vqa", "tiny_blip_vqa", "vqa_manifest"),
    ("caption", "tiny_blip_caption", "multi_caption_manifest"),
    ("caption", "tiny_git", "multi_caption_manifest"),
    ("classify", "tiny_clap", "sound_folder"),
    ("retrieve", "tiny_clap", "sound_caption_manifest"),
    ("detect", "tiny_grounding_dino", "detect_scenes"),
    ("detect", "tiny_owlv2", "detect_scenes"),
    ("chat", "tiny_llava", "chat_llava_json"),
]
CASE_IDS = [f"{task}-{model.removeprefix('tiny_')}" for task, model, _ in CASES]


def test_every_registered_family_has_a_case():
    assert {task for task, _, _ in CASES} == set(list_tasks())


def _data_for(task: str, data: Path) -> str:
    return str(data / "train") if task == "classify" else str(data)



@pytest.mark.parametrize(("task_name", "model_fixture", "data_fixture"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("strategy", TRAINED_STRATEGIES)
def test_strategy_trains_exports_and_reloads(task_name, model_fixture, data_fixture, strategy, request, tmp_path):
    model_dir = request.getfixturevalue(model_fixture)
    data = _data_for(task_name, request.getfixturevalue(data_fixture))
    metrics = check_strategy(task_name, model_dir, data, strategy, tmp_path)
    assert metrics  # the exported model scored the rows (the check compared them with the trained model's)


def test_zero_shot_freezes_everything(tiny_clip, shape_folder, caption_manifest):
    task, _ = make_task("classify", str(shape_folder / "train"))
    loaded = task.load(tiny_clip)
    info = apply_strategy(task, loaded, "zero-shot")
    assert info.trainable_params == 0
    assert not any(p.requires_grad for p in loaded.model.parameters())


@pytest.mark.filterwarnings("error::FutureWarning")
def test_lora_raises_no_library_deprecation_warning(tiny_clip, shape_folder):
    # peft reads transformers' deprecated `is_gradient_checkpointing`; users of the Python API (not
    # only the CLI) must not see a warning they cannot act on.
    task, _ = make_task("classify", str(shape_folder / "train"))
    loaded = task.load(tiny_clip)
    assert apply_strategy(task, loaded, "lora").trainable_params > 0


def test_scratch_never_reads_pretrained_weights(tiny_clip, shape_folder, tmp_path):
    no_weights = tmp_path / "clip-without-weights"
    shutil.copytree(tiny_clip, no_weights)
    (no_weights / "model.safetensors").unlink()
    task, _ = make_task("classify", str(shape_folder / "train"))
    with pytest.raises(ModaltuneError, match="could not load model"):
        task.load(no_weights)
    torch.manual_seed(123)  # the fixture was built with seed 0: the same seed would redraw the same init
    scratch = task.load(no_weights, scratch=True)
    pretrained = create_task("classify", labels=task.labels).load(tiny_clip)
    a = dict(scratch.model.backbone.named_parameters())
    b = dict(pretrained.model.backbone.named_parameters())
    assert a.keys() == b.keys()
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(a[key], b[key])


def test_last_n_rejects_bad_layer_counts(tiny_clip, shape_folder):
    task, _ = make_task("classify", str(shape_folder / "train"))
    loaded = task.load(tiny_clip)
    with pytest.raises(ConfigError, match="between 1 and 2"):
        apply_strategy(task, loaded, "last-n", layers=3)
    with pytest.raises(ConfigError, match="needs --layers"):
        apply_strategy(task, loaded, "last-n")
    with pytest.raises(ConfigError, match="unknown strategy"):
        apply_strategy(task, loaded, "half")


def test_classify_head_starts_as_zero_shot_classifier(tiny_clip, shape_folder):
    """linear-probe's head is initialised from the class-prompt text embeddings (DESIGN.md)."""
    import torch.nn.functional as F

    task, _ = make_task("classify", str(shape_folder / "train"))
    loaded = task.load(tiny_clip)
    backbone = loaded.model.backbone
    tokens = loaded.processor.tokenizer([f"a photo of a {c}." for c in task.labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = F.normalize(backbone.get_text_features(**tokens).pooler_output, dim=-1)
    expected = backbone.logit_scale.exp() * text
    assert torch.allclose(loaded.model.head.weight, expected, atol=1e-6)
    assert torch.count_nonzero(loaded.model.head.bias) == 0
