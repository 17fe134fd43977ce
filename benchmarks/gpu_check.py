"""One bounded check of medbalance on whatever device is available (a GPU above all).

Runs, each section with its own time budget inside a global ``--budget-s``:

1. ``models``: every registered model (``medbalance.models.registry.MODELS``), ``cpu`` and ``paper`` preset, at
   each size of ``--sizes``, trained through the real engine (``Trainer`` with a ``RunConfig``) on a synthetic
   class-conditional dataset with masks: training images/s after the warm-up steps, peak GPU memory
   (``torch.cuda.max_memory_allocated``), GPU utilisation sampled from ``nvidia-smi`` during the run, and
   generation images/s through ``load_run(...).generate``;
2. ``downstream``: the brain-tumour downstream experiment of docs/results.md at full length
   (``python -m medbalance.cli.main downstream`` on ``--data`` with the ACGAN generator of
   ``benchmarks/experiments/brain_tumor_acgan.yaml``, arms real / oversample / class-weight / real+synthetic,
   5 seeds);
3. ``tests``: ``python -m pytest -q -x -n 8`` with the device visible, with a time cap.

Each section runs in a child process that is killed at its budget; results are written after every item to
``<out>/gpu_check.json`` and ``<out>/gpu_check.md``, and an item's failure is recorded, not fatal. ``--tiny`` runs
the same code with tiny settings (2 steps, 32 px, 1 seed, no pytest) on a CPU in about a minute.

Usage (see benchmarks/README.md and docs/performance.md):
    python benchmarks/gpu_check.py --device auto --out runs/gpu_check --data .gpudata/brain-tumor-mri-64/labels.csv
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/gpu_check_tiny
    python benchmarks/gpu_check.py --prepare-data ../shared/datasets/brain-tumor-mri/labels.csv .gpudata/brain-tumor-mri-64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # runs without installing the package (PYTHONPATH=src is not needed either)
    sys.path.insert(0, str(REPO / "src"))

SECTIONS = ("models", "downstream", "tests")
GENERATOR_CONFIG = REPO / "benchmarks" / "experiments" / "brain_tumor_acgan.yaml"
# the downstream experiment of docs/results.md ("Downstream classification on brain-tumor-mri")
DOWNSTREAM_ARGS = ["--arms", "real,oversample,class-weight,real+synthetic", "--image-size", "64",
                   "--subsample", "meningioma=0.1"]


# --------------------------------------------------------------------------- small helpers
def now() -> float:
    return time.time()


def write_json(path: Path, obj: Any) -> None:
    from medbalance.utils.io import atomic_write_json

    atomic_write_json(path, obj)


def read_json_or(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def short_error(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:400]


def nvidia_smi_utilisation() -> list[float] | None:
    """GPU utilisation (%) of every visible GPU from nvidia-smi, or None when it cannot be read."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    vals = []
    for line in out.stdout.split("\n"):
        try:
            vals.append(float(line.strip()))
        except ValueError:
            continue
    return vals or None


class UtilSampler:
    """Samples GPU utilisation from nvidia-smi in a background thread (nothing on a CPU device)."""

    def __init__(self, enabled: bool, interval_s: float = 0.2, gpu_index: int = 0):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.interval_s = interval_s
        self.gpu_index = gpu_index
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "UtilSampler":
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            vals = nvidia_smi_utilisation()
            if vals:
                self.samples.append(vals[min(self.gpu_index, len(vals) - 1)])
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        if not self.enabled or not self.samples:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_util_samples": len(self.samples)}
        return {"gpu_util_mean": round(statistics.fmean(self.samples), 1), "gpu_util_max": max(self.samples),
                "gpu_util_samples": len(self.samples)}


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu_name=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   gpu_multiprocessors=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported(),
                   cudnn=torch.backends.cudnn.version())
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                     text=True, timeout=10)
                env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
            except (OSError, subprocess.SubprocessError):
                env["driver"] = None
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    return name


# --------------------------------------------------------------------------- synthetic data for the models section
def synthetic_dataset(n: int, size: int, num_classes: int = 3, seed: int = 0):
    """``n`` single-channel images of class-dependent bright discs with matching binary masks (values 0/255)."""
    import torch

    from medbalance.data.dataset import ImageDataset, IntensityInfo

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    cx = (labels.float() + 1) * size / (num_classes + 1) + torch.randn(n, generator=g) * size / 32
    cy = size / 2 + torch.randn(n, generator=g) * size / 16
    r = size / 6 * (1 + 0.2 * torch.rand(n, generator=g))
    masks = ((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2) <= (r * r)[:, None, None]
    images = (masks.float() * 1.4 - 0.7)[:, None] + 0.15 * torch.randn(n, 1, size, size, generator=g)
    return ImageDataset(
        images=images.clamp(-1, 1),
        labels=labels.long(),
        class_names=[f"class{i}" for i in range(num_classes)],
        ids=[f"s{i:05d}" for i in range(n)],
        masks=masks.long(),
        mask_values=[0, 255],
        intensity=IntensityInfo(),
    )


def free_memory(cuda: bool) -> None:
    """Collect garbage (trainers and methods form reference cycles) and, on CUDA, release cached blocks and start
    a new peak-memory window."""
    import gc

    gc.collect()
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def tiny_segmentor(folder: Path, mask_values: list[int], channels: int = 1) -> Path:
    """A small untrained segmentation U-Net saved as `medbalance train-task segmentation` saves one (Red-GAN's S)."""
    from medbalance.models.tasknets import SegmentationUNet, save_task_model

    unet = SegmentationUNet(channels, len(mask_values), mode="softmax", channels=(8, 16), num_res_units=0)
    save_task_model(folder, unet, {"task": "segmentation", "mask_values": list(mask_values)})
    return folder


def timed_windows(csv_path: Path, batch_size: int, warmup_steps: int) -> tuple[int, float]:
    """(steps, seconds) of the logging windows after ``warmup_steps``, from losses.csv's per-window images/s."""
    from medbalance.training.logging import read_losses_csv

    steps, seconds, prev = 0, 0.0, 0
    for row in read_losses_csv(csv_path):
        s = int(row["step"])
        n = s - prev
        if prev >= warmup_steps and n > 0 and row["images_per_s"] > 0:
            steps += n
            seconds += n * batch_size / row["images_per_s"]
        prev = s
    return steps, seconds


def model_items(names: list[str] | None, presets: list[str], sizes: list[int]) -> list[tuple[str, str, int]]:
    from medbalance.models.registry import MODELS, ensure_registered

    ensure_registered()
    registered = [n for n in MODELS.names() if not n.startswith("tiny-")]
    if names:
        unknown = [n for n in names if n not in registered]
        if unknown:
            raise SystemExit(f"error: unknown model(s) {', '.join(unknown)}; registered: {', '.join(registered)}")
        registered = [n for n in registered if n in names]
    return [(m, p, s) for s in sizes for m in registered for p in presets if p in MODELS.get(m).presets]


class ItemTimeout(Exception):
    """Raised between training steps / generation batches once an item's time is up."""


class HardTimeout(BaseException):
    """Raised by SIGALRM anywhere in an item (e.g. inside one long sampling call) at its hard limit."""


def _raise_hard_timeout(signum: int, frame: Any) -> None:
    raise HardTimeout("the item's hard time limit")


def guard(method: Any, attr: str, deadline: float) -> None:
    """Make ``method.<attr>`` raise :class:`ItemTimeout` when called after ``deadline`` (the engine's loop is
    unchanged: an instance attribute shadows the class's method)."""
    orig = getattr(method, attr)

    def guarded(*a: Any, **k: Any) -> Any:
        if now() > deadline:
            raise ItemTimeout(f"{attr} stopped at the item's time budget")
        return orig(*a, **k)

    setattr(method, attr, guarded)


def run_model_item(rec: dict[str, Any], args: argparse.Namespace, work: Path, device: str,
                   item_budget_s: float, data_cache: dict[str, Any]) -> dict[str, Any]:
    """Train one (model, preset, size) through the engine and measure it; returns the record.

    A probe run of a few steps times one step; the measured run is then sized to what is left of the item's
    budget (at most ``--warmup`` + ``--steps`` steps). Training stops between steps at 80 % of the budget, and
    generation between batches at the budget (the record then says so and keeps what was measured)."""
    import numpy as np
    import torch

    from medbalance.models.registry import MODELS, preset_batch_size
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import Trainer
    from medbalance.training.logging import read_losses_csv
    from medbalance.training.run import load_run

    name, preset, size = rec["model"], rec["preset"], rec["size"]
    t0 = now()
    train_deadline = t0 + 0.8 * item_budget_s
    item_deadline = t0 + item_budget_s
    batch = args.batch_size or preset_batch_size(name, preset)
    rec.update(batch_size=batch, phase="probe")
    n = max(2 * batch, 64 if args.tiny else 256)
    if data_cache.get("size") != size or data_cache["ds"].images.shape[0] < n:
        data_cache.clear()
        data_cache.update(size=size, ds=synthetic_dataset(n, size))
    ds = data_cache["ds"]
    params: dict[str, Any] = {}
    if "segmentor" in MODELS.get(name).params.model_fields:  # Red-GAN's frozen third player
        params["segmentor"] = str(tiny_segmentor(work / "segmentor", list(ds.mask_values)))
    cuda = device.startswith("cuda")

    def config(out: Path, steps: int, log_every: int) -> RunConfig:
        return RunConfig.from_dict({
            "out_dir": str(out),
            "model": {"name": name, "preset": preset, "params": params},
            "train": {"steps": steps, "batch_size": batch, "device": device, "checkpoint_every": steps,
                      "sample_every": steps, "log_every": log_every, "tensorboard": False, "seed": 0,
                      "sample_columns": 1},
        })

    # probe: a few steps (log_every 1) to time one step and warm up kernels, then size the measured run
    probe_steps = 1 if args.tiny else 6
    probe = Trainer(config(work / "probe", probe_steps, 1), ds)
    rec["precision"], rec["device"] = probe.precision, str(probe.device)
    guard(probe.method, "training_step", train_deadline)
    probe.sample_grid = lambda step: np.zeros((8, 8, 3), dtype=np.uint8)  # the probe only times steps:
    probe._save_checkpoint = lambda *a, **k: None  # no grid, no checkpoint (GBs for the big paper presets)
    try:
        probe.fit()
    except ItemTimeout:
        pass
    per_step = [batch / r["images_per_s"] for r in read_losses_csv(work / "probe" / "losses.csv")[1:]
                if r["images_per_s"] > 0] if (work / "probe" / "losses.csv").is_file() else []
    step_s = statistics.median(per_step) if per_step else (now() - t0) / probe_steps
    rec["probe_step_s"] = round(step_s, 5)
    del probe
    shutil.rmtree(work / "probe", ignore_errors=True)
    if now() > train_deadline:
        rec["status"] = f"too slow: the {probe_steps}-step probe used the item's {item_budget_s:.0f} s"
        return rec
    # the measured run: warm-up window + whole windows that fit into ~75 % of what is left of the training time
    room = max(0.0, (train_deadline - now()) * 0.75)
    affordable = int(room / max(step_s, 1e-6))
    warm = args.warmup
    window = warm if affordable >= 2 * warm else max(1, affordable // 2)  # a shorter warm-up for slow items
    n_windows = max(1, min(max(1, args.steps // window), affordable // window - 1))
    steps = window * (1 + n_windows)

    free_memory(cuda)  # the probe's networks (a reference cycle: method.autocast holds the trainer) must go first
    if cuda:
        rec["mem_before_train_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
    run_dir = work / "run"
    rec["phase"] = "train"
    trainer = Trainer(config(run_dir, steps, window), ds)
    guard(trainer.method, "training_step", train_deadline)
    guard(trainer, "sample_grid", item_deadline)  # the engine's end-of-run sample grid (one image per class)
    cut = False
    with UtilSampler(cuda) as sampler:
        try:
            res = trainer.fit()
        except ItemTimeout:
            res, cut = None, True
        if cuda:
            torch.cuda.synchronize()
    rec.update(sampler.summary())
    timed_steps, timed_s = (timed_windows(run_dir / "losses.csv", batch, window)
                            if (run_dir / "losses.csv").is_file() else (0, 0.0))
    rec.update(
        steps=steps,
        warmup_steps=window,
        timed_steps=timed_steps,
        train_images_per_s=round(timed_steps * batch / timed_s, 2) if timed_s > 0 else None,
        peak_mem_train_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    )
    if res is not None:
        rec.update(
            train_images_per_s_all=round(res.images_per_s, 2),
            train_seconds=round(res.seconds, 2),
            final_losses={k: (None if not math.isfinite(v) else round(v, 4)) for k, v in res.losses.items()},
        )
    del trainer, res
    if cut:
        rec["status"] = f"cut at the item's time budget ({item_budget_s:.0f} s) in training / its sample grid"
        rec["item_seconds"] = round(now() - t0, 2)
        return rec

    # generation through the public path (load_run -> LoadedRun.generate), timed after one warm-up batch
    free_memory(cuda)
    rec["phase"] = "generate"
    lr = load_run(run_dir, device=device)
    needs = lr.method.needs
    gen_bs = args.gen_batch

    def gen(k: int) -> float:
        labels = torch.arange(k) % ds.num_classes
        masks = ds.masks[:k] if "mask" in needs else None
        conds = ds.conditions[:k] if ("condition" in needs and ds.conditions is not None) else None
        t = time.perf_counter()
        out = lr.generate(labels, masks=masks, conditions=conds, seed=0, batch_size=gen_bs)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        if out.shape[0] != k or not torch.isfinite(out).all():
            raise RuntimeError(f"generate returned {tuple(out.shape)} / non-finite values for {k} labels")
        return dt

    k_warm = min(gen_bs, 8, len(ds))
    guard(lr.method, "generate", item_deadline)
    try:
        t_first = gen(k_warm)  # warm-up (and a first timing), a small batch: diffusion samplers are slow
    except ItemTimeout:
        rec["status"] = "cut at the item's time budget before generation"
        rec["item_seconds"] = round(now() - t0, 2)
        return rec
    rec.update(gen_images=k_warm, gen_images_per_s=round(k_warm / t_first, 2))
    left = item_deadline - now()
    per_batch = t_first * gen_bs / k_warm
    k = min(len(ds), gen_bs * max(1, min(args.gen_batches, int(left * 0.8 / max(per_batch, 1e-6)))))
    if left > per_batch:
        del lr.method.generate  # drop the warm-up's guard; a later deadline for the timed batches
        guard(lr.method, "generate", item_deadline + 0.5 * per_batch)
        try:
            dt = gen(k)
            rec.update(gen_images=k, gen_images_per_s=round(k / dt, 2))
        except ItemTimeout:
            rec["gen_note"] = "timed batches cut at the item's budget; the figure is the warm-up batch's"
    else:
        rec["gen_note"] = "no time left for timed batches; the figure is the warm-up batch's"
    rec["peak_mem_gen_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    del lr
    shutil.rmtree(run_dir, ignore_errors=True)
    rec["item_seconds"] = round(now() - t0, 2)
    rec["status"] = "ok"
    del rec["phase"]
    return rec


def section_models(args: argparse.Namespace, result_path: Path, deadline: float) -> None:
    import torch

    from medbalance.errors import MedbalanceError

    device = resolve_device(args.device)
    torch.manual_seed(0)
    items = model_items(args.models, args.presets, args.sizes)
    records: list[dict[str, Any]] = []
    write_json(result_path, {"items": records, "planned": len(items)})
    data_cache: dict[str, Any] = {}
    for i, (name, preset, size) in enumerate(items):
        left = deadline - now()
        share = left / (len(items) - i)
        if left < 3:
            records.append({"model": name, "preset": preset, "size": size, "status": "skipped: section budget spent"})
            write_json(result_path, {"items": records, "planned": len(items)})
            continue
        work = Path(tempfile.mkdtemp(prefix=f"gpucheck_{name}_{preset}_{size}_", dir=args.work_dir))
        print(f"[models {i + 1}/{len(items)}] {name} {preset} {size}px (budget {share:.0f}s)", flush=True)
        write_json(result_path, {"items": records, "planned": len(items),
                                 "in_progress": {"model": name, "preset": preset, "size": size, "started": now()}})
        rec: dict[str, Any] = {"model": name, "preset": preset, "size": size}
        # the soft limits stop between steps / batches; this one anywhere, within the parent's 15 s of slack
        hard = max(1.0, min(share + max(5.0, 0.25 * share), deadline + 10.0 - now()))
        signal.signal(signal.SIGALRM, _raise_hard_timeout)
        signal.setitimer(signal.ITIMER_REAL, hard)
        try:
            run_model_item(rec, args, work, device, share, data_cache)
        except HardTimeout:
            rec["status"] = f"stopped at the item's hard limit ({hard:.0f} s) in {rec.get('phase')}"
        except MedbalanceError as e:  # e.g. a size the model does not support: one line, recorded
            rec["status"] = f"not run: {short_error(e)}"
        except Exception as e:  # noqa: BLE001 - record and go on
            oom = "out of memory" in str(e).lower()
            rec["status"] = f"{'oom' if oom else 'failed'}: {short_error(e)}"
            rec["traceback"] = traceback.format_exc()[-3000:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            shutil.rmtree(work, ignore_errors=True)
            free_memory(device.startswith("cuda"))
        records.append(rec)
        print(f"  -> {rec.get('status')} train {rec.get('train_images_per_s')} img/s, gen {rec.get('gen_images_per_s')} "
              f"img/s, mem {rec.get('peak_mem_train_mib')} MiB, util {rec.get('gpu_util_mean')}", flush=True)
        write_json(result_path, {"items": records, "planned": len(items)})


# --------------------------------------------------------------------------- downstream
def section_downstream(args: argparse.Namespace, result_path: Path, deadline: float) -> None:
    """Runs `medbalance downstream` as a child process (killed at the deadline) and records its summary."""
    rec: dict[str, Any] = {"data": args.data}
    if not args.data:
        rec["status"] = "skipped: no --data given"
        write_json(result_path, rec)
        return
    if not Path(args.data).exists():
        rec["status"] = f"skipped: --data {args.data} not found"
        write_json(result_path, rec)
        return
    out = Path(args.work_dir) / "downstream"
    shutil.rmtree(out, ignore_errors=True)
    device = resolve_device(args.device)
    cmd = [sys.executable, "-m", "medbalance.cli.main", "downstream", args.data, str(out),
           "--config", str(GENERATOR_CONFIG), "--set", f"data.path={args.data}",
           "--set", "train.tensorboard=false", "--set", f"train.device={device}", *DOWNSTREAM_ARGS,
           "--seeds", str(args.seeds), "--epochs", str(args.downstream_epochs), "--device", device]
    if args.tiny:
        cmd += ["--set", "train.steps=2", "--set", "train.checkpoint_every=2",
                "--set", "train.sample_every=2", "--set", "train.batch_size=4",
                "--batch-size", "8"]
    rec["command"] = " ".join(cmd)
    write_json(result_path, {**rec, "status": "running"})
    code, seconds, tail = run_child(cmd, deadline - now(), Path(args.out) / "downstream.log")
    rec.update(returncode=code, seconds=round(seconds, 1), output_tail=tail[-2000:])
    report = read_json_or(out / "downstream.json", None)
    if report is not None:
        summ = report.get("summary", {})
        keep = ("balanced_accuracy", "macro_f1", "auroc")
        rec["summary"] = {
            arm: {m: round(v["mean"], 4) for m, v in vals.items()
                  if isinstance(v, dict) and "mean" in v and (m in keep or m.startswith("recall/"))}
            for arm, vals in summ.items() if not arm.startswith("_") and isinstance(vals, dict)
        }
        rec["seeds"] = len(report.get("config", {}).get("seeds", []))
    gen_csv = out / "generator" / "losses.csv"
    if gen_csv.is_file():
        from medbalance.training.logging import read_losses_csv

        rows = read_losses_csv(gen_csv)
        rec["generator_steps"] = int(rows[-1]["step"]) if rows else 0
    rec["status"] = "ok" if code == 0 and report is not None else ("timed out" if code is None else f"failed (rc {code})")
    if report is not None:  # the experiment's full report (per-seed values, CIs, tests) beside the summary
        shutil.copyfile(out / "downstream.json", Path(args.out) / "downstream_report.json")
    write_json(result_path, rec)
    shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------- tests
def section_tests(args: argparse.Namespace, result_path: Path, deadline: float) -> None:
    import torch

    rec: dict[str, Any] = {"cuda_available": torch.cuda.is_available()}
    if args.pytest == "skip":
        rec["status"] = "skipped (--pytest skip)"
        write_json(result_path, rec)
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-n", str(args.pytest_workers)]
    if args.pytest != "all":
        cmd += args.pytest.split(",")
    rec["command"] = " ".join(cmd)
    write_json(result_path, {**rec, "status": "running"})
    code, seconds, tail = run_child(cmd, deadline - now(), Path(args.out) / "pytest.log", cwd=REPO)
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if (" passed" in ln or " failed" in ln or " error" in ln)), None)
    rec.update(returncode=code, seconds=round(seconds, 1), summary=summary, output_tail=tail[-3000:])
    rec["status"] = "ok" if code == 0 else ("timed out" if code is None else f"failed (rc {code})")
    write_json(result_path, rec)


# --------------------------------------------------------------------------- child processes
def run_child(cmd: list[str], timeout_s: float, log_path: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> tuple[int | None, float, str]:
    """Run ``cmd`` in its own process group, output to ``log_path``; kill the group after ``timeout_s``.
    Returns (return code or None when killed, seconds, the log's tail). The child finds medbalance in src/."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    src = str(REPO / "src")
    if src not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in [src, env.get("PYTHONPATH", "")] if p)
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            code = None
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
    seconds = time.perf_counter() - t
    try:
        tail = log_path.read_text(errors="replace")[-6000:]
    except OSError:
        tail = ""
    return code, seconds, tail


# --------------------------------------------------------------------------- report
def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    env = report.get("environment", {})
    dev = env.get("gpu_name") or f"CPU ({env.get('cpu_count')} cores)"
    lines = [
        f"# medbalance GPU check ({report.get('profile')} profile)",
        "",
        f"Device: {dev}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), driver {env.get('driver', '–')}, "
        f"Python {env.get('python')}; commit {env.get('git_commit')}; started {report.get('started_utc')}, "
        f"{_fmt(report.get('seconds'))} s of a {report.get('budget_s')} s budget.",
        "",
        "## Models (engine training on synthetic 1-channel data with masks; images/s after the warm-up window)",
        "",
        "| model | preset | px | batch | precision | timed steps | train img/s | peak mem train (MiB) "
        "| GPU util mean / max (%) | gen img/s | peak mem gen (MiB) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("sections", {}).get("models", {}).get("items", []):
        util = "–" if r.get("gpu_util_mean") is None else f"{r['gpu_util_mean']:.0f} / {r['gpu_util_max']:.0f}"
        lines.append(
            f"| {r['model']} | {r['preset']} | {r['size']} | {_fmt(r.get('batch_size'))} | {_fmt(r.get('precision'))} "
            f"| {_fmt(r.get('timed_steps'))} | {_fmt(r.get('train_images_per_s'))} | {_fmt(r.get('peak_mem_train_mib'), 0)} "
            f"| {util} | {_fmt(r.get('gen_images_per_s'))} | {_fmt(r.get('peak_mem_gen_mib'), 0)} "
            f"| {str(r.get('status', '')).replace('|', '/')[:120]} |"
        )
    m = report.get("sections", {}).get("models", {})
    if m.get("status") and m.get("status") != "ok":
        cur = m.get("in_progress")
        during = f" during {cur['model']} {cur['preset']} {cur['size']} px" if cur else ""
        lines += ["", f"Models section: {m['status']}{during}; {len(m.get('items', []))} of "
                  f"{m.get('planned', '?')} items recorded."]
    d = report.get("sections", {}).get("downstream", {})
    lines += ["", "## Downstream (brain-tumour experiment of docs/results.md)", "",
              f"Status: {d.get('status', '–')}; {_fmt(d.get('seconds'))} s; seeds {_fmt(d.get('seeds'))}; "
              f"generator steps {_fmt(d.get('generator_steps'))}.", ""]
    summ = d.get("summary") or {}
    if summ:
        arms = list(summ)
        metrics = sorted({k for a in arms for k in summ[a]})
        lines += ["| metric | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        for mname in metrics:
            lines.append(f"| {mname} | " + " | ".join(_fmt(summ[a].get(mname), 3) for a in arms) + " |")
    t = report.get("sections", {}).get("tests", {})
    lines += ["", "## Test suite", "", f"Status: {t.get('status', '–')}; CUDA available: {t.get('cuda_available')}; "
              f"{_fmt(t.get('seconds'))} s; `{t.get('command', '')}`; {t.get('summary') or ''}", ""]
    return "\n".join(lines)


def save_report(out: Path, report: dict[str, Any]) -> None:
    from medbalance.utils.io import atomic_write_text

    write_json(out / "gpu_check.json", report)
    atomic_write_text(out / "gpu_check.md", markdown(report) + "\n")


# --------------------------------------------------------------------------- data preparation (run once, here)
def prepare_data(src: str, dst: Path, size: int) -> None:
    """A ``size`` px copy of a manifest dataset (images + masks + labels.csv), resized by medbalance's own loader
    (the same resize `--image-size` applies), for carrying to a machine without ../shared."""
    import csv

    import numpy as np

    from medbalance.data.imageio import write_mask_png, write_png
    from medbalance.data.sources import load_dataset

    ds = load_dataset(src, image_size=size)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, sid in enumerate(ds.ids):
        img = ((ds.images[i, 0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        write_png(dst / "images" / f"{sid}.png", img)
        row = {"id": sid, "image": f"images/{sid}.png", "label": ds.class_names[int(ds.labels[i])]}
        if ds.masks is not None:
            values = np.asarray(ds.mask_values)[ds.masks[i].numpy()]
            write_mask_png(dst / "masks" / f"{sid}.png", values.astype(np.uint8))
            row["mask"] = f"masks/{sid}.png"
        rows.append(row)
    with open(dst / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} images at {size} px to {dst}")


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json, gpu_check.md and logs")
    ap.add_argument("--work-dir", default=None, help="scratch folder for run folders (default: a temp folder, removed)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="global wall-clock budget of the whole check (default 540; tiny: 110)")
    ap.add_argument("--tiny", action="store_true", help="tiny settings for a CPU smoke run (2 steps, 32 px, 1 seed)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--models", default=None, help="comma-separated model names (default: every registered model)")
    ap.add_argument("--presets", default="cpu,paper")
    ap.add_argument("--sizes", default=None, help="image sizes in px (default 64,256; tiny: 32)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per model after warm-up (default 300; tiny: 1)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps excluded from images/s (default 20; tiny: 1)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch size (default: each preset's; tiny: 2)")
    ap.add_argument("--gen-batch", type=int, default=None, help="generation batch size (default 64; tiny: 4)")
    ap.add_argument("--gen-batches", type=int, default=None, help="timed generation batches at most (default 4; tiny: 1)")
    ap.add_argument("--models-budget-s", type=float, default=None, help="default: 47%% of --budget-s")
    ap.add_argument("--downstream-budget-s", type=float, default=None, help="default: 31%% of --budget-s")
    ap.add_argument("--tests-budget-s", type=float, default=None, help="default: what is left, less a 10 s reserve")
    ap.add_argument("--data", default=None, help="manifest CSV of the downstream experiment (brain-tumor-mri, 64 px ok)")
    ap.add_argument("--seeds", type=int, default=None, help="downstream seeds (default 5; tiny: 1)")
    ap.add_argument("--downstream-epochs", type=int, default=None, help="task-network epochs (default 10; tiny: 1)")
    ap.add_argument("--pytest", default=None, help="'all', 'skip' or comma-separated test files (default all; tiny: skip)")
    ap.add_argument("--pytest-workers", type=int, default=8)
    ap.add_argument("--prepare-data", nargs=2, metavar=("SRC_MANIFEST", "DST_DIR"),
                    help="write a resized copy of a manifest dataset for carrying, then exit")
    ap.add_argument("--prepare-size", type=int, default=64)
    ap.add_argument("--_section", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_deadline", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    tiny = a.tiny
    a.sizes = [int(s) for s in (a.sizes or ("32" if tiny else "64,256")).split(",") if s.strip()]
    a.presets = [p.strip() for p in a.presets.split(",") if p.strip()]
    a.models = [m.strip() for m in a.models.split(",") if m.strip()] if a.models else None
    a.steps = a.steps if a.steps is not None else (1 if tiny else 300)
    a.warmup = a.warmup if a.warmup is not None else (1 if tiny else 20)
    a.gen_batch = a.gen_batch if a.gen_batch is not None else (4 if tiny else 64)
    a.gen_batches = a.gen_batches if a.gen_batches is not None else (1 if tiny else 4)
    a.batch_size = a.batch_size if a.batch_size is not None else (2 if tiny else None)
    a.seeds = a.seeds if a.seeds is not None else (1 if tiny else 5)
    a.downstream_epochs = a.downstream_epochs if a.downstream_epochs is not None else (1 if tiny else 10)
    a.pytest = a.pytest if a.pytest is not None else ("skip" if tiny else "all")
    a.budget_s = a.budget_s if a.budget_s is not None else (110.0 if tiny else 540.0)
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in a.sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; allowed: {', '.join(SECTIONS)}")
    if a.steps < 1 or a.warmup < 1 or a.gen_batch < 1 or a.budget_s <= 0 or (a.batch_size or 1) < 1:
        ap.error("--steps, --warmup, --gen-batch and --budget-s must be positive")
    return a


def child_argv(args: argparse.Namespace, section: str, result: Path, deadline: float) -> list[str]:
    argv = [sys.executable, "-u", str(Path(__file__).resolve()), "--device", args.device, "--out", str(args.out),
            "--work-dir", str(args.work_dir), "--presets", ",".join(args.presets),
            "--sizes", ",".join(map(str, args.sizes)), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--gen-batch", str(args.gen_batch), "--gen-batches", str(args.gen_batches), "--seeds", str(args.seeds),
            "--downstream-epochs", str(args.downstream_epochs), "--pytest", args.pytest,
            "--pytest-workers", str(args.pytest_workers),
            "--_section", section, "--_result", str(result), "--_deadline", repr(deadline)]
    if args.models:
        argv += ["--models", ",".join(args.models)]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    if args.data:
        argv += ["--data", args.data]
    if args.tiny:
        argv.append("--tiny")
    return argv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MEDBALANCE_QUIET", "1")
    if args.prepare_data:
        prepare_data(args.prepare_data[0], Path(args.prepare_data[1]), args.prepare_size)
        return 0
    if args._section:  # child: one section, results to --_result
        {"models": section_models, "downstream": section_downstream, "tests": section_tests}[args._section](
            args, Path(args._result), args._deadline)
        return 0

    t_start = now()
    deadline = t_start + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    own_work = args.work_dir is None
    args.work_dir = str(Path(tempfile.mkdtemp(prefix="gpu_check_")) if own_work else Path(args.work_dir))
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    report: dict[str, Any] = {
        "profile": "tiny" if args.tiny else "full",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
        "budget_s": args.budget_s,
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": {k: getattr(args, k) for k in ("device", "sizes", "presets", "models", "batch_size", "steps", "warmup",
                                                     "gen_batch", "gen_batches", "seeds", "downstream_epochs",
                                                     "pytest", "pytest_workers", "data", "sections")},
        "environment": environment(device),
        "sections": {},
    }
    save_report(out, report)
    budgets = {"models": args.models_budget_s if args.models_budget_s is not None else 0.47 * args.budget_s,
               "downstream": args.downstream_budget_s if args.downstream_budget_s is not None else 0.31 * args.budget_s,
               "tests": args.tests_budget_s}
    reserve = 10.0 if not args.tiny else 2.0
    try:
        for section in SECTIONS:
            if section not in args.sections:
                report["sections"][section] = {"status": "not requested"}
                continue
            left = deadline - now() - reserve
            budget = left if budgets[section] is None else min(budgets[section], left)
            if budget < 5:
                report["sections"][section] = {"status": "skipped: global budget spent"}
                save_report(out, report)
                continue
            result = out / f"{section}.json"
            result.unlink(missing_ok=True)
            print(f"== {section} (budget {budget:.0f} s)", flush=True)
            # the child stops starting items at its deadline; the parent kills it a little later
            child_deadline = now() + budget
            kill_after = budget + (15.0 if section == "models" else 5.0)
            kill_after = max(5.0, min(kill_after, deadline - now() - reserve / 2))
            code, seconds, tail = run_child(child_argv(args, section, result, child_deadline), kill_after,
                                            out / f"{section}.log")
            rec = read_json_or(result, {})
            if section == "models":
                status = "ok" if code == 0 else ("killed at its budget" if code is None else f"failed (rc {code})")
                rec["status"] = status
            elif code != 0 and rec.get("status") in (None, "running"):
                rec["status"] = "killed at its budget" if code is None else f"failed (rc {code})"
            rec["section_seconds"] = round(seconds, 1)
            if code != 0:
                rec["log_tail"] = tail[-2000:]
            report["sections"][section] = rec
            report["seconds"] = round(now() - t_start, 1)
            save_report(out, report)
            print(f"== {section}: {rec.get('status')} ({seconds:.0f} s)", flush=True)
    finally:
        report["seconds"] = round(now() - t_start, 1)
        save_report(out, report)
        if own_work:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    print((out / "gpu_check.md").read_text())
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
