"""What training at scale changes around the step: mixed precision, gradient checkpointing, the
DDP/FSDP wrapper, and full (unsharded) state for ``state.pt`` and the export.

Every function is the identity of the single-process loop when its feature is off, so a plain run
computes exactly what it computed before these options existed.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn as nn

from ..errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of the forward pass's autocast context (float32 weights and optimiser in every case)."""
    if precision not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"precision must be one of bf16, fp16, fp32; got {precision!r}.")
    dtype = _DTYPES.get(precision, torch.bfloat16)
    enabled = precision != "fp32"
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=enabled)


def autocast_setup(precision: str, device: torch.device):
    """The loss scaler fp16 needs (its small range underflows gradients without one); None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def _checkpointed(forward: Callable, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def enable_checkpointing(blocks: Iterable[nn.Module]) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them.

    The blocks' own ``forward`` is wrapped on the instance, so names, weights and results are
    unchanged (the blocks have no dropout or other randomness); returns how many were wrapped.
    """
    n = 0
    for block in blocks:
        if getattr(block, "_framebridge_checkpointed", False):
            continue
        block.forward = functools.partial(_checkpointed, block.forward)
        block._framebridge_checkpointed = True
        n += 1
    return n


def wrap_model(net: nn.Module, blocks: list, env, fsdp: bool) -> nn.Module:
    """The network as the forward pass sees it: itself (one process), DDP, or FSDP (``fsdp``).

    FSDP shards each block and then the rest of the network over the processes (parameters,
    gradients and optimiser state); on one process ``fsdp`` changes nothing, so a sharded run's
    ``state.pt`` resumes on a single process and the other way round.
    """
    if not env.distributed:
        return net
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(net, mesh=mesh)
        return net
    from torch.nn.parallel import DistributedDataParallel

    import inspect

    ids = [env.device.index] if env.device.type == "cuda" else None
    # the buffers are constant tables: no need to send rank 0's before every forward pass
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    quiet = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(net, device_ids=ids, **quiet)


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without torch.distributed
        return False
    return isinstance(t, DTensor)


def _full(t):
    """A plain tensor (the whole of a sharded one; every rank must call this for a sharded tensor)."""
    return t.full_tensor() if _is_dtensor(t) else t


def ema_init(inner: nn.Module, model: nn.Module, fsdp: bool) -> dict:
    """The EMA starts at the weights (sharded like them under FSDP)."""
    return {k: v.detach().clone().float() for k, v in inner.state_dict().items()}


def ema_to_full(ema: dict) -> dict:
    return {k: _full(v) for k, v in ema.items()}


def ema_from_full(full: dict, current: dict, device: torch.device) -> dict:
    """The EMA of ``state.pt`` placed like ``current`` (on the device, sharded under FSDP)."""
    out = {}
    for k, v in full.items():
        ref = current.get(k)
        if ref is not None and _is_dtensor(ref):
            from torch.distributed.tensor import distribute_tensor

            out[k] = distribute_tensor(v.to(ref.device), ref.device_mesh, ref.placements)
        else:
            out[k] = v.to(device) if device.type != "cpu" else v
    return out


def full_model_state(inner: nn.Module, model: nn.Module, fsdp: bool) -> dict:
    sd = inner.state_dict()
    return {k: _full(v) for k, v in sd.items()} if fsdp else sd


def full_optimizer_state(opt: torch.optim.Optimizer, model: nn.Module, net: nn.Module, fsdp: bool) -> dict:
    """``opt.state_dict()`` with whole tensors: the same layout with or without FSDP (FSDP keeps one
    sharded tensor per parameter, so parameter numbering is unchanged)."""
    sd = opt.state_dict()
    if not fsdp:
        return sd
    state = {i: {k: _full(v) for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, model: nn.Module, net: nn.Module, full: dict, fsdp: bool) -> None:
    if not fsdp or not any(_is_dtensor(p) for p in model.parameters()):
        opt.load_state_dict(full)
        return
    from torch.distributed.tensor import distribute_tensor

    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}
    for i, s in full["state"].items():
        p = params[int(i)]
        state[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                    if torch.is_tensor(v) and v.shape == p.shape and _is_dtensor(p) else v for k, v in s.items()}
    opt.load_state_dict({"state": state, "param_groups": full["param_groups"]})


def clip_gradients(model: nn.Module, max_norm: float, fsdp: bool) -> Optional[torch.Tensor]:
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def peak_memory_mib() -> float:
    """This process's peak resident memory in MiB (``ru_maxrss``), or the CUDA peak on a GPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024


__all__ = ["autocast_context", "autocast_setup", "clip_gradients", "ema_from_full", "ema_init", "ema_to_full",
           "enable_checkpointing", "full_model_state", "full_optimizer_state", "load_optimizer", "peak_memory_mib",
           "wrap_model"]
