"""The chat task (issue 17): training through the trainer, evaluation, export, predict and the terminal chat.

The data, templates and masking are tested in the chat-data tests; here: the loss is normalised per
target token whatever the accumulation split, the merged model/ generates what the training-time
model generated, LLaVA's stages as components, --quantize without CUDA, and the whole path end to end.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from modaltune.errors import ConfigError
from modaltune.strategies import apply_strategy
from modaltune.tasks.base import create_task


def _rows(data: Path):
    from modaltune.data import load_dataset
    from modaltune.tasks.base import task_class

    rows, _ = load_dataset(str(data), require=task_class("chat").fields)
    return rows


def _trainable(loaded) -> set[str]:
    return {n for n, p in loaded.model.named_parameters() if p.requires_grad}


def test_loss_is_per_target_token_whatever_the_accumulation_split(tiny_llava, chat_llava_json):
    """One optimizer step over the same 4 conversations as 1x4, 2x2 and 4x1 micro-batches gives the same
    update: the conversations have different numbers of answer tokens, so a mean of micro-batch means
    would weigh a short answer's tokens more when it is split off."""
    from modaltune.config import build_config
    from modaltune.run import RunDir
    from modaltune.trainer.loop import fit

    rows = _rows(chat_llava_json)[:4]
    task = create_task("chat", max_new_tokens=2)

    def step(batch: int, accum: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        loaded = task.load(tiny_llava)
        apply_strategy(task, loaded, "full")
        before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
        out = Path(tempfile.mkdtemp())
        cfg = build_config(task="chat", model=str(tiny_llava), data="unused", strategy="full", epochs=1,
                           batch_size=batch, grad_accum=accum, lr=1e-2, optimizer="sgd", momentum=0.0,
                           weight_decay=0.0, max_grad_norm=None, warmup_ratio=0.0, schedule="constant",
                           output=str(out))
        fit(cfg, task, loaded, rows, [], RunDir(out).create())
        return {n: p.detach() - before[n] for n, p in loaded.model.named_parameters()}

    loaded = task.load(tiny_llava)
    loaded.model.train()
    from modaltune.data.media import get_decoder

    decode = get_decoder("image").load
    counts = [task.loss_weight(task.collate(loaded, [(r, {k: decode(v) for k, v in r.media.items()})])) for r in rows]
    assert len(set(counts)) > 1, f"the check needs answers of different lengths, got {counts} target tokens"
    whole, halves, singles = step(4, 1), step(2, 2), step(1, 4)
    scale = max(d.abs().max().item() for d in whole.values())
    assert scale > 1e-4
    # float summation order alone: a mean of micro-batch means would be off by tens of percent of scale
    for other in (halves, singles):
        worst = max((whole[name] - other[name]).abs().max().item() for name in whole)
        assert worst < 1e-4 * scale, (worst, scale)


def test_llava_stages_as_components(tiny_llava):
    """Stage 1 (projector only = the linear probe), stage 2 (projector full + LoRA on the language model,
    vision frozen), and LoRA reaching the vision tower and projector when asked."""
    task = create_task("chat")
    probe = task.load(tiny_llava)
    apply_strategy(task, probe, "linear-probe")
    assert _trainable(probe) and all(".multi_modal_projector." in n for n in _trainable(probe))

    stage2 = task.load(tiny_llava)
    apply_strategy(task, stage2, "lora", towers="vision=frozen,projector=full,language=lora")
    names = _trainable(stage2)
    assert any("multi_modal_projector.modules_to_save" in n for n in names)
    assert any("language_model" in n and "lora_" in n for n in names)
    assert not any("vision_tower" in n for n in names)

    default = task.load(tiny_llava)
    apply_strategy(task, default, "lora")
    adapted = {n for n in _trainable(default)}
    assert adapted and all("language_model.layers" in n and "lora_" in n for n in adapted)
    assert any("mlp.down_proj" in n for n in adapted)  # every linear layer, not only attention

    everywhere = task.load(tiny_llava)
    apply_strategy(task, everywhere, "towers", towers="vision=lora,projector=lora,language=lora")
    reached = _trainable(everywhere)
    assert any("vision_tower" in n for n in reached) and any("multi_modal_projector" in n for n in reached)

    last = task.load(tiny_llava)
    apply_strategy(task, last, "last-n", layers=1)
    trained = _trainable(last)
    assert any("language_model.layers.1." in n for n in trained)
    assert not any("language_model.layers.0." in n or "vision_tower" in n for n in trained)


def test_quantize_without_cuda_is_a_config_error_at_start(tiny_llava, chat_llava_json, tmp_path):
    from modaltune import api
    from modaltune.config import build_config

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --quantize is allowed here")
    cfg = build_config(task="chat", model=str(tiny_llava), data=str(chat_llava_json), strategy="lora",
                       quantize="4bit", output=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        api.train(cfg)
    assert not (tmp_path / "run" / "history.jsonl").exists()  # nothing trained
    with pytest.raises(ConfigError, match="cannot be trained directly"):
        build_config(task="chat", model=str(tiny_llava), data=str(chat_llava_json), strategy="full", quantize="8bit")


@pytest.mark.slow
def test_train_eval_predict_chat_end_to_end(tiny_llava, chat_llava_json, tmp_path, monkeypatch):
    """LLaVA stage 2 with gradient checkpointing, then eval, predict and a piped terminal chat; the
    merged model/ loads in plain transformers and greedily generates the training-time model's tokens."""
    from transformers import AutoModelForImageTextToText

    from modaltune import api
    from modaltune.config import build_config

    run = tmp_path / "run"
    cfg = build_config(task="chat", model=str(tiny_llava), data=str(chat_llava_json), strategy="lora",
                       towers="vision=frozen,projector=full,language=lora", epochs=2, batch_size=4, lr=5e-3,
                       grad_checkpointing=True, output=str(run), max_new_tokens=5)
    metrics = api.train(cfg)
    for key in ("loss", "perplexity", "token_accuracy", "exact_match", "vqa_accuracy", "bleu_4", "rouge_l", "cider"):
        assert key in metrics and key in metrics["zero_shot"], key
    assert metrics["short_rows"] + metrics["long_rows"] == metrics["run"]["val_rows"]
    assert metrics["loss"] < metrics["zero_shot"]["loss"]  # it learnt the answers' tokens
    sample = metrics["samples"][0]
    assert {"question", "prediction", "references"} <= set(sample)
    assert "base model (zero-shot)" in (run / "report.html").read_text()

    model_dir = run / "model"
    assert (model_dir / "adapter" / "adapter_config.json").is_file()
    assert json.loads((model_dir / "modaltune.json").read_text())["state"]["generation"]["max_new_tokens"] == 5
    saved_template = [p for p in model_dir.iterdir() if p.name.startswith("chat_template")]
    assert saved_template and saved_template[0].stat().st_size > 0  # the processor's chat template

    again = api.evaluate(run, chat_llava_json)
    assert again["token_accuracy"] >= 0 and again["loss"] > 0

    image = sample["image"]
    answer = api.predict(run, [image], question="What colour is the shape?")[0]["answer"]

    # plain transformers: the merged model greedily generates what modaltune's loaded model does
    from modaltune.chat_session import load_image
    from modaltune.data.conversation import Conversation
    from modaltune.tasks.chat_batch import answer as answer_of
    from modaltune.tasks.chat_encoding import prompt_inputs

    task, loaded = api.load_model(run)
    conversation = Conversation.of(("user", "<image>\nWhat colour is the shape?"))
    ours = answer_of(loaded, conversation, [load_image(image)], loaded.state["generation"])
    assert ours == answer
    plain = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    inputs = prompt_inputs(loaded.processor, conversation, [load_image(image)])
    with torch.no_grad():
        out = plain.generate(**inputs, do_sample=False)  # max_new_tokens: saved in generation_config.json
    text = loaded.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip() == ours

    # the terminal chat, piped: two turns, an image on the first, history kept
    from modaltune.chat_session import open_chat
    from modaltune.cli.chat import converse

    session = open_chat(run)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/image {image}\nWhat colour is the shape?\nAnd how many?\n/quit\n"))
    printed = io.StringIO()
    monkeypatch.setattr(sys, "stdout", printed)
    converse(session, [], interactive=False)
    lines = printed.getvalue().splitlines()
    assert len(lines) == 2 and lines[0] == ours
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert len(session.images) == 1


def test_chat_metrics_by_answer_type():
    from modaltune.metrics.chat import answer_type, chat_metrics

    assert answer_type("two", 3) == "short" and answer_type("a red circle on the left", 3) == "long"
    outputs = {"loss_sum": torch.tensor([2.0, 6.0, 4.0]), "tokens": torch.tensor([1.0, 3.0, 4.0]),
               "correct": torch.tensor([1.0, 0.0, 2.0])}
    references = ["Red", "There is one blue square at the top left", None]
    metrics = chat_metrics(outputs, ["red", "There is one blue square at the top left", "anything"], references, 3)
    assert metrics["loss"] == pytest.approx(12 / 8) and metrics["token_accuracy"] == pytest.approx(3 / 8)
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** 1.5, rel=1e-5)
    assert metrics["short_rows"] == 1 and metrics["long_rows"] == 1
    assert metrics["exact_match"] == 1.0 and metrics["vqa_accuracy"] == 1.0  # normalised: "Red" == "red"
    assert metrics["bleu_4"] > 0.99 and metrics["rouge_l"] > 0.99
    wrong = chat_metrics(outputs, ["blue", "nothing", ""], references, 3)
    assert wrong["exact_match"] == 0.0 and wrong["rouge_l"] == 0.0
