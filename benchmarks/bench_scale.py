"""Real-size data in bounded memory: a 50,000-image 256 px RGB manifest through the on-disk pixel cache.

    python benchmarks/bench_scale.py                     # 50,000 rows, 256 px RGB (+ masks), needs ../shared/datasets
    python benchmarks/bench_scale.py --tiny              # 200 rows of 64 px synthetic images: a one-minute check
    python benchmarks/bench_scale.py --stages build,inspect --n 20000 --work /tmp/mb_scale

What it does (each stage in its own process, so that its peak memory is its own):

1. ``prepare``: ``--unique`` RGB PNGs (256 px: the brain-tumour MRI slices of ``../shared/datasets`` under a
   colour map, so the three channels differ) with their tumour masks, and a manifest of ``--n`` rows that cycles
   through them (unique ids; the label of the source slice). Every row is decoded as its own file would be.
2. ``build``: the first ``load_dataset(manifest, storage='disk')``: header pass, chunked decode, cache write
   (images/s of the first pass; target >= 300 for PNG).
3. ``inspect``: ``medbalance inspect MANIFEST --storage disk`` on the built cache (peak memory; target < 4 GB).
4. ``build64``: the cache at 64 px (what the CPU training below reads).
5. ``train``: ``medbalance train --model dcgan --preset cpu`` for ``--steps`` steps (default 500) on the manifest at
   64 px with ``data.storage: disk``, end to end (peak memory; target < 4 GB; training images/s).
6. ``loader``: for every model with a ``cpu`` preset, images/s of the engine's batch delivery alone (the default
   ``train.num_workers``) against images/s of that preset's training step on the same batches (target: the loader
   delivers >= 5x what the step consumes).

Memory: ``peak RSS`` is the largest resident set of any one process of the stage (``ru_maxrss`` of the stage
process and of its children, e.g. DataLoader workers); ``peak PSS total`` is the largest sum of proportional set
sizes over the stage's whole process tree, sampled every 0.25 s (shared pages counted once): the figure to compare
with a machine's memory. The cache is read and written with positioned I/O, so its pages sit in the kernel's
page cache (reclaimable, not counted here) rather than in the processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _machine import cpu_model  # benchmarks/ (the script's folder) is on sys.path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDBALANCE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
STAGES = ("prepare", "build", "inspect", "build64", "train", "loader")


# --------------------------------------------------------------------------- memory of a process tree
def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def _tree_pss_kb(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
        todo.extend(_children(p))
    return total


def run_stage(argv: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run one stage process; wall time, peak RSS (any one process) and peak PSS of the whole tree."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _tree_pss_kb(proc.pid))
                stop.wait(0.25)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        th.join()
    rc = os.waitstatus_to_exitcode(status)
    out: dict[str, Any] = {"rc": rc, "wall_s": time.perf_counter() - t0, "peak_rss_mb": usage.ru_maxrss / 1024,
                           "peak_pss_total_mb": peak[0] / 1024}
    text = log.read_text()
    for line in text.splitlines():  # a stage's own figures: one line "RESULT {json}"
        if line.startswith("RESULT "):
            out.update(json.loads(line[7:]))
    if rc != 0:
        out["error"] = text.strip().splitlines()[-1][:300] if text.strip() else f"exit {rc}"
    return out


# --------------------------------------------------------------------------- stages (run in child processes)
def stage_prepare(a: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    work = Path(a.work)
    files = work / "files"
    if files.exists():
        shutil.rmtree(files)
    (files / "images").mkdir(parents=True)
    (files / "masks").mkdir(parents=True)
    cmap = colormaps["magma"]
    rng = np.random.default_rng(0)
    src = SHARED / "brain-tumor-mri" / "labels.csv"
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    if a.tiny or not src.is_file():
        if not a.tiny:
            raise SystemExit(f"{src} not found: the full benchmark needs ../shared/datasets (or use --tiny)")
        for k in range(a.unique):
            g = rng.integers(0, 256, (a.size, a.size), dtype=np.uint8)
            m = (rng.random((a.size, a.size)) > 0.8).astype(np.uint8) * 255
            pairs.append((["a", "b", "c"][k % 3], g, m))
    else:
        import csv

        with open(src) as fh:
            rows = list(csv.DictReader(fh))
        rows = rows[:: max(1, len(rows) // a.unique)][: a.unique]  # spread over the file: every class present
        for r in rows:
            g = np.asarray(Image.open(src.parent / r["image"]).convert("L").resize((a.size, a.size)))
            m = np.asarray(Image.open(src.parent / r["mask"]).convert("L").resize((a.size, a.size), Image.NEAREST))
            pairs.append((r["label"], g, m))
    for k, (_, g, m) in enumerate(pairs):
        rgb = (cmap(g.astype(np.float32) / 255.0)[..., :3] * 255).round().astype(np.uint8)
        Image.fromarray(rgb).save(files / "images" / f"{k}.png")
        Image.fromarray(m).save(files / "masks" / f"{k}.png")
    lines = ["id,image,mask,label"]
    for i in range(a.n):
        k = i % len(pairs)
        lines.append(f"r{i},files/images/{k}.png,files/masks/{k}.png,{pairs[k][0]}")
    (work / "manifest.csv").write_text("\n".join(lines) + "\n")
    return {"rows": a.n, "unique_files": len(pairs), "size": a.size}


def _load(a: argparse.Namespace, size: int | None):
    from medbalance.data.sources import load_dataset

    return load_dataset(str(Path(a.work) / "manifest.csv"), storage="disk", image_size=size)


def stage_build(a: argparse.Namespace, size: int | None) -> dict[str, Any]:
    t = time.perf_counter()
    ds = _load(a, size)
    dt = time.perf_counter() - t
    hit = ds.meta["cache"]["hit"]
    return {"images": len(ds), "seconds": dt, "images_per_s": len(ds) / dt, "cache_hit": hit,
            "cache_mb": sum(f.stat().st_size for f in Path(ds.meta["cache"]["path"]).iterdir()) / 2**20,
            "shape": list(ds.images.shape)}


def stage_inspect(a: argparse.Namespace) -> dict[str, Any]:
    out = Path(a.work) / "inspect.json"
    cmd = [sys.executable, "-m", "medbalance.cli.main", "inspect", str(Path(a.work) / "manifest.csv"),
           "--storage", "disk", "--json-out", str(out)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"inspect exit {r.returncode}")
    rep = json.loads(out.read_text())
    return {"seconds": time.perf_counter() - t, "n": rep.get("n_samples"), "imbalance_ratio": rep.get("imbalance_ratio")}


def stage_train(a: argparse.Namespace) -> dict[str, Any]:
    out = Path(a.work) / "train_run"
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "medbalance.cli.main", "train", "--model", "dcgan", "--preset", "cpu",
           "--data", str(Path(a.work) / "manifest.csv"), "--steps", str(a.steps), "--device", "cpu", "--out", str(out),
           "--set", f"data.image_size={a.train_size}", "--set", "data.storage=disk",
           "--set", "model.params.conditional=true", "--set", f"train.checkpoint_every={max(1, a.steps // 2)}"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"train exit {r.returncode}")
    dt = time.perf_counter() - t
    from medbalance.training.logging import read_losses_csv

    rows = read_losses_csv(out / "losses.csv")
    ips = [float(r["images_per_s"]) for r in rows if r.get("images_per_s") not in (None, "")]
    return {"seconds": dt, "steps": a.steps, "train_images_per_s_median": sorted(ips)[len(ips) // 2] if ips else None}


def _step_rate(trainer: Any, steps: int) -> float:
    """images/s of ``method.training_step`` on the engine's batches (batches fetched before timing)."""
    batches = [trainer.get_batch(s) for s in range(steps + 1)]
    m = trainer.method
    m.train()
    m.training_step(batches[0], 0)  # warm-up
    t = time.perf_counter()
    for s in range(1, steps + 1):
        m.training_step(batches[s], s)
    return steps * trainer.cfg.train.batch_size / (time.perf_counter() - t)


def _loader_rate(trainer: Any, steps: int) -> tuple[float, int]:
    """images/s of the engine's batch delivery alone (its DataLoader with the resolved workers), and the workers."""
    it, workers = trainer.batch_stream(0, steps + 2), trainer.num_workers
    next(it)  # workers started, first batch (excluded)
    t = time.perf_counter()
    n = 0
    for _ in range(steps):
        next(it)
        n += 1
    dt = time.perf_counter() - t
    del it
    return n * trainer.cfg.train.batch_size / dt, workers


def stage_loader(a: argparse.Namespace) -> dict[str, Any]:
    from medbalance.models.registry import MODELS, ensure_registered
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import Trainer

    ensure_registered()
    ds = _load(a, a.train_size)
    rows = []
    for name in sorted(MODELS.names()):
        if a.models and name not in a.models.split(","):
            continue
        spec = MODELS.get(name)
        if "cpu" not in spec.presets:
            continue
        params: dict[str, Any] = {}
        fields = spec.params.model_fields
        if "conditional" in fields:
            params["conditional"] = True
        rec: dict[str, Any] = {"model": name}
        try:
            if "segmentor" in fields:
                sys.path.insert(0, str(REPO / "benchmarks"))
                from gpu_check import tiny_segmentor

                params["segmentor"] = str(tiny_segmentor(Path(a.work) / "segmentor", list(ds.mask_values), ds.channels))
            cfg = RunConfig.from_dict({"out_dir": str(Path(a.work) / "loader_runs" / name), "data": {"path": "x"},
                                       "model": {"name": name, "preset": "cpu", "params": params},
                                       "train": {"steps": 10, "device": "cpu", "precision": "auto", "seed": 0}})
            tr = Trainer(cfg, ds)
            rec["batch_size"] = cfg.train.batch_size
            rec["step_images_per_s"] = _step_rate(tr, a.step_steps)
            rec["loader_images_per_s"], rec["num_workers"] = _loader_rate(tr, a.loader_steps)
            rec["ratio"] = rec["loader_images_per_s"] / rec["step_images_per_s"]
        except Exception as e:  # noqa: BLE001 - one model's failure is recorded, not fatal
            rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    return {"models": rows}


# --------------------------------------------------------------------------- driver
def markdown(res: dict[str, Any]) -> str:
    def f(v: Any, nd: int = 0) -> str:
        return "" if v is None else (f"{v:,.{nd}f}" if isinstance(v, (int, float)) else str(v))

    st = res["stages"]
    lines = [f"bench_scale: {res['rows']:,} rows ({res['unique']} unique files), {res['size']} px RGB + masks; "
             f"{res['machine']}; threads {res['threads']}; load average at start {res['load_average']}", "",
             "| stage | wall s | images/s | peak RSS (one process) MB | peak PSS (all processes) MB | target | met |",
             "|---|---|---|---|---|---|---|"]
    targets = {"build": ("first pass >= 300 images/s", lambda s: s.get("images_per_s", 0) >= 300),
               "inspect": ("peak < 4 GB", lambda s: s["peak_pss_total_mb"] < 4096),
               "train": ("peak < 4 GB", lambda s: s["peak_pss_total_mb"] < 4096)}
    for name in STAGES:
        s = st.get(name)
        if s is None or name == "loader":
            continue
        ips = s.get("images_per_s") or s.get("train_images_per_s_median")
        tgt, ok = targets.get(name, ("", None))
        met = "" if ok is None else ("yes" if s["rc"] == 0 and ok(s) else "**no**")
        lines.append(f"| {name}{' (error: ' + s['error'] + ')' if 'error' in s else ''} | {f(s['wall_s'], 1)} | "
                     f"{f(ips, 1)} | {f(s['peak_rss_mb'])} | {f(s['peak_pss_total_mb'])} | {tgt} | {met} |")
    ld = st.get("loader")
    if ld:
        lines += ["", f"Loader vs training step at {res['train_size']} px (disk-backed data, default workers; "
                  "target: loader >= 5x the step):", "",
                  "| model (`cpu` preset) | batch | workers | loader images/s | step images/s | ratio | met |",
                  "|---|---|---|---|---|---|---|"]
        for r in ld.get("models", []):
            if "error" in r:
                lines.append(f"| {r['model']} | | | | | {r['error']} | |")
                continue
            lines.append(f"| {r['model']} | {r['batch_size']} | {r['num_workers']} | {f(r['loader_images_per_s'])} | "
                         f"{f(r['step_images_per_s'], 1)} | {f(r['ratio'], 1)} | "
                         f"{'yes' if r['ratio'] >= 5 else '**no**'} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--unique", type=int, default=512)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--step-steps", type=int, default=3, help="timed training steps per model (loader stage)")
    ap.add_argument("--loader-steps", type=int, default=20, help="timed batches per model (loader stage)")
    ap.add_argument("--models", default="", help="comma-separated models for the loader stage (default: all)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--work", default="/tmp/mb_scale")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--tiny", action="store_true", help="200 rows of 64 px synthetic images, 4 steps: a quick check")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage in this process
    a = ap.parse_args(argv)
    if a.tiny:
        a.n, a.unique, a.size, a.train_size, a.steps = 200, 12, 64, 32, 4
        a.step_steps, a.loader_steps = 1, 3
    return a


def child(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    fn = {"prepare": stage_prepare, "build": lambda x: stage_build(x, None), "inspect": stage_inspect,
          "build64": lambda x: stage_build(x, x.train_size), "train": stage_train, "loader": stage_loader}[a.stage]
    print("RESULT " + json.dumps(fn(a)), flush=True)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.stage:
        child(a)
        return 0
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MEDBALANCE_CACHE=str(work / "cache"), OMP_NUM_THREADS=str(a.threads),
               PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    stages = [s for s in a.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        print(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if "build" in stages or "build64" in stages:
        shutil.rmtree(work / "cache", ignore_errors=True)  # the first pass is measured from scratch
    res: dict[str, Any] = {"rows": a.n, "unique": a.unique, "size": a.size, "train_size": a.train_size,
                           "threads": a.threads, "machine": "",
                           "load_average": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M"),
                           "stages": {}}
    res["machine"] = cpu_model()
    base = [sys.executable, str(Path(__file__).resolve())] + [x for x in (argv if argv is not None else sys.argv[1:])
                                                              if x != "--tiny"]
    for s in stages:
        extra = ["--tiny"] if a.tiny else []
        r = run_stage(base + extra + ["--stage", s], env, work / f"{s}.log")
        res["stages"][s] = r
        print(f"{s}: " + json.dumps({k: v for k, v in r.items() if k != 'models'}), flush=True)
        if r["rc"] != 0 and s in ("prepare", "build"):
            break
    md = markdown(res)
    print(md)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    (work / "bench_scale.md").write_text(md)
    return 0 if all(r["rc"] == 0 for r in res["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
