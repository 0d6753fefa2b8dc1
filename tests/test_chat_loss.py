"""The chat loss runs the output head only where a target is predicted, and is still the model's own loss."""

from __future__ import annotations

import pytest
import torch

from modaltune.strategies import apply_strategy
from modaltune.tasks.base import create_task


@pytest.mark.parametrize("arch", ["tiny_llava", "tiny_qwen2_vl", "tiny_paligemma"])
def test_chat_loss_is_the_models_own_on_target_positions_only(arch, request, chat_llava_json):
    from modaltune.data import load_dataset
    from modaltune.data.media import get_decoder
    from modaltune.models.base import backbone_of
    from modaltune.tasks.base import task_class
    from modaltune.tasks.chat_batch import model_inputs

    rows, _ = load_dataset(str(chat_llava_json), require=task_class("chat").fields)
    task = create_task("chat")
    torch.manual_seed(0)
    loaded = task.load(request.getfixturevalue(arch))
    apply_strategy(task, loaded, "lora")
    loaded.model.train()
    usable, _ = task.usable_rows(loaded, rows[:6])
    decode = get_decoder("image").load
    batch = task.collate(loaded, [(r, {k: decode(v) for k, v in r.media.items()}) for r in usable[:4]])
    backbone = backbone_of(loaded.model)
    head_rows: list[int] = []
    hook = backbone.get_output_embeddings().register_forward_hook(
        lambda module, args, out: head_rows.append(args[0].shape[:-1].numel())
    )
    trainable = [p for p in loaded.model.parameters() if p.requires_grad]

    def loss_and_grads(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(1)  # the same dropout draws on both sides
        loss = fn()
        return loss.detach(), list(torch.autograd.grad(loss, trainable))

    ours, ours_grads = loss_and_grads(lambda: task.loss(loaded, batch))
    theirs, their_grads = loss_and_grads(lambda: backbone(**model_inputs(batch), labels=batch["labels"]).loss)
    hook.remove()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the head saw only the positions whose next token is a target in some conversation of the batch
    positions = int((batch["labels"][:, 1:] != -100).any(dim=0).sum())
    assert head_rows == [len(usable[:4]) * positions, batch["input_ids"].numel()]
    assert positions < batch["input_ids"].shape[1] - 1  # image and prompt positions were skipped
