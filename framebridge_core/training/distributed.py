"""torch.distributed plumbing for ``python -m framebridge_core train`` under ``torchrun``.

The launcher (``torchrun``, or ``accelerate launch``, which runs torchrun's launcher) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads
them and joins the process group (``gloo`` on CPU, ``nccl`` on CUDA). Without them the run is a
plain single process and nothing here touches torch.distributed.

Sharding rule used by the loop (:mod:`framebridge_core.training.loop`): every rank draws the same
*global* batch plan and the same random numbers from generators seeded alike, and computes only its
slice; so a run gives the same parameters for any world size and accumulation count with the same
global batch, and ``state.pt`` (written by rank 0) resumes on any number of processes.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import ConfigError

#: environment variables a launcher sets (torchrun, accelerate launch, SLURM scripts that export them)
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, how many there are and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """True when a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer; a launcher (torchrun) sets it "
                          f"to the process's rank or count; unset it to train on one process.") from None


def choose_device(requested: str, local_rank: int) -> torch.device:
    """``auto``: CUDA device ``local_rank`` when CUDA is available, else the CPU."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda; got {requested!r}.")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto.")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(device: str = "auto", backend: Optional[str] = None, timeout_minutes: float = 30.0) -> DistEnv:
    """Join the process group a launcher prepared (or stay single-process) and pick the device."""
    world = _int_env("WORLD_SIZE", 1)
    rank, local = _int_env("RANK", 0), _int_env("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={world} do not fit together (0 <= RANK < WORLD_SIZE); "
                          f"start the processes with torchrun.")
    dev = choose_device(device, local)
    if world == 1:
        return DistEnv(device=dev)
    import torch.distributed as dist

    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"backend {backend!r} is not supported; allowed: gloo (CPU), nccl (CUDA).")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set: start the processes with "
                              f"torchrun (or accelerate launch), which sets them.")
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=_dt.timedelta(minutes=timeout_minutes))
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def teardown(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def mean_over_ranks(value: float, env: DistEnv) -> float:
    """The mean of a Python float over all ranks (the loss every rank computed on its shard)."""
    if not env.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on at least one (a stop request, a caught signal)."""
    if not env.distributed:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shard_bounds(global_batch: int, env: DistEnv, micro: int, accum: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of the global batch that this rank computes in micro-step ``micro``.

    The global batch is cut into ``accum`` micro-batches, each cut into ``world_size`` equal
    shards: row order is (micro-step, rank, sample), whatever the world size.
    """
    per = global_batch // (env.world_size * accum)
    lo = (micro * env.world_size + env.rank) * per
    return lo, lo + per


def check_global_batch(batch: int, world_size: int, accum: int) -> int:
    """The global batch ``batch × world_size × accum``; refuses non-positive values."""
    if batch < 1 or accum < 1:
        raise ConfigError(f"--batch {batch} and --accum {accum} must be >= 1 (per-process micro-batch and "
                          f"gradient-accumulation steps).")
    return batch * world_size * accum


__all__ = ["DistEnv", "LAUNCH_VARIABLES", "any_rank", "barrier", "broadcast_object", "check_global_batch",
           "choose_device", "launched", "mean_over_ranks", "setup", "shard_bounds", "teardown"]
