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

With ``accelerate launch --use_fsdp --fsdp_version 2`` the model is sharded instead (`Sharded`,
torch's FSDP2 ``fully_shard``): the same plan, shares and loss weights, but FSDP gathers each
block's parameters in its forward and reduce-scatters (sums) its gradients in backward. Every
process then runs every forward (evaluation too), and checkpoints hold the weights and optimizer
state gathered whole, in the single-process format.

With ``accelerate launch --use_deepspeed --zero_stage 1|2`` DeepSpeed's engine partitions the
optimizer state (and gradients) instead, driven by the same plan and loss weights: `trainer.zero`.
"""

from __future__ import annotations

import atexit
import gc
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

        from modaltune.trainer import zero

        zero.prepare_cpu()  # PartialState starts DeepSpeed's communication when launched for it
        PartialState()
        # The main process writes and scores the run after the fit while the others are already done.
        # A process that reaches interpreter teardown with a live gloo group aborts now and then
        # (std::terminate in the group's thread destructors: 2 exits in 8 here), which the launcher
        # reports as the whole run failing; leaving the group first is a clean exit.
        atexit.register(_leave)
    if not _initialised():
        return Processes()
    return Processes(torch.distributed.get_rank(), torch.distributed.get_world_size())


def _leave() -> None:
    if _initialised():
        # FSDP2's sharded modules (reference cycles through their hooks) hold the group itself, which
        # destroying it does not free: they would take it to interpreter teardown and abort the same
        # way (2 exits in 32 of a bare FSDP2 run here, none in 40 after collecting them first).
        gc.collect()
        torch.distributed.destroy_process_group()


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


def unsupported_engine(distributed_type: Any, fsdp_version: int | None = None) -> str | None:
    """Why an Accelerate engine cannot run a fit: FSDP other than version 2, Megatron. (DeepSpeed's
    ZeRO stages are checked against its config: `trainer.zero`.)"""
    name = str(getattr(distributed_type, "value", distributed_type)).upper()
    if name == "FSDP" and fsdp_version != 2:
        return (f"accelerate is configured for FSDP version {fsdp_version}; modaltune shards the model with "
                "FSDP2 (torch's fully_shard) only. Pass --fsdp_version 2 (or fsdp_version: 2 in the accelerate "
                "config): accelerate launch --use_fsdp --fsdp_version 2 --num_processes N "
                "-m modaltune train ...")
    if name == "MEGATRON_LM":
        return (f"accelerate is configured for {name}, which modaltune does not run: Megatron-LM needs its own model "
                "code, while modaltune trains transformers models through their own methods. Use FSDP2 to shard "
                "the model "
                "(accelerate launch --use_fsdp --fsdp_version 2 --num_processes N -m modaltune train "
                "...) or plain data parallelism (accelerate launch --multi_gpu --num_processes N ...)")
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def engine(accelerator: Any) -> tuple[str, int | None]:
    """The engine the run was launched for, and its FSDP version.

    On CPUs Accelerate never reports FSDP (it picks FSDP only for GPU-like devices) although
    ``accelerate launch --use_fsdp`` starts the processes, sets up the gloo group and says
    ``ACCELERATE_USE_FSDP`` in the environment: that is read here too, so FSDP runs on CPUs as it
    does on GPUs.
    """
    name = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)).upper()
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if name == "FSDP" and plugin is not None:
        return name, int(plugin.fsdp_version)
    if _env_flag("ACCELERATE_USE_FSDP"):
        return "FSDP", int(os.environ.get("FSDP_VERSION", "1"))
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "DEEPSPEED", None
    if _env_flag("ACCELERATE_USE_MEGATRON_LM"):
        return "MEGATRON_LM", None
    return name, None


def fsdp_settings(accelerator: Any) -> dict[str, Any] | None:
    """The FSDP2 options the run was launched with (Accelerate's plugin, or the launcher's
    environment on CPUs), or None when it was not launched for FSDP."""
    name, _ = engine(accelerator)
    if name != "FSDP":
        return None
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None:
        return {"reshard_after_forward": bool(plugin.reshard_after_forward)}
    return {"reshard_after_forward": os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"}


class _Root(nn.Module):
    """The outermost FSDP unit. Tasks call their model through its own methods
    (``get_image_features``, ``generate``), never one ``forward``; FSDP gathers the parameters of a
    unit in that unit's forward, so whatever touches the model runs inside this forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


class Sharded:
    """A copy of ``model`` sharded across the processes with FSDP2 (``fully_shard``): one unit per
    transformer block (``blocks``, found by the task), one for everything else. Scalars (CLIP's logit
    scale), which fully_shard cannot shard, stay whole on every process and have their gradients
    summed like plain data parallelism's.

    Gradients are summed across processes, never averaged, as `all_reduce_grads` does: the loop
    weights each process's loss by its share of the micro-batch. The plain ``model`` is left as it
    was (on its device, unsharded) and receives the trained weights at the end (`copy_to`).
    """

    def __init__(self, model: nn.Module, blocks: Iterable[nn.Module], device: torch.device, *,
                 reshard_after_forward: bool = True) -> None:
        import copy

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        names = {id(module): name for name, module in model.named_modules()}
        self.model = copy.deepcopy(model)
        self.root = _Root(self.model)
        mesh = init_device_mesh(device.type, (processes().world,))
        ignored = {p for p in self.model.parameters() if p.ndim == 0}
        units = [self.model.get_submodule(names[id(block)]) for block in blocks]
        for param in ignored:  # fully_shard moves the parameters it shards only
            param.data = param.data.to(device)
        for unit in [*units, self.root]:
            fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward,
                        ignored_params=ignored or None)
            # A sum (gloo has no averaging reduce-scatter; the loop's loss weights expect a sum).
            unit.set_gradient_divide_factor(1.0)  # type: ignore[operator]
            unit.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]
        self.replicated = [p for p in self.model.parameters() if p in ignored and p.requires_grad]

    def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` with the sharded model's parameters gathered as it calls them; every process
        must run the same calls in the same order."""
        return self.root(fn, *args)

    def reshard(self) -> None:
        """Free every gathered parameter (after an evaluation, which has no backward to do it)."""
        from torch.distributed.fsdp import FSDPModule

        for module in self.root.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def full_trainable(self) -> dict[str, torch.Tensor]:
        """Every trainable parameter whole, on the CPU, by the plain model's names (what a
        single-process checkpoint holds); every process must call it."""
        self.reshard()
        return {name: _whole(p).cpu().contiguous() for name, p in self.model.named_parameters() if p.requires_grad}

    def copy_to(self, model: nn.Module) -> None:
        """Put the trained weights into ``model``, the plain (unsharded) original; every process
        must call it."""
        self.reshard()
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                params[name].copy_(_whole(param))
            buffers = dict(model.named_buffers())
            for name, buffer in self.model.named_buffers():
                buffers[name].copy_(buffer)


def _is_dtensor(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded one (a collective: every process must ask), else itself."""
    return tensor.detach().full_tensor() if _is_dtensor(tensor) else tensor.detach()  # type: ignore[attr-defined]


def copy_into(param: torch.Tensor, whole: torch.Tensor) -> None:
    """``param.copy_(whole)`` for a plain or a sharded parameter (then this process's shard of
    ``whole``; every process must call it in the same order)."""
    if _is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        dparam: Any = param
        param.copy_(distribute_tensor(whole.to(dparam.to_local().device, dparam.dtype), dparam.device_mesh,
                                      dparam.placements))
    else:
        param.copy_(whole)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with each sharded state tensor whole, on the CPU: the format of a
    single-process optimizer, so a checkpoint resumes on any number of processes, sharded or not.
    Every process must call it."""
    state = optimizer.state_dict()
    state["state"] = {key: {name: _whole(value).cpu() if _is_dtensor(value) else value
                            for name, value in per_param.items()}
                      for key, per_param in state["state"].items()}
    return state


def local_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A whole (single-process format) optimizer state with each tensor of a sharded parameter cut
    to this process's shard; every process must call it."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(_is_dtensor(p) for p in params):
        return state
    from torch.distributed.tensor import distribute_tensor

    out = dict(state)
    out["state"] = {}
    for key, per_param in state["state"].items():
        param: Any = params[int(key)]
        out["state"][key] = {
            name: distribute_tensor(value.to(param.to_local().device), param.device_mesh, param.placements)
            if _is_dtensor(param) and isinstance(value, torch.Tensor) and value.shape == param.shape else value
            for name, value in per_param.items()}
    return out


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over sharded and whole gradients together: each sharded
    gradient's squares are summed across processes, whole ones (already summed) counted once."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    sharded = [g.to_local() for g in grads if _is_dtensor(g)]  # type: ignore[attr-defined]
    whole = [g for g in grads if not _is_dtensor(g)]
    device = (sharded or whole)[0].device
    squares = torch.zeros((), dtype=torch.float32, device=device)
    for grad in sharded:
        squares += grad.float().pow(2).sum()
    if processes().several:
        torch.distributed.all_reduce(squares)
    for grad in whole:
        squares += grad.float().pow(2).sum()
    total = squares.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    with torch.no_grad():
        for grad in grads:
            grad.mul_(float(coef))
    return float(total)
