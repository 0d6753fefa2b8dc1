"""Forgetting for chat models (issue 17, point 7): general chat data as ``--old-task`` and ``--replay``.

A chat model tuned on questions about shapes may lose its general skills; text-only conversations
(arithmetic, spelling) and general multimodal ones are what it is scored on before and after (loss,
token accuracy, exact match) and what it rehearses while training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modaltune.testing.synthetic_chat import write_llava_json, write_messages_jsonl


@pytest.fixture(scope="module")
def forgetting_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Target: colour and count questions. Old task: general chat, text-only (arithmetic, spelling) and about
    images (descriptions, positions), as messages JSONL. Replay: text-only conversations alone, so the
    rehearsed part of every batch has no image inputs at all beside a target part that has them."""
    root = tmp_path_factory.mktemp("chat-forgetting")
    return {
        "target": write_llava_json(root / "target", 12, seed=1, kinds=("colour", "count")),
        "old": write_messages_jsonl(root / "old", 6, seed=2, kinds=("text", "describe", "position")),
        "replay": write_llava_json(root / "replay", 6, seed=3, kinds=("text",)),
    }


@pytest.mark.slow  # a whole api.train with old-task scoring before and after: 16-29 s at load 8-10
def test_chat_train_scores_the_old_task_before_and_after_and_rehearses(
    tiny_llava, forgetting_data, tmp_path, monkeypatch
):
    from modaltune import api
    from modaltune.config import build_config
    from modaltune.forgetting import replay_split
    from modaltune.trainer import terms

    seen: list[tuple[int, int]] = []  # (target rows, replay rows) of every micro-batch that rehearsed
    original = terms.ReplayTerm.__call__

    def counting(self, batch):
        if "replay" in batch:
            seen.append((terms.batch_len(batch["target"]), terms.batch_len(batch["replay"])))
        return original(self, batch)

    monkeypatch.setattr(terms.ReplayTerm, "__call__", counting)
    run = tmp_path / "run"
    cfg = build_config(
        task="chat",
        model=str(tiny_llava),
        data=str(forgetting_data["target"]),
        strategy="lora",
        epochs=1,
        batch_size=4,
        lr=5e-3,
        output=str(run),
        max_new_tokens=4,
        old_task=str(forgetting_data["old"]),
        replay=str(forgetting_data["replay"]),
        replay_ratio=0.5,
        zero_shot_baseline=False,
    )
    metrics = api.train(cfg)

    # the old task: general conversations, read as chat and scored on the model before and after
    report = metrics["forgetting"]
    assert report["task"] == "chat" and report["rows"] == 6 and report["metric"] == "token_accuracy"
    assert 0 <= report["before"] <= 1 and 0 <= report["after"] <= 1
    assert report["drop"] == pytest.approx(report["before"] - report["after"], abs=1e-6)
    for name in ("loss", "exact_match", "perplexity"):
        before, after = report["metrics"][name]["before"], report["metrics"][name]["after"]
        assert isinstance(before, float) and isinstance(after, float), (name, before, after)
    assert report["metrics"]["loss"]["before"] > 0
    # training moved the model: its loss on the old rows changed (LoRA B starts at zero, so only training can)
    assert report["metrics"]["loss"]["after"] != report["metrics"]["loss"]["before"]
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["forgetting"] == report

    # replay: every micro-batch carried its share of the general rows on top of the target rows
    target_per_batch, old_per_batch = replay_split(4, 0.5)
    steps = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["kind"] == "step"]
    assert steps and len(seen) == len(steps)
    assert all(old == old_per_batch and 0 < target <= target_per_batch for target, old in seen)
    assert all(s["replay"] > 0 for s in steps)  # the rehearsal loss, logged beside the target's
    assert metrics["replay"]["rows"] == 6 and metrics["replay"]["ratio"] == 0.5 and not metrics["replay"]["skipped"]
