"""Several processes training one model (``accelerate launch --multi_gpu --num_processes N``, torchrun).

modaltune runs data parallelism itself rather than wrapping the model in DDP: tasks call the
model's own methods (``get_image_features``, ``generate``), never one ``forward``, which DDP needs
to see to synchronise gradients. So each process runs its share of every micro-batch, gradients are
summed across processes once per optimizer step (`all_reduce_grads`, bucketed), and every process
then takes the same optimizer step on the same weights.

``--batch-size`` stays the *global* micro-batch: each micro-batch of the single-process plan is
split across processes (`shard`), and each process weights its loss by its share of the
micro-batch's examples. For a loss that is a mean over examples (classification, VQA, captions'
per-example mean) the summed gradient is the single-process gradient up to floating-point reduction
order, whatever the number of processes; a run can be resumed on another number of processes.
A loss that couples the examples of a batch (retrieve's contrastive loss) sees each process's share
only, as in open_clip without ``--gather-with-grad``.

Only the main process writes (run directory, history, checkpoints, report); the others read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")

#: Gradients are summed in flat buckets of about this many bytes (fewer, larger messages).
_BUCKET_BYTES = 32 << 20


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world > 1


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def processes() -> Processes:
    """This process's rank and the number of processes, setting up the process group (through
    Accelerate, which picks gloo on CPUs and NCCL on GPUs) when a launcher asked for several."""
    if not _initialised() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState()
    if not _initialised():
        return Processes()
    return Processes(torch.distributed.get_rank(), torch.distributed.get_world_size())


def is_main() -> bool:
    return processes().main


def device() -> torch.device:
    """This process's device: its own GPU when several processes share a machine's GPUs."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if processes().several:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda")


def barrier() -> None:
    if processes().several:
        torch.distributed.barrier()


def broadcast(value: T) -> T:
    """The main process's ``value``, on every process."""
    if not processes().several:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every process's ``value``, by rank, on every process."""
    procs = processes()
    if not procs.several:
        return [value]
    out: list[Any] = [None] * procs.world
    torch.distributed.all_gather_object(out, value)
    return out


def shard(keys: Sequence[Any], procs: Processes) -> list[Any]:
    """This process's share of one micro-batch: every ``world``-th key of its target rows and,
    separately, of its rehearsed rows (so each process gets its share of both)."""
    if not procs.several:
        return list(keys)
    target = [k for k in keys if k[0] != "replay"]
    replay = [k for k in keys if k[0] == "replay"]
    return target[procs.rank::procs.world] + replay[procs.rank::procs.world]


def target_count(keys: Iterable[Any]) -> int:
    return sum(1 for k in keys if k[0] != "replay")


def all_reduce_grads(params: Sequence[nn.Parameter]) -> None:
    """Sum every trainable parameter's gradient across processes, in place.

    A parameter with a gradient on some process and none on another (its examples all went to the
    first) gets zeros on the second; one with no gradient anywhere keeps ``None``, so the optimizer
    skips it exactly as a single process would.
    """
    if not processes().several or not params:
        return
    dist = torch.distributed
    flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    grads: list[torch.Tensor] = []
    for param, flag in zip(params, flags.tolist()):
        if flag:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grads.append(param.grad)
    for bucket in _buckets(grads):
        flat = torch._utils._flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        for grad, summed in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            grad.copy_(summed)


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[list[torch.Tensor]]] = {}
    for tensor in tensors:
        runs = groups.setdefault((tensor.dtype, tensor.device), [[]])
        if runs[-1] and sum(t.numel() * t.element_size() for t in runs[-1]) >= _BUCKET_BYTES:
            runs.append([])
        runs[-1].append(tensor)
    return [bucket for runs in groups.values() for bucket in runs if bucket]


def launch_warning(env: dict[str, str] | None = None) -> str | None:
    """A warning when ``accelerate launch`` was asked for several processes but started one.

    Accelerate's simple launcher (``--cpu``, or no ``--multi_gpu`` on a machine without several
    GPUs) runs a single process whatever ``--num_processes`` says, and says nothing; it does set
    ``MASTER_ADDR`` when more than one process was asked for, which is how this is told apart.
    """
    env = dict(os.environ if env is None else env)
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in env
    if not launched_by_accelerate or "MASTER_ADDR" not in env or "WORLD_SIZE" in env:
        return None
    cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    why = "--cpu makes accelerate use its single-process launcher" if cpu else (
        "without --multi_gpu (and without several GPUs) accelerate uses its single-process launcher")
    return (f"accelerate launch asked for several processes, but this is the only one: {why}. "
            "For N processes run `accelerate launch --multi_gpu --num_processes N -m modaltune train ...` "
            "(on CPUs it runs N gloo processes); this run goes on in one process.")


def unsupported_engine(distributed_type: Any) -> str | None:
    """Why an Accelerate engine that shards the model (FSDP, DeepSpeed, Megatron) cannot run a fit."""
    name = str(getattr(distributed_type, "value", distributed_type)).upper()
    if name in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        return (f"accelerate is configured for {name}, which shards the model; modaltune trains data-parallel "
                "(each process holds the whole model, gradients are summed after each step). Use a plain "
                "multi-GPU config: accelerate launch --multi_gpu --num_processes N -m modaltune train ...")
    return None
