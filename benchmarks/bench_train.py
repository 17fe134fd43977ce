"""Training-step and generation speed of every generator's ``cpu`` preset vs a plain PyTorch loop.

    python benchmarks/bench_train.py                                  # all models, 64 px, threads 1 and 2
    python benchmarks/bench_train.py --models dcgan,spade --steps 5 --size 64 --threads 1
    python benchmarks/bench_train.py --json /tmp/bench_train.json

For each model (``cpu`` preset, batch ``--batch-size``) and each thread count:

* ``mb fp32`` / ``mb bf16``: images/s of ``method.training_step`` - the exact call the engine makes -
  with the engine's precision setting (``method.autocast`` = ``medbalance.utils.device.autocast``;
  bf16 only when ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``);
* ``plain fp32``: the same networks (a deep copy with the same initial weights; for DCGAN, independent
  hand-written ``nn.Sequential`` networks of the same architecture) driven by a minimal hand-written
  training loop in fp32 without autocast, the same losses and optimisers (Adam, the preset's lr/betas);
* ratios ``mb fp32 / plain fp32`` (framework overhead; ~1.0 expected) and ``mb bf16 / plain fp32``;
* ``gen``: images/s of ``load_run(run).generate`` on a run folder written by the real engine
  (``medbalance.training.engine.train``, 2 steps) - the path ``medbalance synthesize`` uses.

Timing: after warm-up, variants are measured in interleaved rounds (mb fp32, plain, mb bf16, repeat)
and the median round is reported, so slow drift of a shared machine hits all variants alike. The
machine may be shared with other jobs: absolute numbers are noisy, compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

ALL_MODELS = ("dcgan", "acgan", "lapgan", "lapgan-joint", "pix2pix", "spade", "redgan")


# ============================================================================ plain baselines
def _adam(module: nn.Module, lr: float, b1: float, b2: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(b1, b2))


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _augmenter(p) -> Callable[[torch.Tensor], torch.Tensor]:
    """The preset's DiffAugment (the same op as medbalance's: it is part of the computation being timed)."""
    from medbalance.models.augment import diff_augment

    policy = list(getattr(p, "augment", []))
    return lambda x: diff_augment(x, policy)


def plain_dcgan(method, info) -> Callable[[dict], None]:
    """An independent, hand-written DCGAN (Radford et al.) of the preset's architecture."""
    p = method.params
    S, C = method.size, info.channels
    n = int(round(torch.log2(torch.tensor(float(S))).item())) - 2
    gw = [p.ngf * min(p.max_mult, 2 ** (n - 1 - i)) for i in range(n)]
    dw = [p.ndf * min(p.max_mult, 2**j) for j in range(n)]
    def up(a: int, b: int) -> list[nn.Module]:  # the preset's upsampling: transposed conv or nearest + conv3x3
        if p.upsample == "resize":
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, 1, 1, bias=False)]
        return [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False)]

    g_layers: list[nn.Module] = [nn.ConvTranspose2d(p.z_dim, gw[0], 4, 1, 0, bias=False), nn.BatchNorm2d(gw[0]), nn.ReLU(True)]
    for a, b in zip(gw[:-1], gw[1:]):
        g_layers += [*up(a, b), nn.BatchNorm2d(b), nn.ReLU(True)]
    g_layers += [*up(gw[-1], C), nn.Tanh()]
    d_layers: list[nn.Module] = [nn.Conv2d(C, dw[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
    for a, b in zip(dw[:-1], dw[1:]):
        d_layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
    d_layers += [nn.Conv2d(dw[-1], 1, 4, 1, 0)]
    G, D = nn.Sequential(*g_layers), nn.Sequential(*d_layers)
    n_mb = sum(q.numel() for q in method.G.parameters()) + sum(q.numel() for q in method.D.parameters())
    n_pl = sum(q.numel() for q in G.parameters()) + sum(q.numel() for q in D.parameters())
    if n_mb != n_pl:
        raise RuntimeError(f"plain DCGAN has {n_pl} parameters, medbalance's {n_mb}: architectures differ")
    og, od = _adam(G, p.lr_g, p.beta1, p.beta2), _adam(D, p.lr_d, p.beta1, p.beta2)
    aug = _augmenter(p)

    def step(batch: dict) -> None:
        real = batch["image"]
        z = torch.randn(real.shape[0], p.z_dim, 1, 1)
        fake = G(z)
        loss_d = _bce(D(aug(real)).flatten(), 1.0) + _bce(D(aug(fake.detach())).flatten(), 0.0)
        od.zero_grad()
        loss_d.backward()
        od.step()
        loss_g = _bce(D(aug(fake)).flatten(), 1.0)
        og.zero_grad()
        loss_g.backward()
        og.step()

    return step


def plain_acgan(method, info) -> Callable[[dict], None]:
    p = method.params
    G, D = copy.deepcopy(method.G), copy.deepcopy(method.D)
    og, od = _adam(G, p.lr_g, p.beta1, p.beta2), _adam(D, p.lr_d, p.beta1, p.beta2)
    K = method.num_classes
    aug, tac = _augmenter(p), p.aux_loss == "tac"

    def step(batch: dict) -> None:
        real, y = batch["image"], batch["label"]
        yf = torch.randint(0, K, y.shape)
        fake = G(torch.randn(real.shape[0], p.z_dim), yf)
        hr, hf = D.features(aug(real)), D.features(aug(fake.detach()))
        loss_d = _bce(D.logits(hr), 1.0) + _bce(D.logits(hf), 0.0)
        fake_cls = D.twin_logits(hf) if tac else D.class_logits(hf)
        loss_d = loss_d + F.cross_entropy(D.class_logits(hr), y) + F.cross_entropy(fake_cls, yf)
        od.zero_grad()
        loss_d.backward()
        od.step()
        h = D.features(aug(fake))
        loss_g = _bce(D.logits(h), 1.0) + F.cross_entropy(D.class_logits(h), yf)
        if tac:
            loss_g = loss_g - F.cross_entropy(D.twin_logits(h), yf)
        og.zero_grad()
        loss_g.backward()
        og.step()

    return step


def plain_lapgan(method, info) -> Callable[[dict], None]:
    from medbalance.models.lapgan import gaussian_pyramid, pyr_up

    p = method.params
    G, D = copy.deepcopy(method.G), copy.deepcopy(method.D)
    og, od = _adam(G, p.lr_g, p.beta1, p.beta2), _adam(D, p.lr_d, p.beta1, p.beta2)
    joint, levels = method.joint, method.levels
    cond = method.conditional
    aug = _augmenter(p)

    def step(batch: dict) -> None:
        real = batch["image"]
        y = batch["label"] if cond else None
        b = real.shape[0]
        with torch.no_grad():
            gauss = gaussian_pyramid(real, levels)
            lows_r = [pyr_up(g) for g in gauss[:-1]]
        fakes, lows = [G.coarse(torch.randn(b, p.z_dim), y)], []
        for i, ref in enumerate(G.refiners):
            low = pyr_up(fakes[-1]) if joint else lows_r[i]
            lows.append(low)
            s = G.sizes[i + 1]
            fakes.append(low + ref(torch.randn(b, p.ref_nz, s, s), low, y))
        loss_d = _bce(D.coarse(aug(gauss[0]), y), 1.0) + _bce(D.coarse(aug(fakes[0].detach()), y), 0.0)
        for i, dk in enumerate(D.refiners):
            loss_d = loss_d + _bce(dk(aug(torch.cat([gauss[i + 1], lows_r[i]], 1)), y), 1.0)
            loss_d = loss_d + _bce(dk(aug(torch.cat([fakes[i + 1].detach(), lows[i].detach()], 1)), y), 0.0)
        od.zero_grad()
        loss_d.backward()
        od.step()
        loss_g = _bce(D.coarse(aug(fakes[0]), y), 1.0)
        for i, dk in enumerate(D.refiners):
            loss_g = loss_g + _bce(dk(aug(torch.cat([fakes[i + 1], lows[i]], 1)), y), 1.0)
        og.zero_grad()
        loss_g.backward()
        og.step()

    return step


def plain_pix2pix(method, info) -> Callable[[dict], None]:
    p = method.params
    G, D = copy.deepcopy(method.G), copy.deepcopy(method.D)
    og, od = _adam(G, p.lr_g, p.beta1, p.beta2), _adam(D, p.lr_d, p.beta1, p.beta2)
    K = info.num_mask_labels

    def step(batch: dict) -> None:
        real = batch["image"]
        seg = F.one_hot(batch["mask"], K).permute(0, 3, 1, 2).float()
        fake = G(seg)
        loss_d = 0.5 * (_bce(D(torch.cat([seg, real], 1)), 1.0) + _bce(D(torch.cat([seg, fake.detach()], 1)), 0.0))
        od.zero_grad()
        loss_d.backward()
        od.step()
        loss_g = _bce(D(torch.cat([seg, fake], 1)), 1.0) + p.lambda_l1 * F.l1_loss(fake, real)
        og.zero_grad()
        loss_g.backward()
        og.step()

    return step


def plain_spade(method, info) -> Callable[[dict], None]:
    """SPADE / Red-GAN: G step (hinge + feature matching, fake and real in one D batch), then D step."""
    p = method.params
    G, D = copy.deepcopy(method.G), copy.deepcopy(method.D)
    S = getattr(method, "S", None)  # Red-GAN's frozen segmentor (shared: it is never updated)
    og, od = _adam(G, p.lr_g, p.beta1, p.beta2), _adam(D, p.lr_d, p.beta1, p.beta2)
    K = info.num_mask_labels
    red = S is not None

    def d_in(seg, img, s):
        return torch.cat([seg, img] + ([s] if s is not None else []), 1)

    def step(batch: dict) -> None:
        real = batch["image"]
        b = real.shape[0]
        seg = F.one_hot(batch["mask"], K).permute(0, 3, 1, 2).float()
        cls = batch["label"] if red else None
        for q in D.parameters():
            q.requires_grad_(False)
        fake = G(seg, cls, None)
        s_fake = S(fake) if red else None
        with torch.no_grad():
            s_real = S(real) if red else None
        pred = D(torch.cat([d_in(seg, fake, s_fake), d_in(seg, real, s_real)]))
        loss_g = sum(-sc[-1][:b].mean() for sc in pred) / len(pred)
        fm = sum(F.l1_loss(f[:b], f[b:].detach()) for sc in pred for f in sc[:-1]) / len(pred)
        loss_g = loss_g + p.lambda_fm * fm
        og.zero_grad()
        loss_g.backward()
        og.step()
        for q in D.parameters():
            q.requires_grad_(True)
        with torch.no_grad():
            fake = G(seg, cls, None)
            s_fake = S(fake) if red else None
        pred = D(torch.cat([d_in(seg, fake, s_fake), d_in(seg, real, s_real)]))
        loss_d = sum(F.relu(1 + sc[-1][:b]).mean() + F.relu(1 - sc[-1][b:]).mean() for sc in pred) / len(pred)
        od.zero_grad()
        loss_d.backward()
        od.step()

    return step


PLAIN = {
    "dcgan": plain_dcgan, "acgan": plain_acgan, "lapgan": plain_lapgan, "lapgan-joint": plain_lapgan,
    "pix2pix": plain_pix2pix, "spade": plain_spade, "redgan": plain_spade,
}  # fmt: skip


# ============================================================================ helpers
def build(name: str, info, segmentor: nn.Module | None):
    from medbalance.models.registry import MODELS, ensure_registered, resolve_params

    ensure_registered()
    params = resolve_params(name, "cpu", {})
    if name == "redgan":
        return MODELS.get(name).method(params, info, segmentor=segmentor)
    return MODELS.get(name).method(params, info)


def small_segmentor(info) -> nn.Module:
    from medbalance.models.tasknets import SegmentationUNet

    return SegmentationUNet(info.channels, info.num_mask_labels, channels=(16, 32, 64, 128)).eval()


def time_rounds(fns: dict[str, Callable[[], None]], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each fn over ``rounds`` interleaved rounds of ``steps`` calls."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            per[k].append((time.perf_counter() - t) / steps)
    return {k: statistics.median(v) for k, v in per.items()}


def bench_generation(name: str, ds, size: int, n_gen: int, precision: str) -> dict[str, float]:
    """Train 2 engine steps into a temp run folder, then time load_run(...).generate."""
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import train
    from medbalance.training.run import load_run

    with tempfile.TemporaryDirectory() as tmp:
        params: dict[str, Any] = {}
        if name == "redgan":
            from medbalance.models.tasknets import save_task_model

            save_task_model(Path(tmp) / "seg", small_segmentor(ds.info()), {"task": "segmentation", "mask_values": ds.mask_values})
            params["segmentor"] = str(Path(tmp) / "seg")
        cfg = RunConfig.from_dict(
            {
                "out_dir": str(Path(tmp) / "run"),
                "data": {"path": "phantom", "phantom": {"size": size}},
                "model": {"name": name, "preset": "cpu", "params": params},
                "train": {"steps": 2, "batch_size": 8, "precision": precision, "tensorboard": False, "sample_columns": 2},
            }
        )
        res = train(cfg, ds)
        run = load_run(res.run_dir)
        labels = torch.arange(n_gen) % ds.num_classes
        masks = ds.masks[torch.arange(n_gen) % len(ds)] if "mask" in run.method.needs else None
        run.generate(labels[:8], masks=None if masks is None else masks[:8], seed=0)  # warm-up
        t = time.perf_counter()
        run.generate(labels, masks=masks, seed=0, batch_size=64)
        dt = time.perf_counter() - t
        return {"gen_images_per_s": n_gen / dt}


# ============================================================================ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ALL_MODELS))
    ap.add_argument("--steps", type=int, default=3, help="training steps per timing round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    ap.add_argument("--size", type=int, default=64, help="image side")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    ap.add_argument("--n-gen", type=int, default=256, help="images generated for the generation timing")
    ap.add_argument("--no-gen", action="store_true", help="skip the generation timing")
    ap.add_argument("--nhwc", action="store_true", help="also time mb fp32 with train.channels_last (NHWC)")
    ap.add_argument("--json", default=os.path.join(tempfile.gettempdir(), "medbalance_bench", "bench_train.json"))
    args = ap.parse_args()
    os.environ.setdefault("MEDBALANCE_QUIET", "1")

    from medbalance.data.config import DataConfig
    from medbalance.data.sources import load_dataset
    from medbalance.utils.device import autocast, cpu_bf16_supported

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in ALL_MODELS]
    if bad:
        raise SystemExit(f"error: unknown models {bad}; allowed: {', '.join(ALL_MODELS)}")
    threads = [int(t) for t in args.threads.split(",")]
    bf16 = cpu_bf16_supported()
    cpu = torch.device("cpu")
    ds = load_dataset(DataConfig(path="phantom", phantom={"n": max(48, args.batch_size), "size": args.size}))
    info = ds.info()
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds), generator=g)[: args.batch_size]
    batch = {"image": ds.images[idx], "label": ds.labels[idx], "mask": ds.masks[idx], "index": idx}
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load avg {os.getloadavg()[0]:.1f}; bf16 native: {bf16}; batch {args.batch_size} x {args.size}px; "
        f"{args.rounds} rounds x {args.steps} steps, median"
    )
    print("Shared machine: absolute images/s are noisy; compare the ratios measured in the same run.")
    rows: list[dict[str, Any]] = []
    seg = small_segmentor(info)
    for name in models:
        for th in threads:
            torch.set_num_threads(th)
            torch.manual_seed(0)
            variants: dict[str, Callable[[], None]] = {}
            mb32 = build(name, info, copy.deepcopy(seg))
            mb32.setup_optimizers()
            mb32.train()
            plain = PLAIN[name](mb32, info)  # built from the untouched initial weights
            counter = {"s": 0}

            def mb_step(m=mb32):
                counter["s"] += 1
                m.training_step(batch, counter["s"])

            variants["mb_fp32"] = mb_step
            if args.nhwc:
                torch.manual_seed(0)
                mbcl = build(name, info, copy.deepcopy(seg))
                mbcl.to(memory_format=torch.channels_last)  # what the engine does for train.channels_last
                mbcl.setup_optimizers()
                mbcl.train()
                batch_cl = dict(batch, image=batch["image"].contiguous(memory_format=torch.channels_last))
                variants["mb_fp32_nhwc"] = lambda m=mbcl: m.training_step(batch_cl, 0)
            variants["plain_fp32"] = lambda: plain(batch)
            if bf16:
                torch.manual_seed(0)
                mb16 = build(name, info, copy.deepcopy(seg))
                mb16.autocast = lambda: autocast(cpu, "bf16")  # what the engine sets for precision bf16
                mb16.setup_optimizers()
                mb16.train()
                variants["mb_bf16"] = lambda m=mb16: m.training_step(batch, 0)
            for fn in variants.values():  # warm-up (oneDNN primitive creation, allocator)
                fn()
            sec = time_rounds(variants, args.steps, args.rounds)
            r: dict[str, Any] = {"model": name, "threads": th}
            for k, s in sec.items():
                r[f"{k}_images_per_s"] = args.batch_size / s
            r["ratio_mb_fp32_over_plain"] = sec["plain_fp32"] / sec["mb_fp32"]
            if "mb_bf16" in sec:
                r["ratio_mb_bf16_over_plain"] = sec["plain_fp32"] / sec["mb_bf16"]
            if "mb_fp32_nhwc" in sec:
                r["ratio_mb_nhwc_over_mb_fp32"] = sec["mb_fp32"] / sec["mb_fp32_nhwc"]
            rows.append(r)
            print(
                f"{name:13s} thr {th}: mb fp32 {r['mb_fp32_images_per_s']:7.1f}  plain fp32 {r['plain_fp32_images_per_s']:7.1f}"
                f"  mb bf16 {r.get('mb_bf16_images_per_s', float('nan')):7.1f} img/s | ratio fp32 "
                f"{r['ratio_mb_fp32_over_plain']:.2f}  bf16 {r.get('ratio_mb_bf16_over_plain', float('nan')):.2f}",
                flush=True,
            )
            if "mb_fp32_nhwc" in sec:
                print(f"{'':13s} thr {th}: mb fp32 channels-last {r['mb_fp32_nhwc_images_per_s']:7.1f} img/s"
                      f" = {r['ratio_mb_nhwc_over_mb_fp32']:.2f}x mb fp32", flush=True)
        if not args.no_gen:
            torch.set_num_threads(threads[0])
            for prec in (["fp32", "bf16"] if bf16 else ["fp32"]):
                gr = bench_generation(name, ds, args.size, args.n_gen, prec)
                rows.append({"model": name, "threads": threads[0], "gen_precision": prec,
                             "gen_images_per_s": gr["gen_images_per_s"]})
                print(f"{name:13s} thr {threads[0]}: generate (load_run, {prec}) {gr['gen_images_per_s']:8.1f} img/s", flush=True)

    # table
    print()
    hdr = f"| model | threads | mb fp32 img/s | plain fp32 img/s | mb/plain | mb bf16 img/s | bf16/plain fp32 |"
    print(hdr)
    print("|" + "---|" * 7)
    for r in rows:
        if "gen_images_per_s" in r:
            continue
        print(
            f"| {r['model']} | {r['threads']} | {r['mb_fp32_images_per_s']:.1f} | {r['plain_fp32_images_per_s']:.1f} | "
            f"{r['ratio_mb_fp32_over_plain']:.2f} | {r.get('mb_bf16_images_per_s', float('nan')):.1f} | "
            f"{r.get('ratio_mb_bf16_over_plain', float('nan')):.2f} |"
        )
    gens = [r for r in rows if "gen_images_per_s" in r]
    if gens:
        print("\n| model | generate precision | images/s (load_run().generate, batch 64) |\n|---|---|---|")
        for r in gens:
            print(f"| {r['model']} | {r['gen_precision']} | {r['gen_images_per_s']:.1f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    from medbalance.utils.io import atomic_write_json

    atomic_write_json(
        out,
        {
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "loadavg_start": os.getloadavg()[0],
            "bf16_native": bf16,
            "batch_size": args.batch_size,
            "size": args.size,
            "steps": args.steps,
            "rounds": args.rounds,
            "note": "shared machine: compare ratios within one run",
            "rows": rows,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
