"""End-to-end through the CLI: validate → train → eval → predict, the run directory, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from _cli import invoke

cli = invoke  # (capsys, *args) -> (exit code, stdout, stderr)


@pytest.fixture()
def dirty_folder(shape_folder, tmp_path) -> Path:
    """A copy of the shapes folder with one bad file of each common kind in train/."""
    root = tmp_path / "dirty"
    shutil.copytree(shape_folder, root)
    circle = root / "train" / "circle"
    (circle / "empty.png").write_bytes(b"")
    (circle / "notes.jpg").write_text("not an image")
    good = next(circle.glob("*.png")).read_bytes()
    (circle / "cut.png").write_bytes(good[: len(good) // 2])
    return root


def test_validate_lists_bad_rows_with_reason_codes(capsys, dirty_folder):
    before = {p: p.read_bytes() for p in dirty_folder.rglob("*") if p.is_file()}
    code, out, err = cli(capsys, "validate", "--task", "classify", "--data", str(dirty_folder))
    assert code == 2
    for reason in ("empty_file", "not_an_image", "corrupt_image"):
        assert reason in out
    assert "--skip-bad" in err
    assert before == {p: p.read_bytes() for p in dirty_folder.rglob("*") if p.is_file()}, "user files untouched"


def test_train_stops_on_bad_rows_unless_skip_bad(capsys, tiny_clip, dirty_folder, tmp_path):
    args = ["train", "--task", "classify", "--model", str(tiny_clip), "--data", str(dirty_folder),
            "--strategy", "linear-probe", "--epochs", "1", "--quiet"]
    code, _, err = cli(capsys, *args, "--output", str(tmp_path / "a"))
    assert code == 2
    assert "cut.png" in err and "corrupt_image" in err and "--skip-bad" in err
    assert not (tmp_path / "a" / "model").exists()

    code, _, err = cli(capsys, *args, "--skip-bad", "--output", str(tmp_path / "b"))
    assert code == 0, err
    report = json.loads((tmp_path / "b" / "data_report.json").read_text())
    skipped = {bad["reason"] for bad in report["train"]["bad"]}
    assert skipped == {"empty_file", "not_an_image", "corrupt_image"}


def test_classify_run_directory_eval_predict_and_rerun(capsys, tiny_clip, shape_folder, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "--task", "classify", "--model", str(tiny_clip), "--data", str(shape_folder),
                         "--strategy", "last-n", "--layers", "1", "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
                         "--quiet", "--output", str(run))
    assert code == 0, err
    for name in ("config.yaml", "data_report.json", "history.jsonl", "metrics.json", "report.html",
                 "model/config.json", "model/model.safetensors", "model/classifier.safetensors",
                 "model/modaltune.json", "plots/loss.png", "plots/confusion_matrix.png"):
        assert (run / name).is_file(), name
    assert any((run / "checkpoints").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "macro_f1" in metrics and "per_class" in metrics
    assert set(metrics["zero_shot"]) >= {"accuracy", "macro_f1"}, "the zero-shot baseline of the base model"
    assert metrics["run"]["strategy"]["strategy"] == "last-n"

    # model/ is plain transformers
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(run / "model")
    assert type(plain).__name__ == "CLIPModel" and plain.config.id2label[0] == "circle"

    # eval on model/ alone reproduces metrics.json
    code, out, err = cli(capsys, "eval", str(run / "model"), "--data", str(shape_folder / "val"), "--json")
    assert code == 0, err
    again = json.loads(out)
    for key in ("accuracy", "macro_f1", "loss", "confusion_matrix"):
        assert again[key] == metrics[key], key
    # and a run directory without --data uses its own validation data
    code, out, _ = cli(capsys, "eval", str(run), "--json")
    assert json.loads(out)["accuracy"] == metrics["accuracy"]
    # --data-format names the layout the sniffer would have found
    code, out, err = cli(capsys, "eval", str(run / "model"), "--data", str(shape_folder / "val"),
                         "--data-format", "folder", "--max-audio-seconds", "5", "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == metrics["accuracy"]

    images = sorted((shape_folder / "val" / "square").glob("*.png"))[:2]
    code, out, err = cli(capsys, "predict", str(run), *map(str, images))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["input"] for line in lines] == list(map(str, images))
    assert all(line["label"] in ("circle", "square", "triangle") and 0 <= line["score"] <= 1 for line in lines)

    # the saved config (nested, resolved) reruns the same run
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["strategy"]["name"] == "last-n" and config["strategy"]["layers"] == 1
    assert (config["optim"]["lr"], config["schedule"]["epochs"], config["model"]["name"]) == (1e-3, 2, str(tiny_clip))
    code, _, err = cli(capsys, "train", "--config", str(run / "config.yaml"), "--output", str(tmp_path / "rerun"),
                       "--quiet")
    assert code == 0, err
    rerun = json.loads((tmp_path / "rerun" / "metrics.json").read_text())
    assert rerun["accuracy"] == metrics["accuracy"] and rerun["loss"] == metrics["loss"]

    # an existing run is never overwritten silently
    code, _, err = cli(capsys, "train", "--config", str(run / "config.yaml"), "--quiet")
    assert code == 2 and "--resume" in err


def test_retrieve_lora_saves_merged_model_and_peft_adapter(capsys, tiny_clip, caption_manifest, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--task", "retrieve", "--model", str(tiny_clip),
                       "--data", str(caption_manifest),
                       "--strategy", "lora", "--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--quiet",
                       "--output", str(run))
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10"):
        assert 0.0 <= metrics[key] <= 1.0
        assert key in metrics["zero_shot"]

    from peft import PeftModel
    from transformers import CLIPModel

    merged = CLIPModel.from_pretrained(run / "model")
    adapted = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip), run / "model" / "adapter")
    remerged = adapted.merge_and_unload()
    for name, tensor in merged.state_dict().items():
        assert torch.allclose(tensor, remerged.state_dict()[name], atol=1e-6), name
    base = CLIPModel.from_pretrained(tiny_clip).state_dict()
    assert any(not torch.equal(base[k], v) for k, v in merged.state_dict().items()), "LoRA changed the weights"

    code, out, err = cli(capsys, "eval", str(run), "--data", str(caption_manifest), "--json")
    assert code == 0, err
    assert set(json.loads(out)) >= {"i2t_r@1", "t2i_r@10", "r_mean"}

    image = next((caption_manifest.parent / "images").glob("*.png"))
    code, out, err = cli(capsys, "predict", str(run), str(image), "--texts", "a red circle,a blue square")
    assert code == 0, err
    result = json.loads(out)
    assert {t["text"] for t in result["top"]} == {"a red circle", "a blue square"}


def test_zero_shot_predict_on_a_base_model(capsys, tiny_clip, shape_folder):
    image = next((shape_folder / "val" / "circle").glob("*.png"))
    code, out, err = cli(capsys, "predict", str(tiny_clip), str(image), "--task", "classify",
                         "--labels", "circle,square")
    assert code == 0, err
    assert json.loads(out)["label"] in ("circle", "square")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task", "segment", "--model", "m", "--data", "d"], "unknown task 'segment'"),
        (["train", "--task", "classify", "--model", "m", "--data", "/nope"], "/nope"),
        (["train", "--task", "classify", "--model", "m", "--data", "d", "--strategy", "last-n"], "needs layers"),
        (["predict", "/nowhere/model", "x.png"], "x.png"),
        (["eval", "/nowhere"], "pass --data"),
    ],
)
def test_bad_usage_exits_2_with_a_message(capsys, args, message):
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_missing_model_is_a_clear_error(capsys, shape_folder, tmp_path):
    code, _, err = cli(capsys, "train", "--task", "classify", "--model", str(tmp_path / "no-model"), "--data",
                       str(shape_folder), "--quiet", "--output", str(tmp_path / "r"))
    assert code == 2 and "could not load model" in err and "Traceback" not in err


def test_data_format_and_max_audio_seconds_flags(capsys, tmp_path):
    from PIL import Image

    labels = ("cat", "dog", "cat", "dog")
    for i in range(len(labels)):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / f"{i}.png")
    lines = [json.dumps({"image": f"{i}.png", "label": label}) for i, label in enumerate(labels)]
    (tmp_path / "rows.json").write_text("\n".join(lines) + "\n")  # JSON lines saved as .json
    data = str(tmp_path / "rows.json")
    code, _, err = cli(capsys, "validate", "--task", "classify", "--data", data)
    assert code == 2 and "--data-format jsonl" in err
    code, out, err = cli(capsys, "validate", "--task", "classify", "--data", data, "--data-format", "jsonl",
                         "--max-audio-seconds", "10", "--json")
    assert code == 0, err
    assert json.loads(out)["all"]["rows_ok"] == 4

    instances = {"images": [{"id": 1, "file_name": "0.png"}], "categories": [{"id": 1, "name": "cat"}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}]}
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "instances.json").write_text(json.dumps(instances))
    code, _, err = cli(capsys, "validate", "--task", "caption", "--data", str(tmp_path / "coco"))
    assert code == 2 and "COCO instances file" in err and "Boxes are read by --task detect" in err

    code, _, err = cli(capsys, "validate", "--task", "classify", "--data", data, "--data-format", "xml")
    assert code == 2 and "Unknown data format 'xml'" in err
    code, _, err = cli(capsys, "validate", "--task", "classify", "--data", data, "--max-audio-seconds", "0")
    assert code == 2 and "--max-audio-seconds" in err
    for flags in (["--data-format", "xml"], ["--max-audio-seconds", "-1"]):
        code, _, err = cli(capsys, "train", "--task", "classify", "--model", "none", "--data", data,
                           "--output", str(tmp_path / "run"), *flags)
        assert code == 2 and flags[0] in err, err  # the message names the option
    assert not (tmp_path / "run").exists()


def test_usage_errors_exit_2_not_as_internal_errors(capsys):
    code, _, err = cli(capsys, "validate", "--data", "somewhere")
    assert code == 2 and "Missing option '--task'" in err and "internal error" not in err
    code, _, err = cli(capsys, "train", "--task", "classify", "--data", "somewhere")
    assert code == 2 and "--model is required" in err and "internal error" not in err
    code, _, err = cli(capsys, "compare", "--task", "classify", "--layers", "1,x", "--output", "o")
    assert code == 2 and "comma-separated whole numbers" in err


def test_library_warnings_reach_the_console_through_logging(capsys):
    import logging

    from modaltune import cli as cli_module

    cli_module._log_to_console()
    cli_module._log_to_console()  # idempotent: one handler, one line
    logging.getLogger("modaltune.api").warning("--replay skipped: nothing to rehearse")
    err = capsys.readouterr().err
    assert err.count("--replay skipped: nothing to rehearse") == 1 and "WARNING" in err
