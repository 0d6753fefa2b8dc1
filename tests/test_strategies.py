"""Every task family × every strategy: which parameters train, checked against the base weights.

One body for all registered families (timm-style), so a new family is tested the day it registers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from modaltune.config import build_config
from modaltune.data import load_dataset
from modaltune.errors import ConfigError, ModaltuneError
from modaltune.run import RunDir
from modaltune.strategies import apply_strategy
from modaltune.tasks.base import create_task, list_tasks, task_class
from modaltune.trainer.loop import fit

TRAINED = ["linear-probe", "last-n", "full", "lora", "scratch"]

#: (task, model fixture, data fixture): every registered family, and each model layout a family
#: handles differently (VQA: a classifier and a generator; captioning: BLIP and a generic model).
CASES = [
    ("classify", "tiny_clip", "shape_folder"),
    ("retrieve", "tiny_clip", "caption_manifest"),
    ("vqa", "tiny_vilt", "vqa_manifest"),
    ("vqa", "tiny_blip_vqa", "vqa_manifest"),
    ("caption", "tiny_blip_caption", "multi_caption_manifest"),
    ("caption", "tiny_git", "multi_caption_manifest"),
]
CASE_IDS = [f"{task}-{model.removeprefix('tiny_')}" for task, model, _ in CASES]


def test_every_registered_family_has_a_case():
    assert {task for task, _, _ in CASES} == set(list_tasks())


def _data_for(task: str, data: Path) -> str:
    return str(data / "train") if task == "classify" else str(data)


def _make(task_name: str, data: str):
    cls = task_class(task_name)
    rows, _ = load_dataset(data, require=cls.required)
    options = {"labels": sorted({r.label for r in rows})} if cls.uses_labels else {}
    if hasattr(cls, "options_from_rows"):
        options.update(cls.options_from_rows(rows))
    return create_task(task_name, **options), rows


def _canonical(name: str) -> str:
    """A parameter's name in the plain model (PEFT inserts base_model.model., .base_layer, and keeps a
    module it trains in full as modules_to_save.default beside its original_module)."""
    for part in ("base_model.model.", ".base_layer", ".modules_to_save.default", ".original_module"):
        name = name.replace(part, "")
    return name


@pytest.mark.parametrize(("task_name", "model_fixture", "data_fixture"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("strategy", TRAINED)
def test_strategy_trains_exactly_its_parameters(task_name, model_fixture, data_fixture, strategy, request, tmp_path):
    model_dir = request.getfixturevalue(model_fixture)
    task, rows = _make(task_name, _data_for(task_name, request.getfixturevalue(data_fixture)))
    torch.manual_seed(0)
    loaded = task.load(model_dir, scratch=strategy == "scratch")
    base = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}

    info = apply_strategy(task, loaded, strategy, layers=1 if strategy == "last-n" else None)
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert info.trainable_params == sum(p.numel() for p in loaded.model.parameters() if p.requires_grad) > 0

    cfg = build_config(task=task_name, model=str(model_dir), data="unused", strategy=strategy,
                       layers=1 if strategy == "last-n" else None, epochs=1, max_steps=3, batch_size=4,
                       lr=1e-2, warmup_ratio=0.0, output=str(tmp_path / "run"))
    fit(cfg, task, loaded, rows, [], RunDir(tmp_path / "run").create())

    after = dict(loaded.model.named_parameters())
    for name, param in after.items():
        if name in trainable and "lora_" not in name:
            changed = not torch.equal(param.detach(), base[_canonical(name)])
            assert changed, f"{strategy}: trainable {name} did not change"
        elif name in trainable:
            assert "lora_" in name  # adapters are new: nothing to compare with, but they must have moved
        else:
            assert torch.equal(param.detach(), base[_canonical(name)]), f"{strategy}: frozen {name} changed"
    lora_changed = [n for n in trainable if "lora_B" in n and param_nonzero(after[n])]
    if strategy == "lora":
        assert lora_changed, "LoRA B matrices start at zero and must have learned something"
        assert not any("lora_" not in n and not n.startswith("head.") and "modules_to_save" not in n
                       for n in trainable)
    else:
        assert not any("lora_" in n for n in after)

    groups = _expected_groups(task_name, strategy, loaded) if task_name in ("classify", "retrieve") \
        else _expected_vl_groups(task, strategy, loaded)
    assert groups(trainable)


def param_nonzero(p: torch.Tensor) -> bool:
    return bool(p.detach().abs().sum() > 0)


def _expected_groups(task_name: str, strategy: str, loaded):
    """What each strategy means (DESIGN.md), as a predicate over the set of trainable names."""
    def towers(names):
        return {("vision" if ".vision_model." in n else "text") for n in names if "_model." in n}

    def layers_of(names):
        return {n.split(".encoder.layers.")[1].split(".")[0] for n in names if ".encoder.layers." in n}

    depth = len(loaded.model.backbone.vision_model.encoder.layers) if strategy != "lora" else None
    if strategy == "linear-probe":
        return lambda names: all(n.startswith("head.") or "projection" in n for n in names)
    if strategy == "last-n":
        want_towers = {"vision"} if task_name == "classify" else {"vision", "text"}
        return lambda names: (layers_of(names) == {str(depth - 1)} and towers(names) == want_towers
                              and not any(".embeddings." in n for n in names))
    if strategy in ("full", "scratch"):
        if task_name == "classify":
            return lambda names: not any("text_model" in n or "text_projection" in n for n in names)
        return lambda names: len(names) == len(list(loaded.model.parameters()))
    return lambda names: all(("self_attn" in n and "lora_" in n) or n.startswith("head.") for n in names)


def _expected_vl_groups(task, strategy: str, loaded):
    """The same meanings for the vision-language families, read from the task's own stacks."""
    if strategy == "linear-probe":
        prefixes = tuple(task.probe_parameters(loaded))
        return lambda names: all(n.startswith(prefixes) for n in names)
    if strategy in ("full", "scratch"):
        return lambda names: len(names) == len(list(loaded.model.parameters()))
    if strategy == "lora":
        return lambda names: all("lora_" in n or "modules_to_save" in n for n in names)
    stacks = {f"backbone.{path}.": len(blocks) for path, blocks in task.blocks(loaded).items()}

    def last_block_of_each_stack(names) -> bool:
        trained: dict[str, set[str]] = {prefix: set() for prefix in stacks}
        for n in names:
            for prefix in stacks:
                if n.startswith(prefix):
                    trained[prefix].add(n[len(prefix):].split(".")[0])
        return (all(blocks == {str(stacks[p] - 1)} for p, blocks in trained.items())
                and not any("embed" in n for n in names))

    return last_block_of_each_stack


def test_zero_shot_freezes_everything(tiny_clip, shape_folder, caption_manifest):
    task, _ = _make("classify", str(shape_folder / "train"))
    loaded = task.load(tiny_clip)
    info = apply_strategy(task, loaded, "zero-shot")
    assert info.trainable_params == 0
    assert not any(p.requires_grad for p in loaded.model.parameters())


@pytest.mark.filterwarnings("error::FutureWarning")
def test_lora_raises_no_library_deprecation_warning(tiny_clip, shape_folder):
    # peft reads transformers' deprecated `is_gradient_checkpointing`; users of the Python API (not
    # only the CLI) must not see a warning they cannot act on.
    task, _ = _make("classify", str(shape_folder / "train"))
    loaded = task.load(tiny_clip)
    assert apply_strategy(task, loaded, "lora").trainable_params > 0


def test_scratch_never_reads_pretrained_weights(tiny_clip, shape_folder, tmp_path):
    no_weights = tmp_path / "clip-without-weights"
    shutil.copytree(tiny_clip, no_weights)
    (no_weights / "model.safetensors").unlink()
    task, _ = _make("classify", str(shape_folder / "train"))
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
    task, _ = _make("classify", str(shape_folder / "train"))
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

    task, _ = _make("classify", str(shape_folder / "train"))
    loaded = task.load(tiny_clip)
    backbone = loaded.model.backbone
    tokens = loaded.processor.tokenizer([f"a photo of a {c}." for c in task.labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = F.normalize(backbone.get_text_features(**tokens).pooler_output, dim=-1)
    expected = backbone.logit_scale.exp() * text
    assert torch.allclose(loaded.model.head.weight, expected, atol=1e-6)
    assert torch.count_nonzero(loaded.model.head.bias) == 0
