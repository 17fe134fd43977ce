"""Training speed of the downstream task networks, which train every cell of ``medbalance benchmark``.

    python benchmarks/bench_tasknets.py                      # classifier and U-Net, 64 px, batch 32, 2 threads
    python benchmarks/bench_tasknets.py --threads 1 --epochs 2
    python benchmarks/bench_tasknets.py --tiny               # a seconds-long smoke run

For each network (the benchmark's small CNN classifier, 1 channel, 3 classes; its U-Net segmentor, 2 channels,
sigmoid mode, 3 lesion labels) and each memory layout (NCHW, channels-last):

* ``medbalance``: images/s of ``medbalance.training.task.train_task_model`` end to end (model build, data order,
  AdamW, cosine schedule, loss, layout conversion; no validation set), ``--epochs`` epochs over ``--n`` images;
* ``plain``: the same network (same initial weights, same layout) in a minimal hand-written loop: shuffled
  batches, forward, the same loss, backward, AdamW step; the ratio medbalance / plain is the framework's overhead;
* FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode``) and the fraction of this machine's fp32
  ceiling (best of a matmul and a convolution loop, measured in the same run) the plain loop reaches.

Variants run in interleaved rounds; medians are reported. fp32 only: the benchmark's task networks train in fp32
on CPUs without native bf16 (``precision: auto``). Results: docs/performance.md ("Task networks and the benchmark's
cells").
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from _machine import cpu_model
from bench_reference import ceiling, count_flops

TINY = {"n": 64, "size": 32, "epochs": 1, "rounds": 1, "ceiling_s": 0.05}


def dataset(task: str, n: int, size: int, seed: int = 0):
    """Random images in [-1, 1] with 3 classes (classification, 1 channel) or 4-value label maps (segmentation,
    2 channels: like the BraTS grid's FLAIR + T1c)."""
    from medbalance.data.dataset import ImageDataset, IntensityInfo

    g = torch.Generator().manual_seed(seed)
    ch = 1 if task == "classification" else 2
    masks = torch.randint(0, 4, (n, size, size), generator=g) if task == "segmentation" else None
    return ImageDataset(images=torch.rand(n, ch, size, size, generator=g) * 2 - 1,
                        labels=torch.arange(n) % 3, class_names=["a", "b", "c"], ids=[f"i{i}" for i in range(n)],
                        masks=masks, mask_values=[0, 1, 2, 3] if masks is not None else None, intensity=IntensityInfo())


def task_config(task: str, epochs: int, batch: int, channels_last: bool):
    from medbalance.training.task import TaskConfig

    seg = {"seg_mode": "sigmoid"} if task == "segmentation" else {}
    return TaskConfig(task=task, epochs=epochs, batch_size=batch, precision="fp32", device="cpu", progress=False,
                      channels_last=channels_last, seed=0, **seg)


def plain_loop(model: torch.nn.Module, ds, cfg, channels_last: bool) -> tuple[Callable[[], int], Callable[[], None]]:
    """(run all epochs -> images seen, one training step) of a minimal loop over the same network."""
    model = copy.deepcopy(model).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all, y_all = ds.images, ds.labels if cfg.task == "classification" else ds.masks
    bs = cfg.batch_size

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        out = model(x.contiguous(memory_format=fmt))
        loss = F.cross_entropy(out, y) if cfg.task == "classification" else model.loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def run() -> int:
        g = torch.Generator().manual_seed(0)
        seen = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(len(ds), generator=g)
            for s in range(0, len(ds) - bs + 1, bs):
                idx = order[s : s + bs]
                step(x_all[idx], y_all[idx])
                seen += bs
        return seen

    return run, lambda: step(x_all[:bs], y_all[:bs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="classification,segmentation")
    ap.add_argument("--n", type=int, default=640, help="training images")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1, help="epochs per timed call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ceiling-s", type=float, default=1.0, help="seconds per ceiling loop")
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    ap.add_argument("--json", default=os.path.join(tempfile.gettempdir(), "medbalance_bench", "bench_tasknets.json"))
    args = ap.parse_args()
    if args.tiny:
        for k, v in TINY.items():
            setattr(args, k, v)
    os.environ.setdefault("MEDBALANCE_QUIET", "1")
    torch.set_num_threads(args.threads)
    from medbalance.training.task import build_task_model, train_task_model

    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {cpu_model()}, {os.cpu_count()} CPUs, {args.threads} threads, load avg "
          f"{load0[0]:.1f}; {args.n} images {args.size} px, batch {args.batch_size}, {args.epochs} epoch(s) per call, "
          f"{args.rounds} interleaved rounds, median", flush=True)
    rows: list[dict[str, Any]] = []
    ceilings: list[float] = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        ds = dataset(task, args.n, args.size)
        fns: dict[str, Callable[[], int]] = {}
        flops = 0
        for cl in (False, True):
            lay = "NHWC" if cl else "NCHW"
            cfg = task_config(task, args.epochs, args.batch_size, cl)
            torch.manual_seed(0)
            net = build_task_model(cfg, ds)
            run, one_step = plain_loop(net, ds, cfg, cl)
            if not flops:
                flops = count_flops(one_step)

            def medbalance(cfg=cfg, ds=ds) -> int:
                train_task_model(ds, None, cfg)
                return args.n // args.batch_size * args.batch_size * args.epochs  # images seen (ragged batch dropped)

            fns[f"medbalance {lay}"] = medbalance
            fns[f"plain {lay}"] = run
        for fn in fns.values():  # warm-up (oneDNN primitives, allocator)
            fn()
        per: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            ceilings.append(ceiling(torch.float32, args.ceiling_s)["flops_per_s"])
            for k, fn in fns.items():
                t = time.perf_counter()
                seen = fn()
                per[k].append(seen / (time.perf_counter() - t))
        ips = {k: statistics.median(v) for k, v in per.items()}
        ceil = statistics.median(ceilings)
        step_flops = flops / args.batch_size
        for lay in ("NCHW", "NHWC"):
            r = {"task": task, "layout": lay, "medbalance_images_per_s": ips[f"medbalance {lay}"],
                 "plain_images_per_s": ips[f"plain {lay}"],
                 "ratio_medbalance_over_plain": ips[f"medbalance {lay}"] / ips[f"plain {lay}"],
                 "flops_per_image": step_flops,
                 "plain_ceiling_fraction": ips[f"plain {lay}"] * step_flops / ceil}
            rows.append(r)
        nchw, nhwc = rows[-2], rows[-1]
        nhwc["ratio_nhwc_over_nchw"] = nhwc["medbalance_images_per_s"] / nchw["medbalance_images_per_s"]
    print(f"fp32 ceiling (median of {len(ceilings)} measurements): {statistics.median(ceilings) / 1e9:.0f} GFLOP/s\n")
    print("| network | layout | medbalance images/s | plain images/s | medbalance / plain | MFLOP per image "
          "(training step) | plain: fraction of the fp32 ceiling |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'small CNN classifier' if r['task'] == 'classification' else 'U-Net segmentor'} | {r['layout']} | "
              f"{r['medbalance_images_per_s']:.1f} | {r['plain_images_per_s']:.1f} | "
              f"{r['ratio_medbalance_over_plain']:.2f} | {r['flops_per_image'] / 1e6:.0f} | "
              f"{r['plain_ceiling_fraction']:.2f} |")
    for r in rows:
        if "ratio_nhwc_over_nchw" in r:
            print(f"{r['task']}: medbalance channels-last / NCHW = {r['ratio_nhwc_over_nchw']:.2f}x")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    from medbalance.utils.io import atomic_write_json

    atomic_write_json(out, {
        "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "loadavg_start": list(load0), "loadavg_end": list(os.getloadavg())},
        "settings": {k: getattr(args, k) for k in ("n", "size", "batch_size", "epochs", "rounds", "tiny")},
        "ceiling_fp32_flops_per_s": statistics.median(ceilings), "rows": rows,
    })
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
