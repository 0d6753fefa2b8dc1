"""The per-task conformance check: what every task family must do under every strategy.

``check_strategy(task, model_dir, data, strategy, workdir)`` runs one strategy on a (tiny) model and
asserts, in order:

1. **it trains exactly its parameters**: after a few optimizer steps every trainable parameter
   moved, every frozen one is bit-identical to the base weights, and the trainable set is what the
   strategy means (``DESIGN.md``: a probe trains the head, last-n the last block of each stack the
   task uses, lora only adapters, full and scratch everything the task uses);
2. **it exports**: ``strategies.export`` writes ``model/`` (LoRA: merged weights + ``adapter/``);
3. **plain transformers reloads it**: the class named in ``model/config.json`` loads every weight,
   nothing missing or unexpected, equal to the trained weights (LoRA: to the merged ones);
4. **it evaluates to the same metrics**: the model reloaded by modaltune from ``model/`` alone
   scores the same rows exactly as the in-memory model did right after training.

The test suite runs it over every registered family × every trained strategy
(``tests/test_strategies.py``); a new family adds one case there. Scaffolding, not product API.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modaltune.models.base import ATTENTION_PROJECTIONS, backbone_of, blocks_at
from modaltune.tasks.base import Loaded, Task

#: The strategies that train something, in the order the checks run them.
TRAINED_STRATEGIES = ("linear-probe", "last-n", "full", "lora", "scratch")
#: Rows scored before and after the export round trip (a few are enough to catch a lost weight).
EVAL_ROWS = 8
#: Generated tokens per answer or caption in the check (a task that generates is asked for few: the
#: setting must survive the export all the same, and 30 tokens from a random model say no more).
GENERATED_TOKENS = 4


def make_task(task_name: str, data: str | Path, *, short_generation: bool = False) -> tuple[Task, list[Any]]:
    """The task as ``train`` builds it from ``data`` (labels and whatever else it learns from rows), and
    the rows; ``short_generation`` asks a task that generates text for ``GENERATED_TOKENS`` tokens."""
    import inspect

    from modaltune.data import load_dataset
    from modaltune.tasks.base import create_task, task_class

    cls = task_class(task_name)
    rows, _ = load_dataset(str(data), require=cls.fields)
    options: dict[str, Any] = {"labels": sorted({r.label for r in rows})} if cls.uses_labels else {}
    if short_generation and "max_new_tokens" in inspect.signature(cls).parameters:
        options["max_new_tokens"] = GENERATED_TOKENS
    if hasattr(cls, "options_from_rows"):
        options.update(cls.options_from_rows(rows))
    return create_task(task_name, **options), rows


def canonical_name(name: str) -> str:
    """A parameter's name in the plain model (PEFT inserts base_model.model., .base_layer, and keeps a
    module it trains in full as modules_to_save.default beside its original_module)."""
    for part in ("base_model.model.", ".base_layer", ".modules_to_save.default", ".original_module"):
        name = name.replace(part, "")
    return name


def check_strategy(task_name: str, model_dir: Path, data: str | Path, strategy: str, workdir: Path, *,
                   steps: int = 3) -> dict[str, Any]:
    """Train ``strategy`` for ``steps`` steps and run the four checks above; returns the metrics of the
    exported model on the scored rows. Raises ``AssertionError`` naming what broke."""
    from modaltune.config import build_config
    from modaltune.run import RunDir
    from modaltune.strategies import apply_strategy
    from modaltune.trainer.loop import fit

    task, rows = make_task(task_name, data, short_generation=True)
    torch.manual_seed(0)
    loaded = task.load(model_dir, scratch=strategy == "scratch")
    base = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}

    layers = 1 if strategy == "last-n" else None
    info = apply_strategy(task, loaded, strategy, layers=layers)
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert info.trainable_params == sum(p.numel() for p in loaded.model.parameters() if p.requires_grad) > 0

    cfg = build_config(task=task_name, model=str(model_dir), data="unused", strategy=strategy, layers=layers,
                       epochs=1, max_steps=steps, batch_size=4, lr=1e-2, warmup_ratio=0.0,
                       output=str(workdir / "run"))
    fit(cfg, task, loaded, rows, [], RunDir(workdir / "run").create())

    check_trained_parameters(task_name, task, loaded, strategy, base, trainable)
    return check_export_round_trip(task, loaded, rows[:EVAL_ROWS], workdir / "model")


# --------------------------------------------------------------------------- 1. which parameters trained


def check_trained_parameters(task_name: str, task: Task, loaded: Loaded, strategy: str,
                             base: dict[str, torch.Tensor], trainable: set[str]) -> None:
    after = dict(loaded.model.named_parameters())
    for name, param in after.items():
        if name in trainable and "lora_" not in name:
            changed = not torch.equal(param.detach(), base[canonical_name(name)])
            assert changed, f"{strategy}: trainable {name} did not change"
        elif name in trainable:
            assert "lora_" in name  # adapters are new: nothing to compare with, but they must have moved
        else:
            assert torch.equal(param.detach(), base[canonical_name(name)]), f"{strategy}: frozen {name} changed"
    lora_changed = [n for n in trainable if "lora_B" in n and bool(after[n].detach().abs().sum() > 0)]
    if strategy == "lora":
        assert lora_changed, "LoRA B matrices start at zero and must have learned something"
        assert not any("lora_" not in n and not n.startswith("head.") and "modules_to_save" not in n
                       for n in trainable)
    else:
        assert not any("lora_" in n for n in after)

    # The dual encoders (CLIP, CLAP) are read from their model adapter (which tower the task uses,
    # where its blocks are); every other family from the stacks its task reports (task.blocks /
    # probe_parameters), so a new family needs no entry here.
    groups = expected_groups(task_name, strategy, loaded) if getattr(task, "family", None) == "dual_encoder" \
        else expected_stack_groups(task, strategy, loaded)
    assert groups(trainable), f"{strategy}: trained {sorted(trainable)}"


def expected_groups(task_name: str, strategy: str, loaded: Loaded) -> Callable[[set[str]], bool]:
    """What each strategy means (DESIGN.md) for the dual encoders, as a predicate over the set of
    trainable names: classify uses the media tower (vision or audio) only, retrieve both towers."""
    from modaltune.models.dual_encoder import dual_encoder_adapter
    from modaltune.tasks.base import unwrap

    backbone = unwrap(backbone_of(loaded.model))
    adapter = dual_encoder_adapter(backbone)
    specs = adapter.towers(backbone)

    def relative(name: str) -> str:
        return canonical_name(name).removeprefix("backbone.")

    def towers(names: set[str]) -> set[str]:
        return {t for t in (adapter.tower_of(backbone, relative(n)) for n in names) if t is not None}

    def blocks_trained(names: set[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for n in names:
            for tower, spec in specs.items():
                if relative(n).startswith(spec.blocks + "."):
                    out.setdefault(tower, set()).add(relative(n)[len(spec.blocks) + 1:].split(".")[0])
        return out

    def below(names: set[str]) -> bool:
        return any(any(part in relative(n) for part in adapter.below_blocks)
                   for n in names if adapter.tower_of(backbone, relative(n)) is not None)

    used = {adapter.media_tower} if task_name == "classify" else set(specs)
    depth = {tower: len(blocks_at(backbone, specs[tower].blocks)) for tower in used}
    text_side = (adapter.text_model + ".",) + ((adapter.text_projection + ".",) if adapter.text_projection else ())
    if strategy == "linear-probe":
        return lambda names: all(n.startswith("head.") or "projection" in n for n in names)
    if strategy == "last-n":
        return lambda names: (blocks_trained(names) == {t: {str(depth[t] - 1)} for t in used}
                              and towers(names) == used and not below(names))
    if strategy in ("full", "scratch"):
        if task_name == "classify":
            return lambda names: not any(relative(n).startswith(text_side) for n in names)
        return lambda names: len(names) == len(list(loaded.model.parameters()))
    return lambda names: (all(("lora_" in n and re.search(ATTENTION_PROJECTIONS, n)) or n.startswith("head.")
                              for n in names) and towers(names) == used)


def expected_stack_groups(task: Task, strategy: str, loaded: Loaded) -> Callable[[set[str]], bool]:
    """The same meanings for the vision-language families, read from the task's own stacks."""
    if strategy == "linear-probe":
        prefixes = tuple(task.probe_parameters(loaded))
        return lambda names: all(n.startswith(prefixes) for n in names)
    if strategy in ("full", "scratch"):
        # Everything the task uses (a detector's parameters that no loss reaches stay as they are).
        used = task.used_parameters(loaded)
        everything = {n for n, _ in loaded.model.named_parameters()
                      if any(n == p or (p.endswith(".") and n.startswith(p)) for p in used)}
        return lambda names: names == everything
    if strategy == "lora":
        return lambda names: all("lora_" in n or "modules_to_save" in n for n in names)
    from modaltune.models import adapter_for
    from modaltune.tasks.base import unwrap

    below = adapter_for(unwrap(backbone_of(loaded.model))).below_blocks
    stacks = {f"backbone.{path}.": len(blocks) for path, blocks in task.blocks(loaded).items()}

    def last_block_of_each_stack(names: set[str]) -> bool:
        trained: dict[str, set[str]] = {prefix: set() for prefix in stacks}
        for n in names:
            for prefix in stacks:
                if n.startswith(prefix):
                    trained[prefix].add(n[len(prefix):].split(".")[0])
        return (all(blocks == {str(stacks[p] - 1)} for p, blocks in trained.items())
                and not any(part in n for n in names for part in below))

    return last_block_of_each_stack


# --------------------------------------------------------------------------- 2-4. export, reload, same metrics


def check_export_round_trip(task: Task, loaded: Loaded, rows: list[Any], model_dir: Path) -> dict[str, Any]:
    """Export ``loaded`` to ``model_dir``, reload it with plain transformers and with modaltune, and
    check the weights and the metrics on ``rows`` survive the trip."""
    from modaltune.api import load_model
    from modaltune.inference import evaluate_rows
    from modaltune.strategies import export, is_peft, peft_backbone

    before = evaluate_rows(task, loaded, rows)
    trained = backbone_of(loaded.model)
    if is_peft(loaded):  # what the export must hold: the adapters merged into the weights
        trained = copy.deepcopy(peft_backbone(loaded)).merge_and_unload()
    expected = {k: v.detach().cpu() for k, v in trained.state_dict().items()}
    export(task, loaded, model_dir)
    if is_peft(loaded):
        assert (model_dir / "adapter" / "adapter_config.json").is_file(), "LoRA: no adapter/ beside the merged model"

    plain = load_plain(model_dir)
    weights = plain.state_dict()
    differ = weights.keys() ^ expected.keys()
    assert not differ, f"plain transformers sees other weights than were trained: {sorted(differ)}"
    for name, tensor in weights.items():
        assert torch.equal(tensor, expected[name]), f"model/ lost the trained value of {name}"

    reloaded_task, reloaded = load_model(model_dir)
    after = evaluate_rows(reloaded_task, reloaded, rows)
    assert_same_metrics(before, after)
    return after


def load_plain(model_dir: Path) -> torch.nn.Module:
    """``model_dir`` loaded by the transformers class its config names, with nothing missing or unexpected."""
    import transformers

    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    assert architectures, f"{model_dir}/config.json names no architecture"
    model_class = getattr(transformers, architectures[0])
    model, info = model_class.from_pretrained(model_dir, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(kind), f"{architectures[0]}.from_pretrained({model_dir}): {kind} {info[kind]}"
    return model


def assert_same_metrics(before: dict[str, Any], after: dict[str, Any], *, path: str = "") -> None:
    """Equal metrics: the same keys, equal values (floats to 1e-6: LoRA's merged weights round differently)."""
    assert before.keys() == after.keys(), f"metrics{path}: keys {before.keys() ^ after.keys()}"
    for key, value in before.items():
        _assert_same(value, after[key], f"{path}.{key}")


def _assert_same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert_same_metrics(a, b, path=where)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"metrics{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), \
            f"metrics{where}: {a} before export, {b} after"
    else:
        assert a == b, f"metrics{where}: {a!r} before export, {b!r} after"
