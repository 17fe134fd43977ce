"""Data-parallel training across processes started by ``torchrun``.

Each process (rank) takes its contiguous shard of every global batch; after each backward
pass :func:`make_grad_sync` averages the gradients of the module being updated across ranks
(one flattened ``all_reduce`` bucket per module), so every rank applies the same update and
the weights stay identical. Initial weights are broadcast from rank 0.

Backends: ``nccl`` when the device is CUDA, ``gloo`` otherwise (CPU). The process group is
initialised from the environment variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

Timeout: ``MEDBALANCE_DIST_TIMEOUT_S`` (seconds, passed to ``init_process_group``) bounds how long a
collective waits for the other ranks. A crashed peer is detected at once (its connections close);
a frozen or unreachable one (a lost node that closes nothing) makes the others wait until the
timeout, torch's default when unset (30 min for gloo). It must exceed the longest stretch one rank
spends outside collectives: data loading or cache building before the first broadcast, rank 0
writing a checkpoint or sample grid. See docs/distributed.md.

BatchNorm: on CUDA, BatchNorm layers are converted to :class:`torch.nn.SyncBatchNorm`, so the
batch statistics are those of the global batch. On CPU (gloo) SyncBatchNorm is not available:
each rank normalises with the statistics of its local shard (``batch_size / world_size``
samples) and keeps its own running statistics (rank 0's are saved). Results then differ
slightly from a single process with the same global batch; networks without BatchNorm (or
with per-sample norms: InstanceNorm, LayerNorm, GroupNorm) match a single process exactly up
to floating-point summation order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from medbalance.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


TIMEOUT_ENV = "MEDBALANCE_DIST_TIMEOUT_S"


def env_timeout() -> timedelta | None:
    """``MEDBALANCE_DIST_TIMEOUT_S`` as a timedelta (None when unset: torch's default applies)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's env vars (no-op for a single process)."""
    import torch.distributed as dist

    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        timeout = env_timeout()
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                **({} if timeout is None else {"timeout": timeout}))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _flat_all_reduce_(tensors: list[torch.Tensor], world_size: int, average: bool) -> None:
    """All-reduce a list of tensors as one flattened bucket and write the result back in place."""
    import torch.distributed as dist

    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if average:
        flat.div_(world_size)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def make_grad_sync(info: DistInfo) -> Callable[[nn.Module], None]:
    """Return ``grad_sync(module)``: average ``module``'s gradients across ranks (no-op on 1 process).

    Parameters whose ``.grad`` is None are skipped; every rank runs the same code path, so the
    set of parameters with gradients is the same on all ranks.
    """
    if not info.enabled:
        return lambda module: None

    def grad_sync(module: nn.Module) -> None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            _flat_all_reduce_(group, info.world_size, average=True)

    return grad_sync


def broadcast_module_(module: nn.Module, info: DistInfo, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s (in place)."""
    import torch.distributed as dist

    if not info.enabled:
        return
    with torch.no_grad():
        tensors = [p.data for p in module.parameters()] + [b for b in module.buffers()]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.broadcast(flat, src=src)
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (returns the input unchanged on 1 process)."""
    import torch.distributed as dist

    if not info.enabled:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def all_gather_tensor(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Gather a same-shaped tensor from every rank (a one-element list on 1 process)."""
    import torch.distributed as dist

    if not info.enabled:
        return [t]
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t.contiguous())
    return out


def barrier(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.enabled:
        dist.barrier()


def convert_sync_batchnorm_(module: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA, convert BatchNorm layers inside ``module`` to SyncBatchNorm (in place for children)."""
    if device.type != "cuda":
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
