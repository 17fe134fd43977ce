"""The training engine: one loop for every :class:`~medbalance.models.base.GANMethod`.

The method owns its networks, losses and optimisers (``training_step``); the engine owns the
rest: the in-memory data order, device and precision, distributed gradient averaging, the EMA
of G, checkpoints and resume, sample grids, ``losses.csv``/TensorBoard and the progress bar.

Data order: batch ``s`` (0-based global step) is the slice ``[p*B, (p+1)*B)`` of a seeded
permutation of the training indices for epoch ``e``, where ``e, p = divmod(s, n_train // B)``
(``drop_last``). The permutation is a pure function of ``(train.seed, e)``, so a resumed run
reads exactly the batches an uninterrupted run would. With ``train.sampling: class_balanced``
the epoch's order is instead ``n_train`` indices drawn with replacement, each with probability
proportional to 1 / (its class's count): every class fills about the same share of each batch
(still a pure function of ``(train.seed, e)``). With N processes, rank ``r`` takes the
contiguous shard ``[r*B/N, (r+1)*B/N)`` of every global batch.

Training length: ``train.steps`` global batches, or ``train.epochs`` passes, i.e.
``epochs * (n_train // B)`` steps (the same ``drop_last`` epoch as the data order; ``n_train`` after
``train.val_fraction`` is held out; ``B`` the global batch, so the count does not depend on the number
of processes).

Flip (``train.flip``): sample ``i`` of global batch ``s`` is flipped left-right (last axis; image and
label map together) when ``torch.rand(B, generator=seed(train.seed, s))[i] < 0.5``: a pure function of
``(train.seed, s)``, so a resumed run flips the same samples, and independent of the number of processes.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medbalance.data.anatomy import lesion_indices
from medbalance.data.dataset import ImageDataset
from medbalance.data.splits import split_train_heldout
from medbalance.errors import CheckpointError, ConfigError, DataError
from medbalance.models.base import GANMethod
from medbalance.training import checkpoint as ckpt
from medbalance.training import distributed as ddp
from medbalance.training.config import RunConfig, read_saved_run_config
from medbalance.training.loader import (  # noqa: F401 - the data-order functions are part of the engine's API
    BatchPlan,
    batch_loader,
    class_balanced_order,
    default_workers,
    epoch_permutation,
    flip_batch,
    flip_decisions,
    read_batch,
)
from medbalance.training.logging import RunLogger
from medbalance.utils.device import autocast, resolve_precision, select_device
from medbalance.utils.imaging import render_grid, save_png
from medbalance.utils.io import (
    LOCK_NAME,
    acquire_folder_lock,
    atomic_write_json,
    atomic_write_text,
    read_json,
    release_folder_lock,
)
from medbalance.utils.seed import seed_everything, stream_generator, stream_seed


def _differences(prefix: str, a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """Dotted keys where two (nested) config values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(f"{prefix}.{k}", a.get(k), b.get(k))]
    return [] if a == b else [(prefix, a, b)]


# Config keys that must not change when a run is resumed (everything else may, e.g. train.steps).
RESUME_FIXED_KEYS = (
    "data",
    "model",
    "train.seed",
    "train.batch_size",
    "train.val_fraction",
    "train.ema_decay",
    "train.sampling",
    "train.flip",
)


# --------------------------------------------------------------------------- data order
# train.sampling -> how an epoch's order is drawn (recorded in every checkpoint's metadata)
ORDER_DESCRIPTIONS = {
    "uniform": "torch.randperm(n_train, generator=seed(train.seed, epoch)); drop_last",
    "class_balanced": "torch.multinomial(1/class_count, n_train, replacement=True, generator=seed(train.seed, epoch)); "
    "drop_last",
}


def middle_slice(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W)`` volumes -> ``(B, C, H, W)``: the middle slice along D (axial for NIfTI volumes)."""
    return x[:, :, x.shape[2] // 2]


# --------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a network's weights: ``ema = d*ema + (1-d)*w``.

    With warm-up: at (0-based) step ``t`` the decay is ``d = min(decay, (1 + t) / (10 + t))``, so a short
    run's EMA is not stuck near the random initial weights (with decay 0.999 and no warm-up, 600 steps
    leave 55 % of the initial weights in the average).

    Parameters are updated with one vectorised ``torch._foreach_lerp_``; buffers (BatchNorm
    statistics) are copied from the live network.
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(net).eval()
        self.module.requires_grad_(False)
        self._ema_params = list(self.module.parameters())
        self._ema_buffers = list(self.module.buffers())

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        params = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(self._ema_params, params, 1.0 - self.decay_at(step))
        for be, b in zip(self._ema_buffers, net.buffers()):
            be.copy_(b)


# --------------------------------------------------------------------------- results
@dataclass
class RunResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    best_checkpoint: Path | None
    losses: dict[str, float]  # means over the last logging window
    images_per_s: float  # global images per second over this invocation (excludes setup)
    seconds: float
    method: GANMethod
    ema_G: nn.Module | None
    train_ids: list[str] = field(default_factory=list)
    heldout_ids: list[str] = field(default_factory=list)

    @property
    def G(self) -> nn.Module:
        return self.ema_G if self.ema_G is not None else self.method.networks()["G"]


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Train ``cfg.model`` on ``dataset`` (loaded from ``cfg.data`` when None).

    ``resume=True`` continues from ``<out_dir>/checkpoints/latest``; on CPU the continued run
    produces the same losses and weights as an uninterrupted one.
    """

    def __init__(self, cfg: RunConfig, dataset: ImageDataset | None = None, resume: bool = False):
        self.cfg = cfg
        self.resume = resume
        tc = cfg.train
        self.run_dir = Path(cfg.out_dir)
        requested = select_device(tc.device) if tc.device != "auto" else select_device("auto")
        self.dist = ddp.init_distributed(requested.type)
        if requested.type == "cuda" and self.dist.enabled:
            requested = torch.device("cuda", self.dist.local_rank)
        self.device = requested
        self.precision = resolve_precision(tc.precision, self.device)

        if tc.batch_size % self.dist.world_size:
            raise ConfigError(
                f"train.batch_size={tc.batch_size} is not divisible by the number of processes ({self.dist.world_size})"
            )
        self.local_batch = tc.batch_size // self.dist.world_size

        if dataset is None:
            from medbalance.data.sources import load_dataset

            dataset = load_dataset(cfg.data)
        self.dataset = dataset
        self.info = dataset.info()

        train_idx, held_idx, self.split_kind = split_train_heldout(dataset, tc.val_fraction, tc.seed)
        self.train_idx = torch.as_tensor(train_idx, dtype=torch.long)
        self.held_idx = torch.as_tensor(held_idx, dtype=torch.long)
        self.n_train = len(self.train_idx)
        if self.n_train < tc.batch_size:
            raise ConfigError(
                f"train.batch_size={tc.batch_size} is larger than the training set ({self.n_train} samples)"
            )
        self.steps_per_epoch = self.n_train // tc.batch_size
        # train.epochs -> steps: whole drop_last epochs of the data order (see the module docstring)
        self.total_steps = tc.steps if tc.steps is not None else tc.epochs * self.steps_per_epoch

        # ---- method (identical init on every rank, then broadcast from rank 0 anyway)
        from medbalance.models.registry import build_method

        seed_everything(tc.seed)
        method = build_method(cfg.model.name, cfg.model.preset, dict(cfg.model.params), self.info)
        self._check_needs(method)
        if self.dist.enabled:
            method = ddp.convert_sync_batchnorm_(method, self.device)
        method.to(self.device)
        # RunConfig resolved null to the model's choice; 2D data only (volumes have no channels-last layout)
        self.channels_last = bool(tc.channels_last) and len(self.info.spatial_shape) == 2
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        ddp.broadcast_module_(method, self.dist)
        method.autocast = lambda: autocast(self.device, self.precision)
        method.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        method.grad_sync = ddp.make_grad_sync(self.dist)
        method.setup_optimizers()
        if "G" not in method.networks():
            raise ConfigError(f"model {cfg.model.name!r}: networks() must contain 'G'")
        self.method = method
        self.ema = EMA(method.networks()["G"], tc.ema_decay) if tc.ema_decay else None
        # the training RNG stream (noise etc.): per rank, a function of the seed only
        torch.manual_seed(stream_seed(tc.seed, "train_noise", self.dist.rank))
        self.plan = BatchPlan(seed=tc.seed, sampling=tc.sampling, train_idx=self.train_idx,
                              train_labels=dataset.labels[self.train_idx], batch_size=tc.batch_size,
                              world_size=self.dist.world_size, flip=bool(tc.flip))
        self.num_workers = tc.num_workers if tc.num_workers is not None else default_workers(dataset, self.device)
        self._fixed = self._fixed_sample_inputs()

    # ------------------------------------------------------------------ helpers
    def _check_needs(self, method: GANMethod) -> None:
        ds = self.dataset
        if "mask" in method.needs and ds.masks is None:
            raise DataError(f"model {self.cfg.model.name!r} needs masks but the dataset has none", path=self.cfg.data.path)
        if "condition" in method.needs and ds.conditions is None:
            raise DataError(
                f"model {self.cfg.model.name!r} needs conditions but the dataset has none (set data.condition_column)",
                path=self.cfg.data.path,
            )

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Positions into ``train_idx`` in the order epoch ``epoch`` reads them (see the module docstring)."""
        return self.plan.epoch_order(epoch)

    def batch_indices(self, step: int, rank: int | None = None) -> torch.Tensor:
        """Dataset indices of this rank's shard of global batch ``step`` (0-based)."""
        return self.plan.indices(step, self.dist.rank if rank is None else rank)

    def batch_flips(self, step: int, rank: int | None = None) -> torch.Tensor:
        """This rank's shard of :func:`flip_decisions` for global batch ``step``."""
        return self.plan.flips(step, self.dist.rank if rank is None else rank)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A CPU batch on the training device (non-blocking from pinned memory on CUDA), channels_last if set."""
        nb = self.device.type == "cuda"
        out = {k: v.to(self.device, non_blocking=nb) for k, v in batch.items()}
        if self.channels_last and out["image"].dim() == 4:
            out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
        return out

    def get_batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of global step ``step`` for this rank, on the device (what the training loop reads)."""
        return self.to_device(read_batch(self.dataset, self.plan, step, self.dist.rank))

    def batch_stream(self, start: int, stop: int):
        """Batches of steps ``start .. stop-1`` on the device, read ahead by ``num_workers`` DataLoader workers
        (pinned memory on CUDA); identical to ``get_batch(s)`` for every ``s``."""
        cpu = batch_loader(self.dataset, self.plan, self.dist.rank, start, stop, self.num_workers,
                           pin_memory=self.device.type == "cuda")
        return (self.to_device(b) for b in cpu)

    def _fixed_sample_inputs(self) -> dict[str, torch.Tensor | None]:
        """Fixed classes (one row per class) and real masks/conditions for the sample grids.

        Masks/conditions come from held-out samples of the row's class when there are any,
        else from training samples of that class (else from any sample).
        """
        ds, cols = self.dataset, self.cfg.train.sample_columns
        g = stream_generator(self.cfg.train.seed, "sample_grid_inputs")
        order = torch.randperm(len(ds), generator=g)
        held = torch.zeros(len(ds), dtype=torch.bool)
        held[self.held_idx] = True
        picks = []
        for c in range(ds.num_classes):
            of_c = order[ds.labels[order] == c]
            pool = of_c[held[of_c]] if bool(held[of_c].any()) else of_c
            if len(pool) == 0:
                pool = order
            picks.append(pool[torch.arange(cols) % len(pool)])
        idx = torch.cat(picks)
        labels = torch.arange(ds.num_classes).repeat_interleave(cols)
        needs = self.method.needs if hasattr(self, "method") else ()
        use_masks = ds.masks is not None and "mask" in needs
        return {
            "labels": labels,
            "real": ds.images[idx] if use_masks else None,
            "masks": ds.masks[idx] if use_masks else None,
            "conditions": ds.conditions[idx] if ds.conditions is not None and "condition" in needs else None,
        }

    @property
    def G_for_sampling(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.method.networks()["G"]

    @torch.no_grad()
    def sample_grid(self, step: int) -> np.ndarray:
        """Generate the fixed-input grid (EMA G when present). Does not touch the global RNG."""
        f = self._fixed
        G = self.G_for_sampling
        was_training = G.training
        G.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                imgs = self.method.generate(
                    f["labels"].to(self.device),
                    masks=None if f["masks"] is None else f["masks"].to(self.device),
                    conditions=None if f["conditions"] is None else f["conditions"].to(self.device),
                    generator=stream_generator(self.cfg.train.seed, "sample_grid_noise"),
                    G=G,
                )
        finally:
            G.train(was_training)
        k, cols = self.info.num_classes, self.cfg.train.sample_columns
        real_imgs, grid_masks = f["real"], f["masks"]
        if imgs.dim() == 5:  # volumes (B, C, D, H, W): show the middle axial slice of each
            imgs = middle_slice(imgs)
            real_imgs = None if real_imgs is None else middle_slice(real_imgs)
            grid_masks = None if grid_masks is None else middle_slice(grid_masks.unsqueeze(1))[:, 0]
        if grid_masks is None:
            return render_grid(imgs.float().cpu(), k, cols)
        # mask-conditioned: per class, the real images the masks come from over the images generated from them;
        # outlines of lesion labels only (anatomy labels would hide the image)
        lesion = lesion_indices(self.info.mask_values or [], self.dataset.meta.get("anatomy_values"))
        real, fake, m = (t.unflatten(0, (k, cols)) for t in (real_imgs.float(), imgs.float().cpu(), grid_masks))
        both = torch.stack([real, fake], 1).flatten(0, 2)
        masks = torch.stack([m, m], 1).flatten(0, 2)
        return render_grid(both, 2 * k, cols, masks, outline_labels=lesion)

    # ------------------------------------------------------------------ run folder
    def _prepare_run_dir(self) -> int:
        """Lock the run folder, clean up leftovers of a killed writer, then write config/info/ids (fresh run) or
        check them (resume: written only after the checkpoint loaded, see :meth:`_write_run_files`)."""
        ckpt_root = self.run_dir / "checkpoints"
        if self.dist.is_main:  # one writer per run folder (docs/guarantees.md); released at the end of fit
            self._created_dir = not self.run_dir.exists() or not any(self.run_dir.iterdir())
            acquire_folder_lock(self.run_dir)
            self._locked = True
            self._cleanup_leftovers()
        has_ckpt = ckpt.read_pointer(ckpt_root, "latest") is not None
        if self.resume:
            saved_cfg_path = self.run_dir / "config.yaml"
            if not saved_cfg_path.is_file() or not has_ckpt:
                raise CheckpointError("nothing to resume: no config.yaml or checkpoints/latest", path=self.run_dir)
            saved = read_saved_run_config(saved_cfg_path)  # keys it predates take the value they meant then
            self._check_resume_compatible(saved, saved_cfg_path)
            self._check_resume_split(self.run_dir / "train_ids.json")
        elif has_ckpt:
            raise ConfigError(
                "run folder already has checkpoints; pass --resume to continue it or --out for a new run",
                path=self.run_dir,
            )
        if not self.resume:
            self._write_run_files()
        return 0

    def _check_resume_split(self, path: Path) -> None:
        """A resume must train on the images the run started with (the split is recomputed from the data)."""
        if not path.is_file():
            return
        try:
            saved = json.loads(path.read_text())
        except ValueError as e:
            raise CheckpointError(f"unreadable training ids ({e})", path=path) from None
        now = [self.dataset.ids[i] for i in self.train_idx.tolist()]
        if "train" in saved and sorted(map(str, saved["train"])) != sorted(now):
            raise CheckpointError(
                f"cannot resume: the training split differs from the one the run started with ({len(saved['train'])} "
                f"saved ids, {len(now)} now; the data changed, or a newer medbalance groups identical images)",
                path=path,
            )

    def _cleanup_leftovers(self) -> list[Path]:
        """Remove what a killed writer of this folder left: hidden ``.*.partial`` checkpoint folders and
        ``.*.tmp`` files of atomic writes (only called with the folder's lock held, so none is in use)."""
        removed = []
        for d in (self.run_dir, self.run_dir / "checkpoints", self.run_dir / "samples"):
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.name.startswith(".") and (p.name.endswith(".partial") or p.name.endswith(".tmp")
                                               or ".old-" in p.name):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    removed.append(p)
                elif p.name.startswith(".step_") and p.name.endswith(".lock"):
                    p.unlink(missing_ok=True)
                    removed.append(p)
        if removed:
            print(f"removed {len(removed)} leftover(s) of an interrupted run in {self.run_dir}", flush=True)
        return removed

    def _write_run_files(self) -> None:
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.run_dir / "config.yaml")
            atomic_write_json(self.run_dir / "data_info.json", self.info.to_dict())
            ids = self.dataset.ids
            atomic_write_json(
                self.run_dir / "train_ids.json",
                {
                    "split": self.split_kind,
                    "val_fraction": self.cfg.train.val_fraction,
                    "seed": self.cfg.train.seed,
                    "n_train": int(len(self.train_idx)),
                    "n_heldout": int(len(self.held_idx)),
                    "train": [ids[i] for i in self.train_idx.tolist()],
                    "heldout": [ids[i] for i in self.held_idx.tolist()],
                },
            )

    def _check_resume_compatible(self, saved: RunConfig, path: Path) -> None:
        a, b = saved.model_dump(mode="json"), self.cfg.model_dump(mode="json")
        for key in RESUME_FIXED_KEYS:
            va, vb = a, b
            for k in key.split("."):
                va, vb = va[k], vb[k]
            if va != vb:
                where = ", ".join(f"{d} (saved {x!r}, now {y!r})" for d, x, y in _differences(key, va, vb)[:3])
                raise ConfigError(f"cannot resume: {where} differs from the run's saved config", path=path)

    def _load_checkpoint(self) -> tuple[int, float | None]:
        folder = ckpt.resolve_checkpoint(self.run_dir, "latest")
        state = ckpt.read_checkpoint_state(folder)
        nets = self.method.networks()
        for name, net in nets.items():
            ckpt.load_module_(net, folder / f"{name}.safetensors", device=self.device)
        if self.ema is not None:
            ckpt.load_module_(self.ema.module, folder / "G_ema.safetensors", device=self.device)
        ckpt.load_optimizers_(folder, state, self.method.optimizers)
        if self.method.scaler is not None and state.get("scaler"):
            self.method.scaler.load_state_dict(state["scaler"])
        rng = ckpt.load_rng_tensors(folder)
        key = f"torch_cpu/rank{self.dist.rank}"
        if key in rng and state.get("world_size", 1) == self.dist.world_size:
            torch.set_rng_state(rng[key])
            ckpt.set_python_numpy_rng_state(state["rng"])
            if self.device.type == "cuda":
                cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda/"))]
                if cuda:
                    torch.cuda.set_rng_state(cuda[min(self.dist.local_rank, len(cuda) - 1)], self.device)
        else:  # different number of processes: the run continues, but not bit-identically
            torch.manual_seed(stream_seed(self.cfg.train.seed, "train_noise", self.dist.rank, state["step"]))
        best_val = None
        best_name = ckpt.read_pointer(self.run_dir / "checkpoints", "best")
        if best_name is not None and (self.run_dir / "checkpoints" / best_name / "state.json").is_file():
            m = read_json(self.run_dir / "checkpoints" / best_name / "state.json").get("metric") or {}
            best_val = m.get("value")
        # the writer may have been lost after `latest` named this checkpoint but before `best` was updated:
        # the resumed checkpoint's own metric decides, as it would have in the uninterrupted run
        own = (state.get("metric") or {}).get("value")
        if own is not None and (best_val is None or own < best_val):
            best_val = own
            if self.dist.is_main:
                atomic_write_text(self.run_dir / "checkpoints" / "best", folder.name + "\n")
        return int(state["step"]), best_val

    def _save_checkpoint(self, step: int, metric: dict[str, Any] | None, losses: dict[str, float]) -> Path | None:
        rng_states = ddp.all_gather_tensor(torch.get_rng_state(), self.dist)
        if not self.dist.is_main:
            return None
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        epoch, pos = divmod(step, self.steps_per_epoch)
        extra = {
            "world_size": self.dist.world_size,
            "seed": self.cfg.train.seed,
            "data": {
                "epoch": epoch,
                "position_in_epoch": pos,
                "steps_per_epoch": self.steps_per_epoch,
                "n_train": self.n_train,
                "order": ORDER_DESCRIPTIONS[self.cfg.train.sampling],
                "flip": "left-right where torch.rand(batch_size, generator=seed(train.seed, step)) < 0.5"
                if self.cfg.train.flip
                else None,
                "total_steps": self.total_steps,
            },
            "precision": self.precision,
            "device": str(self.device),
            "metric": metric,
            "losses": losses,
            "config": self.cfg.model_dump(mode="json"),
        }
        return ckpt.save_checkpoint(
            self.run_dir / "checkpoints",
            step,
            self.method.networks(),
            None if self.ema is None else self.ema.module,
            self.method.optimizers,
            self.method.scaler,
            [s.cpu() for s in rng_states],
            cuda,
            extra,
        )

    def _metric_name(self, keys: list[str]) -> str | None:
        want = self.cfg.train.best_metric
        if want is not None:
            if want not in keys:
                raise ConfigError(f"train.best_metric={want!r} is not a logged loss; logged: {', '.join(keys)}")
            return want
        for k in keys:
            if k in ("G", "loss_G", "G_loss", "g_loss") or k.startswith("G_") or k.startswith("loss_G"):
                return k
        return keys[0] if keys else None

    # ------------------------------------------------------------------ loop
    def fit(self) -> RunResult:
        tc = self.cfg.train
        if tc.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(tc.threads)
        try:
            start = self._prepare_run_dir()
            best_val: float | None = None
            if self.resume:
                start, best_val = self._load_checkpoint()  # verified; a failure leaves config.yaml untouched
                self._write_run_files()
                if self.dist.is_main:
                    print(f"resumed {self.run_dir} from step {start}", flush=True)
            return self._fit_loop(start, best_val)
        except OSError:
            if (self.dist.is_main and not self.resume and getattr(self, "_created_dir", False)
                    and ckpt.read_pointer(self.run_dir / "checkpoints", "latest") is None):
                # a fresh run that could not be written (and has no checkpoint to resume) leaves nothing behind
                for p in list(self.run_dir.iterdir()) if self.run_dir.is_dir() else []:
                    if p.name != LOCK_NAME:
                        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            raise
        finally:
            if getattr(self, "_locked", False):
                release_folder_lock(self.run_dir)
                self._locked = False
                if getattr(self, "_created_dir", False) and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                    self.run_dir.rmdir()

    def _fit_loop(self, start: int, best_val: float | None) -> RunResult:
        tc = self.cfg.train
        main = self.dist.is_main
        total = self.total_steps
        logger = RunLogger(self.run_dir, total, start, tc.tensorboard, enabled=main)
        ckpt_root = self.run_dir / "checkpoints"
        method = self.method
        method.train()
        acc: dict[str, torch.Tensor] = {}
        n_acc = 0
        metric_sum, metric_n = 0.0, 0
        last_losses: dict[str, float] = {}
        last_ckpt: Path | None = None
        t_start = time.perf_counter()
        t_win = t_start
        images_total = 0
        try:
            for step, batch in zip(range(start, total), self.batch_stream(start, total)):
                losses = method.training_step(batch, step)
                if self.ema is not None:
                    self.ema.update(method.networks()["G"], step)
                for k, v in losses.items():
                    v = torch.as_tensor(v, device=self.device).detach().float().reshape(())
                    acc[k] = acc[k] + v if k in acc else v
                n_acc += 1
                images_total += tc.batch_size
                s1 = step + 1
                is_ckpt = s1 % tc.checkpoint_every == 0 or s1 == total
                if s1 % tc.log_every == 0 or is_ckpt:
                    keys = list(acc)
                    vec = torch.stack([acc[k] for k in keys]) / n_acc if keys else torch.zeros(0)
                    vals = ddp.all_reduce_mean(vec, self.dist).tolist()  # the only host sync
                    now = time.perf_counter()
                    ips = n_acc * tc.batch_size / max(now - t_win, 1e-9)
                    last_losses = dict(zip(keys, vals))
                    logger.log(s1, last_losses, ips)
                    mname = self._metric_name(keys)
                    if mname is not None:
                        metric_sum += last_losses[mname] * n_acc
                        metric_n += n_acc
                    acc, n_acc, t_win = {}, 0, now
                if main and (s1 % tc.sample_every == 0 or s1 == total):
                    grid = self.sample_grid(s1)
                    save_png(self.run_dir / "samples" / f"step_{s1:06d}.png", grid)
                    logger.image("samples", grid, s1)
                if is_ckpt:
                    mname = self._metric_name(list(last_losses))
                    metric = None
                    if mname is not None and metric_n:
                        metric = {"name": mname, "value": metric_sum / metric_n, "over_steps": metric_n}
                    folder = self._save_checkpoint(s1, metric, last_losses)
                    if main and folder is not None:
                        last_ckpt = folder
                        if metric is not None and (best_val is None or metric["value"] < best_val):
                            best_val = metric["value"]
                            atomic_write_text(ckpt_root / "best", folder.name + "\n")
                        ckpt.prune_checkpoints(ckpt_root, tc.keep_last)
                    ddp.barrier(self.dist)
                    metric_sum, metric_n = 0.0, 0
        finally:
            logger.close()
        seconds = time.perf_counter() - t_start
        method.eval()
        best_name = ckpt.read_pointer(ckpt_root, "best")
        ids = self.dataset.ids
        return RunResult(
            run_dir=self.run_dir,
            step=total,
            checkpoint=last_ckpt if last_ckpt is not None else _pointer_path(ckpt_root, "latest"),
            best_checkpoint=None if best_name is None else ckpt_root / best_name,
            losses=last_losses,
            images_per_s=images_total / max(seconds, 1e-9),
            seconds=seconds,
            method=method,
            ema_G=None if self.ema is None else self.ema.module,
            train_ids=[ids[i] for i in self.train_idx.tolist()],
            heldout_ids=[ids[i] for i in self.held_idx.tolist()],
        )


def _pointer_path(ckpt_root: Path, name: str) -> Path | None:
    p = ckpt.read_pointer(ckpt_root, name)
    return None if p is None else ckpt_root / p


def train(cfg: RunConfig, dataset: ImageDataset | None = None, resume: bool = False) -> RunResult:
    """Train ``cfg`` (the Python API of ``medbalance train``). Returns a :class:`RunResult`."""
    trainer = Trainer(cfg, dataset, resume=resume)
    try:
        return trainer.fit()
    finally:
        if trainer.dist.enabled:
            ddp.shutdown_distributed()
