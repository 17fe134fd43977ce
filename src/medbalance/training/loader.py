"""Training batches from a ``torch.utils.data.DataLoader``: the engine's seeded order, read by worker processes.

Item ``s`` of :class:`StepBatches` is the whole CPU batch of global step ``s`` for one rank: the dataset rows
:meth:`BatchPlan.indices` names (a pure function of ``(train.seed, s, rank)``, see the engine's docstring), with
the step's flips applied. Because a batch depends on nothing but its step, the order the workers deliver is the
order of an uninterrupted single-process run: a resumed run starts the loader at its first unfinished step, and
the number of workers never changes a batch. The training RNG (noise) stays in the main process.

Workers (``train.num_workers``; ``None`` = :func:`default_workers`): each reads its steps' rows (from the
in-memory tensors, or the pixel cache of a disk-backed dataset, which pickles as its file path) and
hands the batch back through shared memory. On CUDA the loader pins the batch in page-locked memory and the engine
copies it with ``non_blocking=True``, so the copy overlaps the previous step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from medbalance.data.cache import is_lazy
from medbalance.data.dataset import ImageDataset
from medbalance.utils.seed import stream_generator


# --------------------------------------------------------------------------- the seeded order
def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=stream_generator(seed, "data_order", epoch))


def class_balanced_order(seed: int, epoch: int, labels: torch.Tensor) -> torch.Tensor:
    """One epoch of class-balanced positions into ``labels``: ``len(labels)`` draws with replacement,
    position ``i`` with probability ``1 / (K * count(labels[i]))`` for the ``K`` classes present, so
    every class is equally likely in every draw. A pure function of (seed, epoch, labels)."""
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    weights = 1.0 / counts.to(torch.float64)[inverse]
    g = stream_generator(seed, "class_balanced_order", epoch)
    return torch.multinomial(weights, len(labels), replacement=True, generator=g)


def flip_decisions(seed: int, step: int, batch_size: int) -> torch.Tensor:
    """Which samples of global batch ``step`` are flipped (``train.flip``): ``(batch_size,)`` bool, p = 0.5 each,
    a pure function of (seed, step)."""
    return torch.rand(batch_size, generator=stream_generator(seed, "flip", step)) < 0.5


def flip_batch(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip the samples of ``x`` (``(B, ...)``) where ``flip`` (``(B,)`` bool) is True along the last axis
    (left-right for images ``(B,C,H,W)``, volumes ``(B,C,D,H,W)`` and label maps ``(B,*spatial)``); vectorised."""
    f = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(f, x.flip(-1), x)


@dataclass
class BatchPlan:
    """Which rows (and flips) make up each rank's share of each global batch. Small and picklable: this is what
    the worker processes receive besides the dataset."""

    seed: int
    sampling: str  # "uniform" | "class_balanced"
    train_idx: torch.Tensor  # (n_train,) dataset indices of the training split
    train_labels: torch.Tensor  # (n_train,) their labels (class-balanced order)
    batch_size: int  # global
    world_size: int = 1
    flip: bool = False

    def __post_init__(self) -> None:
        self.steps_per_epoch = len(self.train_idx) // self.batch_size
        self.local_batch = self.batch_size // self.world_size
        self._order: tuple[int, torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_order"] = None
        return state

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Positions into ``train_idx`` in the order epoch ``epoch`` reads them."""
        if self.sampling == "class_balanced":
            return class_balanced_order(self.seed, epoch, self.train_labels)
        return epoch_permutation(self.seed, epoch, len(self.train_idx))

    def indices(self, step: int, rank: int) -> torch.Tensor:
        """Dataset indices of rank ``rank``'s shard of global batch ``step`` (0-based)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.epoch_order(epoch))
        glob = self._order[1][pos * self.batch_size : (pos + 1) * self.batch_size]
        return self.train_idx[glob[rank * self.local_batch : (rank + 1) * self.local_batch]]

    def flips(self, step: int, rank: int) -> torch.Tensor:
        """Rank ``rank``'s shard of :func:`flip_decisions` for global batch ``step``."""
        f = flip_decisions(self.seed, step, self.batch_size)
        return f[rank * self.local_batch : (rank + 1) * self.local_batch]


def read_batch(ds: ImageDataset, plan: BatchPlan, step: int, rank: int) -> dict[str, torch.Tensor]:
    """The CPU batch of ``step`` for ``rank``: image, label, index and, when the dataset has them, mask and
    condition (flipped as the plan says)."""
    idx = plan.indices(step, rank)
    img = ds.images[idx]
    batch = {"image": img, "label": ds.labels[idx], "index": idx}
    if ds.masks is not None:
        batch["mask"] = ds.masks[idx]
    if ds.conditions is not None:
        batch["condition"] = ds.conditions[idx]
    if plan.flip:  # image and label map of a sample together
        f = plan.flips(step, rank)
        batch["image"] = flip_batch(batch["image"], f)
        if "mask" in batch:
            batch["mask"] = flip_batch(batch["mask"], f)
    return batch


class StepBatches(Dataset):
    """Map-style dataset whose item ``s`` is :func:`read_batch` of step ``s`` (one rank's share)."""

    def __init__(self, ds: ImageDataset, plan: BatchPlan, rank: int):
        self.ds, self.plan, self.rank = ds, plan, rank

    def __len__(self) -> int:  # DataLoader never iterates it unsampled; the sampler names the steps
        return 2**62

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        return read_batch(self.ds, self.plan, int(step), self.rank)


def default_workers(ds: ImageDataset, device: torch.device) -> int:
    """``train.num_workers: null``. In-memory tensors on the CPU: 0 (a batch is one tensor index, microseconds;
    a worker would only add a copy through shared memory). Disk-backed data, or a GPU to feed: half the CPU
    cores, at least 1 and at most 4 (reading and converting rows then overlaps the training step)."""
    if not is_lazy(ds.images) and device.type == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus // 2))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # a worker only indexes and converts rows; the training step owns the cores


def batch_loader(ds: ImageDataset, plan: BatchPlan, rank: int, start: int, stop: int, num_workers: int,
                 pin_memory: bool) -> Iterator[dict[str, torch.Tensor]]:
    """The CPU batches of steps ``start .. stop-1`` in order (a DataLoader when ``num_workers > 0``)."""
    if stop <= start:
        return iter(())
    if num_workers == 0 and not pin_memory:
        return (read_batch(ds, plan, s, rank) for s in range(start, stop))
    return iter(DataLoader(StepBatches(ds, plan, rank), batch_size=None, sampler=range(start, stop),
                           num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=_worker_init,
                           prefetch_factor=4 if num_workers else None,
                           # its own generator: the workers' base seed must not be drawn from the global RNG,
                           # which is the training noise stream
                           generator=torch.Generator().manual_seed(0)))


__all__ = ["BatchPlan", "StepBatches", "batch_loader", "class_balanced_order", "default_workers", "epoch_permutation",
           "flip_batch", "flip_decisions", "read_batch"]
