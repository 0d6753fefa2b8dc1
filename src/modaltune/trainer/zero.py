"""DeepSpeed ZeRO stages 1 and 2 (``accelerate launch --use_deepspeed --zero_stage 1|2``).

modaltune keeps its own plan, shares and loss weights (`trainer.distributed`) and drives DeepSpeed's
engine directly rather than through ``accelerator.prepare``: tasks call model methods
(``get_image_features``), never the engine's forward. ZeRO-1 partitions the optimizer state across
the processes, ZeRO-2 the gradients too (ZeRO-Offload: the state on the CPU, where modaltune's
optimizer steps); every process keeps the whole weights, so evaluation, rehearsal and L2-SP read the
model as in plain data parallelism.

* DeepSpeed averages gradients over the processes where modaltune sums them: each backward's loss
  is multiplied by the number of processes, so the reduced gradient is the single-process one.
* modaltune's optimizer (AdamW/SGD with its parameter groups) is handed to the engine, which runs it
  on each process's partition; modaltune's scheduler sets its learning rate, step by step.
* Each optimizer step's last micro-batch is told to the engine (`set_gradient_accumulation_boundary`),
  so groups of any length (the end of an epoch) step once, as a single process does. Every process
  runs a backward for every micro-batch (a zero-weight one where its share is empty), since ZeRO-2
  reduces gradients during backward.
* A step is skipped when DeepSpeed finds a non-finite gradient norm; a process whose loss is not
  finite makes its gradient NaN so that every process skips the step together.
* Checkpoints hold the optimizer state gathered whole, in the single-process format: a ZeRO run
  resumes on any number of processes, with or without DeepSpeed, and the main process alone writes.

ZeRO-3 partitions the parameters themselves and gathers them in hooks on module forwards; tasks
also read parameters outside any forward (CLIP's logit scale), so it is refused in favour of FSDP2.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from modaltune.errors import ConfigError
from modaltune.trainer import distributed
from modaltune.trainer.engines import Engine

_AUTO = "auto"


def launched() -> bool:
    """Whether ``accelerate launch`` started this process for DeepSpeed (its flags or config file)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true", "yes")


def prepare_cpu() -> None:
    """Settings for DeepSpeed on a machine without a GPU, before accelerate or DeepSpeed starts.

    DeepSpeed picks its CPU accelerator (gloo) by itself but warns that it did; ``DS_ACCELERATOR=cpu``
    says so up front. On the CPU it also compiles a shared-memory all-reduce (about a minute of C++ on
    first use) that serves its inference engine only, never training's collectives: skipped.
    """
    if not launched() or _has_accelerator():
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import importlib

    try:  # by module path: ``deepspeed.comm.torch`` as an attribute is the torch package
        ds_comm = importlib.import_module("deepspeed.comm.torch")
    except ImportError:  # accelerate names the missing package itself
        return
    if hasattr(ds_comm, "build_shm_op"):
        ds_comm.build_shm_op = lambda: None  # type: ignore[attr-defined]


def _has_accelerator() -> bool:
    """A GPU or another device DeepSpeed has an accelerator for (Intel XPU, Ascend NPU, Apple MPS)."""
    if torch.cuda.is_available():
        return True
    for name in ("xpu", "npu"):
        module = getattr(torch, name, None)
        if module is not None and module.is_available():
            return True
    return bool(torch.backends.mps.is_available())


def settings(accelerator: Any, cfg: Any, world: int) -> dict[str, Any] | None:
    """The DeepSpeed config for this fit when it was launched for DeepSpeed (`config`), else None."""
    if distributed.engine(accelerator)[0] != "DEEPSPEED":
        return None
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        raise ConfigError(
            "accelerate was launched for DeepSpeed but set up no DeepSpeed plugin; is DeepSpeed "
            "installed? pip install 'modaltune[deepspeed]'"
        )
    return config(
        plugin.deepspeed_config,
        batch_size=cfg.optim.batch_size,
        grad_accum=cfg.optim.grad_accum,
        max_grad_norm=cfg.optim.max_grad_norm,
        world=world,
    )


def _enabled(section: Any) -> bool:
    return isinstance(section, dict) and section.get("enabled") is True


def config(
    raw: dict[str, Any], *, batch_size: int, grad_accum: int, max_grad_norm: float | None, world: int
) -> dict[str, Any]:
    """The DeepSpeed config to run with: ``raw`` (accelerate's, from its flags or
    ``--deepspeed_config_file``) with what modaltune decides filled in, or a `ConfigError` naming
    what modaltune cannot run."""
    out = dict(raw)
    zero = dict(out.get("zero_optimization") or {})
    stage = int(zero.get("stage", 0))
    if stage == 3:
        raise ConfigError(
            "DeepSpeed ZeRO-3 is not supported: it gathers parameters in hooks on module forwards, while tasks also "
            "read the model outside them (CLIP's logit scale, generate). To shard parameters use FSDP2: "
            "accelerate launch --use_fsdp --fsdp_version 2 --num_processes N -m modaltune train ... "
            "(or --zero_stage 1|2 to partition the optimizer state and gradients only)"
        )
    if stage not in (1, 2):
        raise ConfigError(
            f"DeepSpeed ZeRO stage {stage} is plain data parallelism, which modaltune runs without DeepSpeed: "
            "accelerate launch --multi_gpu --num_processes N -m modaltune train ... "
            "(or pass --zero_stage 1 or 2 to partition the optimizer state)"
        )
    for section in ("optimizer", "scheduler"):
        if section in out:
            raise ConfigError(
                f"the DeepSpeed config has a {section!r} section: modaltune builds the optimizer and its learning-rate "
                "schedule from its own options (--optim.optimizer, --lr, --schedule.*); remove the section"
            )
    for section in ("fp16", "bf16"):
        if _enabled(out.get(section)):
            raise ConfigError(
                f"the DeepSpeed config enables {section}: modaltune keeps fp32 weights under DeepSpeed and runs "
                f'mixed precision as autocast; pass --precision bf16 and set {section}.enabled to false or "auto" '
                "(accelerate launch --mixed_precision no)"
            )
    offload = (zero.get("offload_param") or {}).get("device") or "none"
    if offload != "none":
        raise ConfigError(f"offload_param (device {offload!r}) applies to ZeRO-3 only, which modaltune does not run")
    offload = (zero.get("offload_optimizer") or {}).get("device") or "none"
    if offload not in ("none", "cpu"):
        raise ConfigError(
            f"offload_optimizer to {offload!r} is not supported: modaltune offloads the optimizer state to the CPU "
            "only (ZeRO-Offload: accelerate launch --offload_optimizer_device cpu)"
        )
    micro = max(1, math.ceil(batch_size / world))
    wanted: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro * grad_accum * world,
        "gradient_clipping": float(max_grad_norm or 0.0),
    }
    for key, value in wanted.items():
        given = out.get(key, _AUTO)
        if given != _AUTO and given is not None and float(given) != float(value):
            why = "--optim.max-grad-norm" if key == "gradient_clipping" else "--batch-size and --grad-accum"
            raise ConfigError(
                f"the DeepSpeed config sets {key}={given}, but modaltune's {why} give {value}: "
                'set it to "auto" (or leave it out) and modaltune fills it in'
            )
        out[key] = value
    for section in ("fp16", "bf16"):
        if section in out:
            out[section] = {**out[section], "enabled": False}
    out["zero_optimization"] = zero
    # modaltune's own AdamW/SGD, which DeepSpeed has not tested with ZeRO, also when offloaded to the CPU
    # (where DeepSpeed would want its own CPU Adam).
    out["zero_allow_untested_optimizer"] = True
    out["zero_force_ds_cpu_optimizer"] = False
    if not isinstance(out.get("steps_per_print"), int):  # accelerate writes inf: never
        out["steps_per_print"] = 1 << 62
    return out


@contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """``--precision bf16`` under DeepSpeed: Accelerate leaves mixed precision to DeepSpeed's bf16
    mode (bf16 weights), so its autocast does nothing; modaltune keeps fp32 weights and autocasts."""
    if precision != "bf16":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield


class Zero(Engine):
    """``model`` and ``optimizer`` under DeepSpeed's ZeRO engine, as the training loop's engine
    (`trainer.engines`): DeepSpeed reduces the gradients during backward, clips them and steps its
    partition of the optimizer, or skips a step whose gradient norm is not finite.

    Built after a resume has put a checkpoint's weights into ``model`` and its (single-process format)
    state into ``optimizer``: DeepSpeed copies the weights into its fp32 partitions when it starts,
    and the loaded optimizer state is then cut to this process's partition.
    """

    lockstep = True  # ZeRO-2 reduces gradients during backward: every process runs every backward

    def __init__(
        self, accelerator: Any, optimizer: torch.optim.Optimizer, trainable: Sequence[nn.Parameter],
        procs: distributed.Processes, model: nn.Module, ds_config: dict[str, Any],
    ) -> None:
        import deepspeed

        from modaltune.trainer import checkpoint as ckpt

        super().__init__(accelerator, optimizer, trainable, procs)
        self.world = procs.world
        self.closed = False
        self.device = next(model.parameters()).device
        #: The parameters of each group, in the order a single-process optimizer's state numbers them.
        self.groups = [list(group["params"]) for group in optimizer.param_groups]
        self.names = {id(p): name for name, p in model.named_parameters()}
        ds_logger = logging.getLogger("DeepSpeed")
        level = ds_logger.level
        rng = ckpt.rng_state()  # whatever DeepSpeed draws while starting leaves the run's draws as they were
        ds_logger.setLevel(max(level, logging.WARNING))  # its config dump and per-step notes, on every run
        engine_type = deepspeed.DeepSpeedEngine
        broadcast = engine_type.__dict__.get("_broadcast_model")
        if broadcast is not None:
            # DeepSpeed broadcasts each parameter from the first process viewed as bytes, which fails on a
            # 0-dim one (CLIP's logit scale: "self.dim() cannot be 0 to view Float as Byte"); the same
            # broadcast, of the values themselves.
            engine_type._broadcast_model = _broadcast_values
        try:
            self.engine, self.zero, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        finally:
            if broadcast is not None:
                engine_type._broadcast_model = broadcast
            ds_logger.setLevel(level)
            ckpt.set_rng_state(rng)
        # The state mapping relies on one flat group per optimizer group, of the same parameters in order.
        if [[id(p) for p in g] for g in self.zero.bit16_groups] != [[id(p) for p in g] for g in self.groups]:
            raise RuntimeError("DeepSpeed regrouped the optimizer's parameters; cannot map its state")
        self._adopt_loaded_state()

    # ---- training -----------------------------------------------------------------------------

    def backward(self, loss: torch.Tensor, *, last: bool) -> None:
        """Backward of a loss already weighted for a sum over processes; ``last``: the optimizer
        step's last micro-batch (DeepSpeed reduces and partitions the gradients then)."""
        self.engine.set_gradient_accumulation_boundary(last)
        # DeepSpeed divides the reduced gradient by the number of processes: undo it.
        self.engine.backward(loss * self.world if self.world > 1 else loss, scale_wrt_gas=False)

    def idle_backward(self, loss: torch.Tensor, *, finite: bool, last: bool) -> None:
        # DeepSpeed steps by itself unless a gradient is NaN: a non-finite loss here makes every
        # process skip the step.
        self.backward(loss * (0.0 if finite else math.nan), last=last)

    def step(self, finite: bool, max_grad_norm: float | None) -> tuple[bool, float | None]:
        """The optimizer step (clipped by DeepSpeed at ``gradient_clipping``; it clears its own
        gradients and keeps the buffers it reuses): whether it was taken (every process agrees), and
        the gradients' norm before clipping."""
        self.engine.step()
        finite = finite and not bool(getattr(self.zero, "overflow", False))
        norm = self.engine.get_global_grad_norm()
        return finite, (float(norm) if norm is not None and finite and max_grad_norm is not None else None)

    def whole(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        # Every trainable parameter on the CPU in storage of its own (ZeRO keeps them as views of one
        # flat buffer, which safetensors refuses to write as separate tensors).
        weights = {self.names[id(p)]: p.detach().cpu().clone() for group in self.groups for p in group}
        return weights, self.full_optimizer_state()

    def finish(self, plain: nn.Module) -> None:
        self.close()

    def close(self) -> None:
        """Leave DeepSpeed: its gradient hooks are removed and every parameter gets storage of its
        own again, so the model is a plain one for evaluation, export and later fits."""
        if self.closed:
            return
        self.closed = True
        destroy = getattr(self.engine, "destroy", None)
        if destroy is not None:
            destroy()
        with torch.no_grad():
            for group in self.groups:
                for param in group:
                    param.data = param.data.clone()
                    param.grad = None

    # ---- optimizer state in the single-process format -----------------------------------------

    def _fragments(self, i: int) -> Iterator[tuple[int, nn.Parameter, Any]]:
        """(offset of the parameter in the group's whole flat state, parameter, its mapping to this
        process's partition or None when none of it is here)."""
        offset = 0
        for param in self.zero.bit16_groups[i]:
            yield offset, param, getattr(param, "_hp_mapping", None)
            offset += param.numel()

    def full_optimizer_state(self) -> dict[str, Any]:
        """The optimizer's ``state_dict()`` as one process without DeepSpeed would have it, each
        partitioned state tensor gathered whole (on the CPU); every process must call it."""
        import torch.distributed as dist

        base = self.zero.optimizer
        state: dict[int, dict[str, Any]] = {}
        groups: list[dict[str, Any]] = []
        index = 0
        for i, params in enumerate(self.groups):
            flat = self.zero.single_partition_of_fp32_groups[i]
            own = base.state.get(flat, {})
            total = sum(p.numel() for p in params)
            whole: dict[str, torch.Tensor] = {}
            other: dict[str, Any] = {}
            for key in sorted(own):
                value = own[key]
                if not (isinstance(value, torch.Tensor) and value.shape == flat.shape):
                    other[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
                    continue
                # On the model's device, where the process group communicates (NCCL: never the host, where
                # ZeRO-Offload keeps the state).
                buffer = torch.zeros(total, dtype=value.dtype, device=self.device)
                for offset, _, mapping in self._fragments(i):
                    if mapping is not None:
                        lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
                        buffer.narrow(0, offset + lp.start, lp.numel).copy_(value.narrow(0, hp.start, hp.numel))
                if self.world > 1:  # each element is held by one process, zeros elsewhere: the sum is exact
                    dist.all_reduce(buffer, group=self.zero.real_dp_process_group[i])
                whole[key] = buffer.cpu()
            if own:
                position = {id(p): index + n for n, p in enumerate(params)}
                for offset, param, _ in self._fragments(i):
                    state[position[id(param)]] = {
                        **{
                            key: value.narrow(0, offset, param.numel()).view_as(param).clone()
                            for key, value in whole.items()
                        },
                        **{
                            key: value.clone() if isinstance(value, torch.Tensor) else value
                            for key, value in other.items()
                        },
                    }  # each its own (AdamW's step)
            groups.append(
                {
                    **{k: v for k, v in base.param_groups[i].items() if k != "params"},
                    "params": list(range(index, index + len(params))),
                }
            )
            index += len(params)
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def _adopt_loaded_state(self) -> None:
        """Move state that a resume loaded into the optimizer (keyed by the model's parameters, as
        a single process keeps it) to this process's ZeRO partitions."""
        base = self.zero.optimizer
        for i, params in enumerate(self.groups):
            loaded = {id(p): base.state.pop(p) for p in params if p in base.state}
            if not loaded:
                continue
            flat = self.zero.single_partition_of_fp32_groups[i]
            sample = next(iter(loaded.values()))
            adopted: dict[str, Any] = {}
            for key, value in sample.items():
                per_param = isinstance(value, torch.Tensor) and value.dim() > 0
                if not per_param:
                    adopted[key] = value
                    continue
                part = torch.zeros_like(flat, dtype=value.dtype)
                for _, param, mapping in self._fragments(i):
                    mine = loaded.get(id(param))
                    if mapping is not None and mine is not None:
                        lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
                        part.narrow(0, hp.start, hp.numel).copy_(mine[key].reshape(-1).narrow(0, lp.start, lp.numel))
                adopted[key] = part
            base.state[flat] = adopted


def _broadcast_values(engine: Any) -> None:
    """Every parameter as the first process has it (they start alike: this only makes sure)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for param in engine.module.parameters():
        dist.broadcast(param.data, src=0)
