"""The nested run config: YAML in (nested or the flat layout of older runs), flags, dotted
``--section.key`` overrides, resolution, ``config.yaml`` round trip, options generated from it."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import yaml
from pydantic import BaseModel, Field

from _cli import invoke
from modaltune.config import DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_REPLAY_RATIO, build_config
from modaltune.errors import ConfigError
from modaltune.tasks.base import list_tasks, task_class

#: RUN/config.yaml as `modaltune train` wrote it before the config was nested (one flat mapping).
OLD_FLAT_YAML = """\
task: classify
model: MODEL
data: DATA
val: null
output: RUN
strategy: last-n
layers: 1
towers: null
model_dtype: null
device_map: null
attn_implementation: null
epochs: 2
max_steps: null
batch_size: 4
grad_accum: 1
lr: 0.001
optimizer: adamw
momentum: 0.9
weight_decay: 0.01
schedule: cosine
warmup_ratio: 0.1
max_grad_norm: 1.0
precision: fp32
grad_checkpointing: false
compile: false
seed: 0
balance: none
augment: false
early_stopping: null
eval_every: null
save_every: null
keep_last: 2
nan_policy: raise
max_bad_steps: 5
skip_bad: false
data_format: null
max_audio_seconds: 60.0
val_fraction: 0.2
prompt_template: a photo of a {}.
lora_rank: 8
lora_alpha: 16
lora_dropout: 0.0
workers: null
eval_batch_size: 64
zero_shot_baseline: true
feature_cache: true
cache_dir: null
trust_remote_code: false
num_beams: null
max_new_tokens: null
old_task: null
old_task_type: null
replay: null
replay_ratio: null
wise_ft: null
max_forgetting: null
l2sp: null
"""

NESTED_YAML = """\
task: classify
model: {name: MODEL}
data: {train: DATA}
strategy: {name: last-n, layers: 1}
optim: {lr: 0.001, batch_size: 4}
schedule: {epochs: 2}
runtime: {output: RUN}
classify: {prompt_template: "a photo of a {}."}
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nested_yaml_gives_the_resolved_values_of_today(tmp_path):
    base = "task: classify\nmodel: {name: m}\ndata: {train: d}\n"
    for strategy, extra in (("last-n", "layers: 2"), ("full", ""), ("lora", ""), ("linear-probe", ""),
                            ("scratch", ""), ("towers", "towers: 'vision=last-n:1,text=frozen'")):
        path = _write(tmp_path, "run.yaml", base + f"strategy: {{name: {strategy}, {extra}}}\n")
        cfg = build_config(path)
        assert cfg.optim.lr is None and cfg.schedule.epochs is None  # raw: as given
        resolved = cfg.resolved()
        assert resolved.optim.lr == DEFAULT_LR[strategy] == cfg.learning_rate
        assert resolved.schedule.epochs == DEFAULT_EPOCHS == cfg.num_epochs
        assert resolved.transfer.replay_ratio is None  # nothing rehearsed: nothing to resolve
    rehearsing = build_config(path, dotted={"transfer.replay": "old/"}).resolved()
    assert rehearsing.transfer.replay_ratio == DEFAULT_REPLAY_RATIO
    auto = build_config(path, strategy="auto", towers=None, dotted={"strategy.towers": "null"}).resolved()
    assert auto.optim.lr is None and auto.schedule.epochs is None  # the advisor decides at run time
    given = build_config(path, dotted={"strategy.towers": "null", "strategy.name": "full", "optim.lr": "0.5"})
    assert given.resolved().optim.lr == 0.5


def test_an_old_flat_config_yaml_loads_as_the_nested_one(tmp_path):
    old = build_config(_write(tmp_path, "old.yaml", OLD_FLAT_YAML))
    new = build_config(_write(tmp_path, "new.yaml", NESTED_YAML))
    assert old.flat() == new.flat()
    assert (old.model.name, old.data.train, old.strategy.name, old.strategy.layers, old.optim.lr) == (
        "MODEL", "DATA", "last-n", 1, 0.001)
    assert old.task_options().prompt_template == "a photo of a {}."
    # the flat names still read (and set) the same settings
    assert (old.lr, old.batch_size, old.output, old.data_format, old.prompt_template) == (0.001, 4, "RUN", None,
                                                                                      "a photo of a {}.")
    assert old.model_copy(update={"lr": 0.25, "epochs": 5}).flat() == new.with_values(
        {"optim.lr": 0.25, "schedule.epochs": 5}).flat()
    # keyword arguments of the Python API are the flat names, as before
    assert build_config(task="classify", model="MODEL", data="DATA", strategy="last-n", layers=1, epochs=2,
                        batch_size=4, lr=0.001, output="RUN", prompt_template="a photo of a {}.").flat() == new.flat()


@pytest.mark.parametrize("text, needles", [
    ("epochz: 3\n", ["'epochz'", "schedule.epochs"]),
    ("optim: {lrr: 0.1}\n", ["'optim.lrr'", "optim.lr"]),
    ("optim: {epochs: 3}\n", ["'optim.epochs'", "schedule.epochs"]),
    ("classify: {prompt: x}\n", ["'classify.prompt'", "classify.prompt_template"]),
    ("nonsense_section: {a: 1}\n", ["'nonsense_section'"]),
])
def test_unknown_keys_name_the_key_and_where_it_might_belong(tmp_path, text, needles):
    path = _write(tmp_path, "bad.yaml", "task: classify\nmodel: {name: m}\ndata: {train: d}\n" + text)
    with pytest.raises(ConfigError) as error:
        build_config(path)
    for needle in needles:
        assert needle in str(error.value)


def test_dotted_overrides_win_over_yaml_and_flags(tmp_path):
    path = _write(tmp_path, "run.yaml", NESTED_YAML)
    assert build_config(path).optim.lr == 0.001
    assert build_config(path, lr=0.002).optim.lr == 0.002  # a flag wins over the file
    cfg = build_config(path, lr=0.002, model_dtype="fp16",
                       dotted={"optim.lr": "3e-5", "model.dtype": "bf16", "optim.batch-size": "8",
                               "data.max_audio_seconds": "null", "classify.prompt_template": "a sound of {}"})
    assert (cfg.optim.lr, cfg.model.dtype, cfg.optim.batch_size) == (3e-5, "bf16", 8)
    assert cfg.data.max_audio_seconds is None and cfg.task_options().prompt_template == "a sound of {}"
    assert cfg.model_options().dtype == "bf16"


@pytest.mark.parametrize("args, needles", [
    (["--optim.lrr", "1"], ["--optim.lrr", "optim.lr"]),
    (["--optim.lr", "fast"], ["--optim.lr", "valid number"]),
    (["--model.dtype", "fp8"], ["--model.dtype", "bf16"]),
    (["--optim.lr=-1"], ["--optim.lr", "greater than 0"]),
    (["--classify.prompt", "x"], ["--classify.prompt", "classify.prompt_template"]),
    (["--lrr", "1"], ["--lrr", "lr"]),
    (["--data-format", "xml"], ["--data-format", "unknown data format 'xml'"]),
])
def test_bad_dotted_keys_and_values_exit_2_naming_the_option(capsys, tmp_path, args, needles):
    code, _, err = invoke(capsys, "train", "--task", "classify", "--model", "m", "--data", "d",
                          "--output", str(tmp_path / "run"), *args)
    assert code == 2, err
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_config_yaml_round_trip(tmp_path):
    cfg = build_config(_write(tmp_path, "run.yaml", NESTED_YAML), dotted={"transfer.replay": "old"}).resolved()
    saved = _write(tmp_path, "config.yaml", cfg.to_yaml())
    assert isinstance(yaml.safe_load(saved.read_text())["optim"], dict)  # nested on disk
    again = build_config(saved)
    assert again.flat() == cfg.flat() and again.resolved().flat() == cfg.flat()
    import pickle  # worker processes get the config pickled

    assert pickle.loads(pickle.dumps(cfg)).flat() == cfg.flat()


def test_help_of_every_command_lists_the_registered_tasks():
    import typer

    from modaltune.cli import app

    group = typer.main.get_command(app)
    tasks = list_tasks()
    assert {"classify", "retrieve", "vqa", "caption"} <= set(tasks)
    for name in ("train", "compare", "advise", "validate", "eval", "predict"):
        [option] = [p for p in group.commands[name].params if "--task" in p.opts]
        assert all(task in option.help for task in tasks), (name, option.help)


def test_options_are_declared_once_and_shared_by_train_compare_advise():
    import typer

    from modaltune.cli import app

    group = typer.main.get_command(app)

    def options(command):
        return {opt: p.help for p in group.commands[command].params for opt in p.opts}

    train, compare, advise = options("train"), options("compare"), options("advise")
    for flag in ("--lr", "--epochs", "--model-dtype", "--device-map", "--attn-implementation", "--prompt-template",
                 "--num-beams", "--replay-ratio", "--wise-ft", "--cache", "--trust-remote-code", "--data-format"):
        assert flag in train, flag
        assert compare[flag] == train[flag], flag
    for flag in ("--model", "--data", "--batch-size", "--seed", "--prompt-template", "--data-format"):
        assert advise[flag] == train[flag], flag
    assert "--strategy" not in compare and "--strategies" in compare  # each variant sets its own
    assert "--epochs" not in advise


def test_a_task_contributes_its_options_section(monkeypatch, tmp_path):
    """A task that declares Options gets a config section and flags, with no list to edit."""
    import modaltune.config.train as train_module
    from modaltune.cli.options import option_specs

    class DetectOptions(BaseModel):
        iou_threshold: float = Field(default=0.5, gt=0, lt=1, description="boxes overlapping more are one")

    class Detect:
        Options: ClassVar[type[BaseModel]] = DetectOptions

    real = train_module.task_sections
    monkeypatch.setattr(train_module, "task_sections", lambda: {**real(), "detect": Detect.Options})
    cfg = build_config(task="detect", model="m", data="d", dotted={"detect.iou_threshold": "0.7"})
    assert cfg.task_options().iou_threshold == 0.7
    assert build_config(task="detect", model="m", data="d", iou_threshold=0.6).get("detect.iou_threshold") == 0.6
    assert "detect.iou_threshold" in cfg.to_yaml().replace(":\n  iou_threshold", ".iou_threshold")
    with pytest.raises(ConfigError, match="detect.iou_threshold"):
        build_config(task="detect", model="m", data="d", dotted={"detect.iou_threshold": "2"})
    assert option_specs()["iou_threshold"].help.startswith("detect: boxes overlapping more are one")
    assert task_class("classify").Options is not None  # today's tasks declare theirs


def test_train_writes_the_resolved_nested_config_and_a_task_option_reaches_the_task(capsys, tiny_clip,
                                                                                    shape_folder, tmp_path):
    run = tmp_path / "run"
    code, _, err = invoke(capsys, "train", "--task", "classify", "--model", str(tiny_clip), "--data",
                          str(shape_folder), "--strategy", "zero-shot", "--quiet", "--output", str(run),
                          "--classify.prompt_template", "a sound of {}", "--runtime.seed", "3", "--eval-batch-size",
                          "16")
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["classify"] == {"prompt_template": "a sound of {}"}
    assert saved["optim"]["lr"] is None and saved["schedule"]["epochs"] == DEFAULT_EPOCHS  # zero-shot never steps
    assert saved["runtime"]["seed"] == 3 and saved["runtime"]["eval_batch_size"] == 16
    meta = json.loads((run / "model" / "modaltune.json").read_text())
    assert meta["prompt_template"] == "a sound of {}"
    # rerunning the saved config reproduces the same resolved config
    code, _, err = invoke(capsys, "train", "--config", str(run / "config.yaml"), "--quiet",
                          "--output", str(tmp_path / "rerun"))
    assert code == 0, err
    again = yaml.safe_load((tmp_path / "rerun" / "config.yaml").read_text())
    assert again == {**saved, "runtime": {**saved["runtime"], "output": str(tmp_path / "rerun")}}
