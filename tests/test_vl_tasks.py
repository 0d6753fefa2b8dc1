"""The vision-language families (vqa, caption): data formats and reason codes, the answer
vocabulary, soft targets, and train -> eval -> predict end to end on tiny real models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import VILT_ANSWERS
from modaltune.api import evaluate, load_model, predict, train
from modaltune.config import build_config
from modaltune.data import load_dataset
from modaltune.errors import ConfigError, DataError
from modaltune.tasks.base import create_task, task_class
from modaltune.tasks.vqa import majority_answer, soft_scores


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _image(folder: Path, name: str = "a.png") -> str:
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(folder / name)
    return name


# --------------------------------------------------------------------------- data


def test_vqa_rows_accept_answer_answers_and_official_layout(tmp_path):
    img = _image(tmp_path)
    manifest = _write_jsonl(tmp_path / "vqa.jsonl", [
        {"image": img, "question": "what colour?", "answer": "red"},
        {"image": img, "question": "what colour?", "answers": ["red", "Red", "pink"]},
        {"image": img, "question": "what colour?", "answers": [{"answer": "red", "answer_id": 1}]},
    ])
    rows, report = load_dataset(manifest, require=("image", "question", "answers"))
    assert [r.answers for r in rows] == [("red",), ("red", "Red", "pink"), ("red",)]
    assert rows[0].question == "what colour?" and report.rows_ok == 3


def test_vqa_and_caption_reason_codes(tmp_path):
    img = _image(tmp_path)
    vqa = _write_jsonl(tmp_path / "vqa.jsonl", [
        {"image": img, "question": "  ", "answer": "red"},
        {"image": img, "question": "what?", "answers": []},
        {"image": img, "question": "what?", "answers": ["red", " "]},
        {"image": "missing.png", "question": "what?", "answer": "red"},
        {"image": img, "question": "what?", "answers": [["nested"]]},
        {"image": img, "question": "what?", "answer": "ok"},
    ])
    rows, report = load_dataset(vqa, require=("image", "question", "answers"), skip_bad=True)
    assert len(rows) == 1
    assert [b.reason for b in report.bad] == ["empty_question", "empty_answer", "empty_answer", "missing_file",
                                              "bad_json"]
    caption = _write_jsonl(tmp_path / "cap.jsonl", [{"image": img, "text": ""}, {"image": img, "text": "a dog"}])
    with pytest.raises(DataError, match="empty_caption"):
        load_dataset(caption, require=task_class("caption").fields)


def test_coco_captions_json_gives_one_row_per_caption(tmp_path):
    img = _image(tmp_path)
    coco = {"images": [{"id": 7, "file_name": img}],
            "annotations": [{"id": 1, "image_id": 7, "caption": "a red square"},
                            {"id": 2, "image_id": 7, "caption": "red box"},
                            {"id": 3, "image_id": 99, "caption": "orphan"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    rows, report = load_dataset(tmp_path / "captions.json", require=("image", "text"), skip_bad=True)
    assert [r.text for r in rows] == ["a red square", "red box"]
    assert rows[0].id == "captions.json:ann1" and rows[0].image == (tmp_path / img).resolve()
    assert [b.reason for b in report.bad] == ["missing_field"] and "99" in report.bad[0].detail
    (tmp_path / "bad.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="not a COCO captions file"):
        load_dataset(tmp_path / "bad.json", require=("image", "text"))


def test_caption_eval_rows_merge_references_per_image(multi_caption_manifest):
    rows, _ = load_dataset(multi_caption_manifest, require=("image", "text"))
    grouped = create_task("caption").eval_rows(rows)
    assert len(grouped) == len(rows) // 2 == 12
    assert all(len(r.extra["references"]) >= 1 for r in grouped)
    assert grouped[0].extra["references"] == list(dict.fromkeys([rows[0].text, rows[1].text]))


# --------------------------------------------------------------------------- answers


def test_soft_scores_and_majority_follow_the_vqa_rule():
    # Three annotators: each one who gave an answer is worth 1/3; normalisation merges "Two" and "2".
    assert soft_scores(["2", "Two", "3"]) == {"2": pytest.approx(2 / 3), "3": pytest.approx(1 / 3)}
    assert soft_scores(["red"]) == {"red": 1.0}  # a single answer is the whole truth
    assert soft_scores(["cat"] * 4 + ["dog"] * 6) == {"cat": 1.0, "dog": 1.0}  # min(count / 3, 1)
    assert majority_answer(["blue", "Red", "red."]) == "Red"


def test_vilt_vocabulary_keeps_model_answers_and_adds_new_rows(tiny_vilt, vqa_manifest):
    rows, _ = load_dataset(vqa_manifest, require=("image", "question", "answers"))
    task = create_task("vqa", **create_task("vqa").options_from_rows(rows))
    loaded = task.load(tiny_vilt)
    answers = loaded.state["answers"]
    assert loaded.state["mode"] == "classifier"
    assert answers[:len(VILT_ANSWERS)] == VILT_ANSWERS  # the base model's answers keep their ids
    added = set(answers) - set(VILT_ANSWERS)
    assert added and added == set(task.train_answers) - set(VILT_ANSWERS)
    from transformers import AutoModelForVisualQuestionAnswering

    base = AutoModelForVisualQuestionAnswering.from_pretrained(tiny_vilt)
    head, old = loaded.model.backbone.classifier[-1], base.classifier[-1]
    assert head.out_features == len(answers)
    assert torch.equal(head.weight[: old.out_features], old.weight)  # old answers untouched
    assert torch.allclose(head.bias[old.out_features:], old.bias.mean().expand(len(added)))


# --------------------------------------------------------------------------- end to end


def _train(task, model, data, out, **kw):
    defaults = dict(strategy="full", epochs=2, batch_size=8, lr=5e-4, max_new_tokens=6, keep_last=1)
    return train(build_config(task=task, model=str(model), data=str(data), output=str(out), **{**defaults, **kw}))


def test_vqa_classifier_end_to_end(tiny_vilt, vqa_manifest, tmp_path):
    run = tmp_path / "vilt"
    metrics = _train("vqa", tiny_vilt, vqa_manifest, run, strategy="last-n", layers=1)
    for key in ("vqa_accuracy", "exact_match", "unknown_answer_rate"):
        assert 0.0 <= metrics[key] <= 1.0
        assert key in metrics["zero_shot"]  # the base model scored on the same validation rows
    assert metrics["samples"] and {"question", "prediction", "references"} <= set(metrics["samples"][0])
    # model/ is a plain transformers VQA model whose labels include the data's answers.
    from transformers import AutoModelForVisualQuestionAnswering

    plain = AutoModelForVisualQuestionAnswering.from_pretrained(run / "model")
    rows, _ = load_dataset(vqa_manifest, require=("image", "question", "answers"))
    labels = set(plain.config.id2label.values())
    assert {a for r in rows for a in r.answers} <= labels | {a.lower() for a in labels}
    again = evaluate(run, vqa_manifest)
    assert set(again) >= {"vqa_accuracy", "exact_match"}
    image = rows[0].image
    [out] = predict(run, [image], question=rows[0].question)
    assert out["answer"] in labels and len(out["top"]) == 5 and out["question"] == rows[0].question
    with pytest.raises(ConfigError, match="--question"):
        predict(run, [image])
    report = (run / "report.html").read_text()
    assert "Sample predictions" in report and "data:image/png;base64," in report


@pytest.mark.parametrize("model_fixture", ["tiny_blip_vqa", "tiny_git"])
def test_generative_vqa_end_to_end(model_fixture, vqa_manifest, tmp_path, request):
    model = request.getfixturevalue(model_fixture)
    run = tmp_path / "gen"
    metrics = _train("vqa", model, vqa_manifest, run, strategy="lora", num_beams=2)
    assert "unknown_answer_rate" not in metrics  # a generator can say any answer
    assert 0.0 <= metrics["vqa_accuracy"] <= 1.0 and "vqa_accuracy" in metrics["zero_shot"]
    saved = json.loads((run / "model" / "modaltune.json").read_text())
    assert saved["state"]["generation"] == {"num_beams": 2, "max_new_tokens": 6}
    rows, _ = load_dataset(vqa_manifest, require=("image", "question", "answers"))
    [out] = predict(run, [rows[0].image], question=rows[0].question)
    assert isinstance(out["answer"], str) and out["question"] == rows[0].question


@pytest.mark.parametrize("model_fixture", ["tiny_blip_caption", "tiny_git"])
def test_caption_end_to_end(model_fixture, multi_caption_manifest, tmp_path, request):
    model = request.getfixturevalue(model_fixture)
    run = tmp_path / "cap"
    metrics = _train("caption", model, multi_caption_manifest, run, lr=2e-3, epochs=3)
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider", "rouge_l"):
        assert key in metrics and key in metrics["zero_shot"]
    # Validation rows are grouped per image: every sample lists all of that image's captions.
    sample = metrics["samples"][0]
    assert sample["references"] and isinstance(sample["prediction"], str)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if h["kind"] == "step"]
    assert losses[-1] < losses[0]  # teacher forcing learns the captions
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(run / "model")  # plain transformers loads model/
    [out] = predict(run, [sample["image"]], max_new_tokens=3)
    assert isinstance(out["caption"], str) and len(out["caption"].split()) <= 3


def test_caption_cli_with_coco_json(tiny_blip_caption, tmp_path, run_cli):
    from modaltune.testing.synthetic import write_multi_caption_corpus

    coco = write_multi_caption_corpus(tmp_path / "coco", 8, seed=3, captions=3, image_size=32, coco=True)
    run = tmp_path / "run"
    result = run_cli("train", "--task", "caption", "--model", str(tiny_blip_caption), "--data", str(coco),
                     "--strategy", "linear-probe", "--epochs", "1", "--batch-size", "8", "--max-new-tokens", "4",
                     "--output", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["train_rows"] + metrics["run"]["val_rows"] == 24
    # which PTB tokenizer produced the caption scores (the jar where Java is installed)
    assert metrics["caption_tokenizer"] == ("ptb-java" if shutil.which("java") else "ptb-python")
    result = run_cli("predict", str(run), str(coco.parent / "images" / "00000.png"))
    assert result.returncode == 0 and "caption" in json.loads(result.stdout.splitlines()[0])


def test_transfer_tools_work_for_captioning(tiny_blip_caption, multi_caption_manifest, tmp_path):
    """advise, --strategy auto, --old-task, --replay and --wise-ft auto through the Task protocol alone."""
    from modaltune.api import advise
    from modaltune.testing.synthetic import write_multi_caption_corpus

    old = write_multi_caption_corpus(tmp_path / "old", 6, seed=4, captions=2, image_size=32, styles=("outline",))
    advice = advise("caption", str(tiny_blip_caption), str(multi_caption_manifest))
    assert advice.strategy in ("linear-probe", "last-n", "full", "lora") and advice.reasons
    assert advice.inputs["shift"]["metric"] == "cider" and advice.inputs["shift"]["chance"] == 0.0
    metrics = _train("caption", tiny_blip_caption, multi_caption_manifest, tmp_path / "run", strategy="auto",
                     epochs=1, old_task=str(old), replay=str(old), wise_ft="auto", max_new_tokens=4)
    # The same rules on the same data; the pick may differ from `advise` above only because this run
    # generates at most 4 tokens, which changes the measured zero-shot CIDEr.
    assert metrics["advice"]["strategy"] in ("linear-probe", "last-n") and metrics["advice"]["reasons"]
    forgetting = metrics["forgetting"]
    assert forgetting["task"] == "caption" and forgetting["metric"] == "cider" and forgetting["rows"] == 12
    assert forgetting["drop"] == pytest.approx(forgetting["before"] - forgetting["after"], abs=1e-6)
    assert len(metrics["wise_ft"]["sweep"]) == 11 and metrics["replay"]["task"] == "caption"
    assert metrics["replay"]["ratio"] == metrics["advice"]["replay_ratio"] == 0.5  # advised: few rows, 50/50


def test_long_texts_are_truncated_to_the_model_and_oversized_generation_is_refused(tiny_blip_caption, tiny_git,
                                                                                   tmp_path):
    from modaltune.testing.synthetic import vocabulary_texts

    img = _image(tmp_path)
    long_text = " ".join(vocabulary_texts()[:40])  # far more words than the tiny models' 64 text positions
    task = create_task("caption", max_new_tokens=4)
    loaded = task.load(tiny_blip_caption)
    from modaltune.data.rows import Row

    rows = [Row(id="x", image=tmp_path / img, text=long_text)]
    from PIL import Image

    batch = task.collate(loaded, [(rows[0], {"image": Image.open(tmp_path / img).convert("RGB")})])
    assert batch["input_ids"].shape[1] <= 64
    assert torch.isfinite(task.loss(loaded, batch))
    vqa = create_task("vqa", max_new_tokens=4)
    git = vqa.load(tiny_git)
    item = (Row(id="q", image=tmp_path / img, question=long_text, answers=("red",)),
            {"image": Image.open(tmp_path / img).convert("RGB")})
    batch = vqa.collate(git, [item])
    assert batch["input_ids"].shape[1] <= 64 and torch.isfinite(vqa.loss(git, batch))
    unlabelled = vqa.collate(git, [(Row(id="q", image=tmp_path / img, question=long_text), item[1])])
    assert vqa.outputs(git, unlabelled)["generated"].shape == (1, 5)
    with pytest.raises(ConfigError, match="max-new-tokens 500 does not fit"):
        create_task("caption", max_new_tokens=500).load(tiny_blip_caption)


def test_model_labels_written_differently_still_receive_their_answers(tmp_path, vqa_manifest):
    """A base model's label "Red" and the data's answer "red" are one class (soft target included)."""
    from modaltune.testing.synthetic import vocabulary_texts, vqa_texts
    from modaltune.testing.tiny_vl import build_vilt_vqa

    model = build_vilt_vqa(tmp_path / "vilt", texts=vocabulary_texts() + vqa_texts(), answers=["Yes", "Red"])
    task = create_task("vqa", train_answers=["red", "blue"])
    loaded = task.load(model)
    assert loaded.state["answers"] == ["Yes", "Red", "blue"]  # "red" is not added twice
    from PIL import Image

    from modaltune.data.rows import Row

    image = Image.new("RGB", (32, 32))
    row = Row(id="a", question="what colour?", answers=("red", "red", "blue"))
    batch = task.collate(loaded, [(row, {"image": image})])
    assert batch["labels"].tolist() == [[0.0, pytest.approx(2 / 3), pytest.approx(1 / 3)]]


def test_rehearsed_vqa_answers_join_the_classifier_vocabulary(tiny_vilt, vqa_manifest, tmp_path):
    img = _image(tmp_path)
    old = _write_jsonl(tmp_path / "old.jsonl", [
        {"image": img, "question": "what is it?", "answers": ["aubergine"]},
        {"image": img, "question": "what is it?", "answers": ["zucchini"]},
    ])
    run = tmp_path / "run"
    metrics = _train("vqa", tiny_vilt, vqa_manifest, run, strategy="linear-probe", epochs=1, replay=str(old),
                     old_task=str(old))
    from transformers import AutoConfig

    labels = set(AutoConfig.from_pretrained(run / "model").id2label.values())
    assert {"aubergine", "zucchini"} <= labels
    assert metrics["forgetting"]["task"] == "vqa" and metrics["replay"]["rows"] == 2


# --------------------------------------------------------------------------- task state


def _vqa_items(questions: list[str]) -> list:
    from PIL import Image

    from modaltune.data.rows import Row

    image = Image.new("RGB", (32, 32), (200, 30, 30))
    return [(Row(id=f"q{i}", question=q), {"image": image}) for i, q in enumerate(questions)]


def _vqa_predictions(task, loaded, items) -> list[dict]:
    with torch.no_grad():
        outputs = task.outputs(loaded, task.collate(loaded, items))
    return task.predict(loaded, outputs, [row for row, _ in items])


def test_one_vqa_task_serves_a_classifier_and_a_generator_side_by_side(tiny_vilt, tiny_git):
    """What a model adds (head mode, answer vocabulary, generation settings) lives in its Loaded.state,
    so loading a second model changes neither the task nor the first model's answers."""
    task = create_task("vqa", train_answers=["red", "aubergine"], max_new_tokens=3)
    options = dict(vars(task))
    items = _vqa_items(["what colour is it?", "what shape?"])
    vilt = task.load(tiny_vilt)
    first = _vqa_predictions(task, vilt, items)
    git = task.load(tiny_git)
    assert vars(task) == options  # load never writes to the task
    assert vilt.state["mode"] == "classifier" and git.state["mode"] == "prefix-lm"
    assert vilt.state["answers"] == [*VILT_ANSWERS, "aubergine"] and "answers" not in git.state
    assert git.state["generation"] == {"num_beams": 1, "max_new_tokens": 3}

    generated = _vqa_predictions(task, git, items)
    assert all(isinstance(p["answer"], str) and "top" not in p for p in generated)
    assert _vqa_predictions(task, vilt, items) == first  # the classifier answers as before the second load
    assert all(p["answer"] in vilt.state["answers"] and len(p["top"]) == 5 for p in first)
    # An attached task takes the head of the model it is attached to, with its own generation settings.
    attached = create_task("vqa", num_beams=2).attach(git)
    assert attached.state == {"mode": "prefix-lm", "generation": {"num_beams": 2, "max_new_tokens": 10}}
    assert attached.model is git.model


def test_saved_state_round_trips_and_user_settings_win(tiny_git, tmp_path):
    task = create_task("caption", num_beams=2, max_new_tokens=4)
    loaded = task.load(tiny_git)
    task.save(loaded, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "modaltune.json").read_text())
    assert saved["task"] == "caption" and saved["state"] == {"generation": {"num_beams": 2, "max_new_tokens": 4}}
    assert create_task("caption").load(tmp_path / "model").state == saved["state"]
    again = create_task("caption", max_new_tokens=2).load(tmp_path / "model")
    assert again.state["generation"] == {"num_beams": 2, "max_new_tokens": 2}  # given settings win
    assert create_task("caption").load(tiny_git).state["generation"] == {"num_beams": 1, "max_new_tokens": 30}


def test_model_saved_before_task_state_had_its_own_key_still_loads(tiny_vilt, tiny_git, tmp_path):
    """modaltune.json written before "state" existed: mode and generation settings at its top level."""
    shutil.copytree(tiny_git, tmp_path / "git")
    (tmp_path / "git" / "modaltune.json").write_text(json.dumps(
        {"format": 1, "task": "vqa", "mode": "prefix-lm", "generation": {"num_beams": 2, "max_new_tokens": 3}}))
    task, loaded = load_model(tmp_path / "git")
    assert loaded.state == {"mode": "prefix-lm", "generation": {"num_beams": 2, "max_new_tokens": 3}}
    [out] = _vqa_predictions(task, loaded, _vqa_items(["what colour is it?"]))
    assert isinstance(out["answer"], str)

    shutil.copytree(tiny_vilt, tmp_path / "vilt")
    (tmp_path / "vilt" / "modaltune.json").write_text(json.dumps(
        {"format": 1, "task": "vqa", "mode": "classifier", "generation": {"num_beams": None, "max_new_tokens": None}}))
    _, loaded = load_model(tmp_path / "vilt")
    assert loaded.state == {"mode": "classifier", "answers": VILT_ANSWERS,
                            "generation": {"num_beams": 1, "max_new_tokens": 10}}
