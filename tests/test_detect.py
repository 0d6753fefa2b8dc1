"""Open-vocabulary detection (`detect`): prompts and their class spans, OWL's matching loss, the
box frames, per-component training, and train → eval → predict end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from modaltune.models.detection import Owlv2Adapter, OwlViTAdapter, detection_adapter, owl_loss
from modaltune.strategies import apply_strategy
from modaltune.tasks.base import create_task


def _gdino(model_dir: Path, categories: list[str]):
    task = create_task("detect", labels=categories)
    loaded = task.load(model_dir)
    return task, loaded, loaded.model.backbone


def test_long_label_lists_are_split_into_prompts_that_fit(tiny_grounding_dino, tmp_path):
    categories = [f"{colour} {shape}" for colour in ("red", "blue", "green", "yellow")
                  for shape in ("circle", "square", "triangle", "star")]  # 16 names, 3 tokens each with "."
    task, loaded, model = _gdino(tiny_grounding_dino, categories)
    adapter = detection_adapter(model)
    prompts = adapter.prompts(loaded.processor, model, categories)
    limit = model.config.max_text_len  # 32 in the tiny model
    assert len(prompts) == 2  # 16 * 3 + 2 tokens do not fit 32; 10 phrases (30 + 2) do
    assert [c for p in prompts for c in p.classes] == list(range(16))  # every class once, in order
    for prompt in prompts:
        ids = prompt.inputs["input_ids"][0].tolist()
        assert len(ids) <= limit
        assert ids[0] == 101 and ids[-1] == 102 and ids.count(1012) == len(prompt.classes)
    # the batch carries them, and detections cover every class of every prompt
    from PIL import Image

    from modaltune.data.rows import Example
    from modaltune.inference import compute_outputs

    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 48), (120, 30, 30)).save(image)
    out = compute_outputs(task, loaded, [Example("x", image=image)])
    assert out["scores"].shape == (1, 2 * model.config.num_queries, 16)


def test_phrase_scores_map_token_spans_back_to_classes(tiny_grounding_dino):
    categories = ["red circle", "blue square"]
    _, loaded, model = _gdino(tiny_grounding_dino, categories)
    adapter = detection_adapter(model)
    (prompt,) = adapter.prompts(loaded.processor, model, categories)
    ids = prompt.inputs["input_ids"][0].tolist()  # [CLS] red circle . blue square . [SEP]
    assert len(ids) == 8
    width = model.config.max_text_len
    logits = torch.full((1, 2, width), -10.0)
    logits[0, 0, 4:6] = 10.0  # query 0 names both tokens of "blue square"
    logits[0, 1, 1] = 10.0  # query 1 names "red" only: half of "red circle"
    logits[..., len(ids):] = float("-inf")  # past the prompt, as the model pads its logits

    def fake_model(**_):
        return SimpleNamespace(logits=logits, pred_boxes=torch.full((1, 2, 4), 0.5),
                               encoder_last_hidden_state_vision=torch.zeros(1, 3, 32))

    found = adapter.detect(fake_model, {"pixel_values": torch.zeros(1, 3, 8, 8)}, [prompt], 2)
    scores = found.scores[0]
    assert scores[0, 1] == pytest.approx(1.0, abs=1e-4) and scores[0, 0] == pytest.approx(0.0, abs=1e-4)
    assert scores[1, 0] == pytest.approx(0.5, abs=1e-4)  # the mean over the phrase's two tokens
    assert scores[1, 1] == pytest.approx(0.0, abs=1e-4)


def test_owl_matching_loss_is_near_zero_for_a_perfect_prediction():
    targets = [{"class_labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2],
                                                                             [0.7, 0.6, 0.3, 0.4]])},
               {"class_labels": torch.tensor([], dtype=torch.long), "boxes": torch.zeros(0, 4)}]  # a negative
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.1]]).repeat(2, 6, 1)
    logits = torch.full((2, 6, 2), -12.0)
    boxes[0, 2], logits[0, 2, 1] = targets[0]["boxes"][0], 12.0
    boxes[0, 4], logits[0, 4, 0] = targets[0]["boxes"][1], 12.0
    parts, matched = owl_loss(logits, boxes, targets)
    assert parts["loss_bbox"] < 1e-6 and parts["loss_giou"] < 1e-6
    assert parts["loss_ce"] < 1e-4 and parts["loss"] < 1e-3
    assert matched[0].nonzero().flatten().tolist() == [2, 4] and not matched[1].any()
    # a prediction off by 0.1 costs L1 and GIoU, and swapping the class costs the focal term
    shifted = boxes.clone()
    shifted[0, 2, 0] += 0.1
    assert owl_loss(logits, shifted, targets)[0]["loss_bbox"] == pytest.approx(0.1 / 2, rel=1e-4)
    wrong = logits.clone()
    wrong[0, 2] = wrong[0, 2].flip(-1)
    assert owl_loss(wrong, boxes, targets)[0]["loss_ce"] > 1.0


def test_owlv2_boxes_live_in_the_padded_square_owlvit_boxes_in_the_image():
    assert Owlv2Adapter().box_scale(80, 40) == (80.0, 80.0)
    assert OwlViTAdapter().box_scale(80, 40) == (80.0, 40.0)


def test_grounding_dino_recipe_backbone_and_text_frozen_decoder_full(tiny_grounding_dino):
    task, loaded, model = _gdino(tiny_grounding_dino, ["red circle", "blue square"])
    apply_strategy(task, loaded, "towers", towers="backbone=frozen,text=frozen,decoder=full")
    trained = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("backbone.model.decoder.") for n in trained)
    assert any(".layers." in n for n in trained) and any("bbox_embed" in n for n in trained)


def test_detect_strategies_train_their_parts(tiny_owlv2):
    task = create_task("detect", labels=["red circle", "blue square"])
    for strategy, expect in (("linear-probe", ("backbone.class_head.", "backbone.box_head.",
                                               "backbone.objectness_head.", "backbone.layer_norm.")),
                             ("lora", ("lora_",))):
        loaded = task.load(tiny_owlv2)
        apply_strategy(task, loaded, strategy)
        trained = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
        assert trained and all(n.startswith(expect) or any(e in n for e in expect) for n in trained), strategy
    loaded = task.load(tiny_owlv2)
    apply_strategy(task, loaded, "lora")
    wrapped = {n.rsplit(".lora_", 1)[0] for n, _ in loaded.model.named_parameters() if "lora_A" in n}
    assert any(n.endswith("mlp.fc1") for n in wrapped) and any(n.endswith("self_attn.q_proj") for n in wrapped)


def test_a_model_that_is_not_a_detector_is_refused(tiny_clip):
    from modaltune.errors import ModaltuneError

    with pytest.raises(ModaltuneError, match="detect"):
        create_task("detect", labels=["a", "b"]).load(tiny_clip)


def _history_keys(run: Path) -> set[str]:
    keys: set[str] = set()
    for line in (run / "history.jsonl").read_text().splitlines():
        keys |= set(json.loads(line))
    return keys


@pytest.fixture(scope="module")
def old_scenes(tmp_path_factory):
    """Detection data of other categories (triangles and stars): the open vocabulary to keep."""
    from modaltune.testing.synthetic_scenes import write_scenes

    return write_scenes(tmp_path_factory.mktemp("old-scenes"), seed=1, count=4, categories=("triangle", "star"),
                        max_objects=2, negatives=0.0).coco


@pytest.mark.slow
def test_train_eval_predict_end_to_end(tiny_owlv2, detect_scenes, old_scenes, tmp_path, run_cli):
    """OWLv2 fine-tuned on circles and squares, with triangles and stars as the old task rehearsed
    and WiSE-FT'd: metrics.json holds COCO metrics, the zero-shot baseline and the forgetting report;
    every loss part is in history.jsonl; model/ loads in plain transformers; eval reproduces the
    metrics; predict prints boxes and draws them."""
    from modaltune import api
    from modaltune.config import build_config
    from modaltune.testing.conformance import load_plain

    run = tmp_path / "run"
    metrics = api.train(build_config(
        task="detect", model=str(tiny_owlv2), data=str(detect_scenes), strategy="full", epochs=2, batch_size=4,
        lr=1e-3, val_fraction=0.25, old_task=str(old_scenes), replay=str(old_scenes), replay_ratio=0.34,
        wise_ft=0.5, output=str(run)))
    for key in ("map", "map_50", "map_75", "map_small", "mar_100", "ap_per_class"):
        assert key in metrics and key in metrics["zero_shot"], key
    # rehearsed rows of the same task join its categories: the tuned model is still asked for them
    assert list(metrics["ap_per_class"]) == ["circle", "square", "triangle", "star"]
    assert metrics["ap_per_class"]["star"] is None  # no star in the validation images: COCOeval's -1
    assert metrics["forgetting"]["metric"] == "map" and metrics["forgetting"]["before"] is not None
    assert metrics["wise_ft"]["alpha"] == 0.5 and metrics["replay"]["rows"] == 4
    keys = _history_keys(run)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_objectness", "replay"} <= keys
    assert type(load_plain(run / "model")).__name__ == "Owlv2ForObjectDetection"
    state = json.loads((run / "model" / "modaltune.json").read_text())["state"]
    assert state["categories"] == ["circle", "square", "triangle", "star"]
    report = (run / "report.html").read_text()
    assert "Per-class AP" in report and report.count("data:image/png") >= 3

    again = api.evaluate(run, data=None)
    assert again["map"] == pytest.approx(metrics["map"], abs=1e-9)

    images = sorted((detect_scenes.parent / "images").glob("*.png"))[:2]
    drawn = tmp_path / "drawn"
    result = run_cli("predict", str(run), *map(str, images), "--threshold", "0", "--max-detections", "3",
                     "--save-images", str(drawn))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert len(line["boxes"]) == len(line["labels"]) == len(line["scores"]) == 3
        assert set(line["labels"]) <= {"circle", "square", "triangle", "star"}
        assert line["scores"] == sorted(line["scores"], reverse=True)
        assert all(0 <= x0 <= x1 and 0 <= y0 <= y1 for x0, y0, x1, y1 in line["boxes"])
    assert sorted(p.name for p in drawn.iterdir()) == [p.name for p in images]


def test_zero_shot_predict_on_a_base_model_with_labels(tiny_grounding_dino, detect_scenes, run_cli):
    image = sorted((detect_scenes.parent / "images").glob("*.png"))[0]
    result = run_cli("predict", str(tiny_grounding_dino), str(image), "--task", "detect", "--labels",
                     "circle,blue square", "--threshold", "0.0", "--max-detections", "5")
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert len(line["boxes"]) == 5 and set(line["labels"]) <= {"circle", "blue square"}


def test_strategy_auto_through_the_cli_records_the_advice(tiny_grounding_dino, detect_scenes, tmp_path, run_cli):
    """`modaltune train --task detect --strategy auto`: the advisor measures the shift with COCO mAP
    (a random model finds nothing: far), trains what it picked, and the run records it."""
    run = tmp_path / "auto"
    result = run_cli("train", "--task", "detect", "--model", str(tiny_grounding_dino), "--data", str(detect_scenes),
                     "--strategy", "auto", "--epochs", "1", "--batch-size", "4", "--output", str(run))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    advice = metrics["advice"]
    assert advice["inputs"]["shift"]["metric"] == "map" and advice["inputs"]["shift"]["shift"] >= 0.85
    assert advice["inputs"]["data"]["classes"] is None  # boxes, not one label per row
    assert advice["strategy"] == metrics["run"]["strategy"]["strategy"] == "last-n"
    assert advice["layers"] == metrics["run"]["strategy"]["layers"] == 1
    trained = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["kind"] for h in trained].count("step") == 2  # 6 training rows at batch 4, the one epoch asked
    assert "Advisor (strategy auto)" in (run / "report.html").read_text()
    assert "strategy:\n  name: auto\n" in (run / "config.yaml").read_text()  # a rerun advises again


@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_owl_heads_over_the_image_states_are_the_models_forward(kind, tmp_path):
    """The split a linear probe's feature cache trains through: the heads over the tower's final
    states and the queries embedded once give what the whole model's forward gives."""
    from modaltune.testing.tiny_detect import build_owl

    model_dir = build_owl(tmp_path / kind, kind=kind, texts=["red circle", "blue square"], seed=0)
    task = create_task("detect", labels=["red circle", "blue square"])
    loaded = task.load(model_dir)
    model = loaded.model.backbone.eval()
    adapter = detection_adapter(model)
    (prompt,) = adapter.prompts(loaded.processor, model, ["red circle", "blue square"])
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = adapter._forward(model, {"pixel_values": pixels}, prompt)
        queries = adapter.query_embeds(model, prompt, pixels.device)
        split = adapter.heads(model, adapter.image_states(model, pixels), *queries)
    for name in ("logits", "pred_boxes", "image_embeds") + (("objectness_logits",) if kind == "owlv2" else ()):
        torch.testing.assert_close(getattr(split, name), getattr(whole, name), rtol=1e-5, atol=1e-5, msg=name)


def _probe(model: Path, data: Path, out: Path, **options):
    from modaltune import api
    from modaltune.config import build_config

    return api.train(build_config(
        task="detect", model=str(model), data=str(data), strategy="linear-probe", epochs=options.pop("epochs", 2),
        batch_size=3, lr=1e-3, val_fraction=0.25, zero_shot_baseline=False, output=str(out),
        cache_dir=str(out.parent / "features"), **options))


def test_owl_linear_probe_trains_the_same_from_the_feature_cache(tiny_owlv2, detect_scenes, tmp_path):
    from safetensors.torch import load_file

    cached = _probe(tiny_owlv2, detect_scenes, tmp_path / "cached", feature_cache=True)
    plain = _probe(tiny_owlv2, detect_scenes, tmp_path / "plain", feature_cache=False)
    info = cached["run"]["feature_cache"]
    assert info["split"] == "detect:owlv2-image-states" and not info["hit"]
    assert plain["run"]["feature_cache"] is None
    ours = load_file(str(tmp_path / "cached" / "model" / "model.safetensors"))
    theirs = load_file(str(tmp_path / "plain" / "model" / "model.safetensors"))
    base = load_file(str(tiny_owlv2 / "model.safetensors"))
    changed = {k.split(".")[0] for k in ours if not torch.equal(ours[k], base[k])}
    assert changed == {"class_head", "box_head", "objectness_head", "layer_norm"}  # the heads trained, nothing else
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)
    steps = [[json.loads(line)["loss"] for line in (tmp_path / run / "history.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "step"] for run in ("cached", "plain")]
    assert steps[0] == pytest.approx(steps[1], rel=1e-5)
    for key in ("map", "map_50", "mar_100"):
        assert cached[key] == pytest.approx(plain[key], abs=1e-6), key
    # a second run reads the stored image states
    again = _probe(tiny_owlv2, detect_scenes, tmp_path / "again", feature_cache=True)
    assert again["run"]["feature_cache"]["hit"] and again["map"] == pytest.approx(cached["map"], abs=1e-6)


def test_the_detection_feature_cache_is_bypassed_where_it_cannot_hold(tiny_owlv2, tiny_grounding_dino):
    """Augmentation moves pixels (the cache is bypassed as for every task: the loop's rule), other
    strategies train below the heads, LoRA changes the towers, and Grounding DINO's heads read
    prompt-conditioned states: no split."""
    task = create_task("detect", labels=["red circle", "blue square"])
    for strategy in ("full", "last-n", "lora"):
        loaded = task.load(tiny_owlv2)
        apply_strategy(task, loaded, strategy, layers=1 if strategy == "last-n" else None)
        assert task.cache_split(loaded, strategy, None) is None, strategy
    loaded = task.load(tiny_owlv2)
    apply_strategy(task, loaded, "linear-probe")
    assert task.cache_split(loaded, "linear-probe", None) is not None
    loaded = task.load(tiny_grounding_dino)
    apply_strategy(task, loaded, "linear-probe")
    assert task.cache_split(loaded, "linear-probe", None) is None


def test_augmented_owl_probe_runs_without_the_cache(tiny_owlv2, detect_scenes, tmp_path):
    metrics = _probe(tiny_owlv2, detect_scenes, tmp_path / "aug", feature_cache=True, augment=True, epochs=1)
    assert metrics["run"]["feature_cache"] is None
