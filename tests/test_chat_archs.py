"""Each tiny chat architecture through the chat task: batches of images of different sizes and aspect
ratios, a LoRA train step, and the merged model/ generating what the training-time model generates.

Coverage of issue 17's per-architecture checks, by architecture (llava, llava_next, qwen2_vl,
idefics3, paligemma):

- the label mask against an independent computation: tests/test_chat_data.py (the template's own
  ``{% generation %}`` mask and the decoded targets; PaliGemma's processor-made ``suffix`` labels);
- a LoRA train step and greedy agreement of the merged model: here, every architecture;
- mixed aspect ratios in one batch: here, the dynamic-resolution ones (LLaVA-NeXT tiles, Qwen2-VL
  patch grids, Idefics3 image splitting), whose image inputs differ in shape from image to image.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from modaltune.data.conversation import Conversation, image_names
from modaltune.data.rows import Row
from modaltune.strategies import apply_strategy, export
from modaltune.tasks import chat_batch
from modaltune.tasks.base import Loaded, create_task

ARCHS = ("llava", "llava_next", "qwen2_vl", "idefics3", "paligemma")
DYNAMIC = ("llava_next", "qwen2_vl", "idefics3")
#: (width, height) of each conversation's images: square, wide, tall, two images of which one is very
#: wide, and none (text-only rows are valid chat data mixed into batches of image rows).
MIXED = (((32, 32),), ((64, 32),), ((32, 64),), ((48, 20), (64, 64)), ())


@pytest.fixture(scope="module")
def chat_model(request: pytest.FixtureRequest) -> dict[str, Path]:
    return {arch: request.getfixturevalue(f"tiny_{arch}") for arch in ARCHS}


def _item(index: int, sizes: tuple[tuple[int, int], ...], answer: str) -> tuple[Row, dict[str, Image.Image]]:
    colours = ("red", "blue", "green", "yellow", "purple")
    question = "<image>" * len(sizes) + "\nWhat colour is the shape?" if sizes else "What is two plus three?"
    conversation = Conversation.of(("user", question), ("assistant", answer))
    names = image_names(len(sizes))
    images = {
        name: Image.new("RGB", size, colours[(index + k) % len(colours)])
        for k, (name, size) in enumerate(zip(names, sizes))
    }
    row = Row(f"row{index}", values={"conversation": conversation}, media={n: Path(f"{n}.png") for n in names})
    return row, images


def _per_row_loss(loaded: Loaded, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over each conversation's own target tokens."""
    logits = loaded.model.backbone(**chat_batch.model_inputs(batch)).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    ce = nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    return (ce * mask).sum(1) / mask.sum(1)


def _prompt_logits(loaded: Loaded, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token logits at the end of each (left-padded) generation prompt."""
    prompt = {k[len(chat_batch.GEN) :]: v for k, v in batch.items() if k.startswith(chat_batch.GEN)}
    return loaded.model.backbone(**chat_batch.model_inputs(prompt)).logits[:, -1].float()


def test_padded_cat_pads_every_dimension_but_the_first():
    a, b = torch.ones(1, 2, 3), torch.full((2, 3, 1), 2.0)
    out = chat_batch.padded_cat([a, b])
    assert out.shape == (3, 3, 3)
    assert torch.equal(out[0, :2, :3], a[0]) and out[0, 2:].abs().sum() == 0
    assert torch.equal(out[1:, :3, :1], b) and out[1:, :, 1:].abs().sum() == 0
    same = [torch.ones(4, 96), torch.ones(2, 96)]  # Qwen2-VL patch rows: only concatenated
    assert torch.equal(chat_batch.padded_cat(same), torch.ones(6, 96))
    with pytest.raises(ValueError, match="different ranks"):
        chat_batch.padded_cat([torch.ones(1, 2), torch.ones(1, 2, 3)])


@pytest.mark.parametrize("arch", DYNAMIC)
def test_mixed_aspect_ratios_batch_as_each_conversation_alone(arch, chat_model):
    """One batch of images whose sizes give different numbers of tiles / patches / image tokens: each
    conversation's loss and its next-token logits at the generation prompt are what it gets batched
    alone, and a train step on the batch runs and changes the model."""
    torch.manual_seed(0)
    task = create_task("chat", max_new_tokens=2)
    loaded = task.load(chat_model[arch])
    items = [
        _item(i, sizes, answer)
        for i, (sizes, answer) in enumerate(zip(MIXED, ("red", "It is blue.", "green", "yellow and purple", "5")))
    ]
    loaded.model.eval()
    with torch.no_grad():
        batch = task.collate(loaded, items)
        alone = [task.collate(loaded, [item]) for item in items]
        shapes = {tuple(b["pixel_values"].shape[1:]) for b in alone if "pixel_values" in b}
        assert len(shapes) > 1 or arch == "qwen2_vl", shapes  # the sizes really give different image inputs
        image_token = loaded.processor.image_token_id
        tokens = [int((b["input_ids"] == image_token).sum()) for b in alone]
        assert len(set(tokens[:4])) >= 3, tokens  # ... and different numbers of image tokens
        batched = _per_row_loss(loaded, batch)
        single = torch.cat([_per_row_loss(loaded, b) for b in alone])
        torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            _prompt_logits(loaded, batch), torch.cat([_prompt_logits(loaded, b) for b in alone]), atol=1e-4, rtol=1e-4
        )

    loaded.model.train()
    train_batch = task.collate(loaded, items)
    assert not any(k.startswith(chat_batch.GEN) for k in train_batch)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    optimizer = torch.optim.SGD(loaded.model.parameters(), lr=0.1)
    loss = task.loss(loaded, train_batch)
    loss.backward()
    grads = [p.grad for p in loaded.model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    changed = [n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])]
    assert any("vision" in n or "visual" in n for n in changed)  # the images reached the loss
    assert any("language_model" in n or "text_model" in n for n in changed)


def _lora_items(arch: str) -> list[tuple[Row, dict[str, Image.Image]]]:
    wide = (64, 32) if arch in DYNAMIC else (32, 32)
    return [_item(0, ((32, 32),), "It is red."), _item(1, (wide,), "It is blue.")]


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_train_step_and_merged_model_generates_alike(arch, chat_model, tmp_path):
    """Stage 2 (vision frozen, projector full, LoRA on the language model): a few steps lower the loss
    and move only the adapters and the projector; model/ (merged) loads in plain transformers and
    greedily generates the tokens the training-time (unmerged PEFT) model generates."""
    from transformers import AutoModelForImageTextToText

    from modaltune.models.chat_processor import load_processor
    from modaltune.tasks.chat_encoding import prompt_inputs

    torch.manual_seed(0)
    new_tokens = 6
    task = create_task("chat", max_new_tokens=new_tokens)
    loaded = task.load(chat_model[arch])
    apply_strategy(task, loaded, "lora", towers="vision=frozen,projector=full,language=lora")
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), sorted(trainable)[:5]
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in loaded.model.parameters() if p.requires_grad], lr=2e-2, weight_decay=0.0)
    items = _lora_items(arch)
    loaded.model.train()
    batch = task.collate(loaded, items)
    losses = []
    for _ in range(8):
        loss = task.loss(loaded, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses
    changed = {n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_B" in n for n in changed)  # B starts at zero: the adapters now change the output

    loaded.model.eval()
    ours = chat_batch.generate(
        loaded, task.collate(loaded, items), {"max_new_tokens": new_tokens, "do_sample": False}, new_tokens
    )
    export(task, loaded, tmp_path / "model")
    plain = AutoModelForImageTextToText.from_pretrained(tmp_path / "model").eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    processor = load_processor(tmp_path / "model")
    ends = chat_batch.eos_ids(plain, processor.tokenizer)
    for (row, media), expected in zip(items, ours.tolist()):
        inputs = prompt_inputs(processor, row.get("conversation"), list(media.values()))
        with torch.no_grad():
            out = plain.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, eos_token_id=ends)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        cut = next((i for i, t in enumerate(new) if t in ends), len(new))
        assert new[:cut] == [t for t in expected if t >= 0], (arch, new, expected)
