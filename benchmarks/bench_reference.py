"""Training speed of medbalance against the reference implementations a user would run instead.

    python benchmarks/bench_reference.py                           # DCGAN-64 and pix2pix-256, 2 threads
    python benchmarks/bench_reference.py --only dcgan --rounds 5 --json /tmp/ref.json
    python benchmarks/bench_reference.py --tiny --threads 1        # seconds-long smoke run (tests/test_bench_reference.py)

Two comparisons on the same data: the built-in phantom written as 8-bit PNGs + ``manifest.csv`` into a temporary
folder (``medbalance.data.phantom.write_phantom_dataset``) and read back with medbalance's manifest loader, so both
sides train on the same pixels (1 channel, label maps with values 0-4).

* ``dcgan``: the DCGAN of pytorch/examples (``dcgan/main.py``), written here from its description: G = 5 transposed
  convolutions (nz=100 -> 8*ngf at 4x4, then /2 channels per doubling to ngf=64, then to nc), BatchNorm + ReLU
  between them, Tanh; D = 5 convolutions (ndf=64, x2 per halving) with LeakyReLU(0.2), BatchNorm from the second,
  Sigmoid + ``BCELoss``; no biases; weights N(0, 0.02), BatchNorm weights N(1, 0.02); Adam 2e-4, betas (0.5, 0.999);
  its step: D on the real batch (backward), D on ``fake.detach()`` (backward), D step, then G through D (D's weight
  gradients are computed too, as there), G step, and the ``.item()`` calls of its progress line. Against
  medbalance's ``dcgan`` ``paper`` preset, 64 px, batch 64.
* ``pix2pix``: junyanz/pytorch-CycleGAN-and-pix2pix (``models/networks.py``, ``models/pix2pix_model.py``), written
  here from its description: ``unet_256`` U-Net (num_downs=8, ngf=64, BatchNorm, dropout 0.5 in the three inner
  8*ngf blocks), ``NLayerDiscriminator`` (n_layers=3, ndf=64, BatchNorm) on concat(input, output), vanilla GAN loss
  (``BCEWithLogitsLoss``) + 100 * L1, Adam 2e-4, betas (0.5, 0.999); its ``optimize_parameters``: G forward, D on
  the detached fake pair and the real pair (loss x 0.5), D step, D frozen, G step. Input = the one-hot label map
  (5 channels), output = the image. Against medbalance's ``pix2pix`` ``paper`` preset, 256 px, batch 1.

What is timed:

* ``reference``: its training step on in-memory batches (no data loading), fp32 and, when the CPU has native bf16
  (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``; the engine refuses bf16 elsewhere; ``--bf16 off`` skips it), under
  ``torch.autocast("cpu", torch.bfloat16)``.
* ``medbalance``: ``medbalance.training.engine.train(RunConfig)`` -- the call behind ``medbalance train`` -- for
  ``--steps`` steps into a fresh run folder, data read from the manifest, every other setting at its default
  (losses.csv and TensorBoard every 10 steps, a sample grid and a checkpoint at the end), ``train.precision`` fp32
  (and bf16 where the reference gets bf16). Three figures per run:

  - ``loop``: the engine's time (``RunResult.seconds``, setup excluded) minus the time spent in its sample grid
    and checkpoint (both timed by wrapping ``Trainer.sample_grid`` / ``Trainer._save_checkpoint``): batch reading,
    flips, training step, loss logging (losses.csv, TensorBoard);
  - ``e2e``: ``loop`` plus the measured sample grid and checkpoint, each amortised over its default interval
    (``sample_every`` 250, ``checkpoint_every`` 500 steps): what a long ``medbalance train`` run sustains;
  - ``call``: images / wall time of the whole ``train()`` call (config, data decoding, model build, the steps, one
    grid and checkpoint): a ``--steps``-step run, setup included.

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one training step of each implementation; the smaller
  count (the update's model FLOPs; the DCGAN reference also computes D's weight gradients in its G step) is used to
  express each throughput as a fraction of the machine's ceiling, measured in every round as the best of a
  1024x1024 matmul loop and a 3x3 convolution (8x128x32x32, 128 filters) loop at the same thread count (fp32; bf16
  as well when enabled).

Method: one warm-up call per variant, then ``--rounds`` interleaved rounds (ceiling, reference fp32, medbalance fp32
[, reference bf16, medbalance bf16]; every other round medbalance first) of ``--steps`` steps each; medians, and the
median of the per-round ratios (medbalance e2e / reference in the same round). The machine may be shared: absolute numbers
move with its load (recorded in the JSON), ratios measured in the same run are what compare.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import torch.nn.functional as F
from torch import nn

from _machine import cpu_model  # benchmarks/ (the script's folder) is on sys.path

MASK_VALUES = [0, 1, 2, 3, 4]  # the phantom's label map values
RATIO_TARGET = 1.3  # issue target: medbalance end to end >= 1.3x the reference at its best setting
CEILING_TARGET = 0.8  # issue target: >= 80 % of the (bf16) matmul/conv ceiling

# per comparison: model, image side, batch, phantom images written, medbalance preset
SETUPS: dict[str, dict[str, Any]] = {
    "dcgan": {"model": "dcgan", "size": 64, "batch": 64, "n": 256, "label": "DCGAN-64 (pytorch/examples dcgan)"},
    "pix2pix": {"model": "pix2pix", "size": 256, "batch": 1, "n": 16,
                "label": "pix2pix-256 (junyanz unet_256 + PatchGAN)"},
}  # fmt: skip
TINY = {"steps": 1, "rounds": 1, "warmup": 0, "ceiling_s": 0.05, "dcgan_batch": 8, "dcgan_n": 16, "pix2pix_n": 4}


# ============================================================================ references
def _init_normal(m: nn.Module) -> None:
    """N(0, 0.02) for conv weights (bias 0), N(1, 0.02) for BatchNorm weights (bias 0): both references' init."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class RefDCGAN:
    """pytorch/examples' DCGAN (64 px), networks and training step as described in the module docstring."""

    def __init__(self, nc: int, nz: int = 100, ngf: int = 64, ndf: int = 64, lr: float = 2e-4, beta1: float = 0.5):
        self.nz = nz
        g: list[nn.Module] = []
        cin = nz
        for i, mult in enumerate((8, 4, 2, 1)):  # 4x4, 8x8, 16x16, 32x32
            first = i == 0
            g += [nn.ConvTranspose2d(cin, ngf * mult, 4, 1 if first else 2, 0 if first else 1, bias=False),
                  nn.BatchNorm2d(ngf * mult), nn.ReLU(True)]  # fmt: skip
            cin = ngf * mult
        g += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        d: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for mult in (1, 2, 4):  # 32 -> 16 -> 8 -> 4
            d += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult * 2),
                  nn.LeakyReLU(0.2, True)]  # fmt: skip
        d += [nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.G, self.D = nn.Sequential(*g), nn.Sequential(*d)
        self.G.apply(_init_normal)
        self.D.apply(_init_normal)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=(beta1, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr, betas=(beta1, 0.999))
        self.bce = nn.BCELoss()

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def step(self, batch: dict[str, torch.Tensor], amp: Callable[[], Any]) -> None:
        real = batch["image"]
        b = real.shape[0]
        ones, zeros = torch.ones(b), torch.zeros(b)
        self.D.zero_grad()
        with amp():
            out = self.D(real).view(-1)
        err_real = self.bce(out.float(), ones)
        err_real.backward()
        d_x = out.float().mean().item()
        noise = torch.randn(b, self.nz, 1, 1)
        with amp():
            fake = self.G(noise)
            out = self.D(fake.detach()).view(-1)
        err_fake = self.bce(out.float(), zeros)
        err_fake.backward()
        d_g_z1 = out.float().mean().item()
        self.opt_d.step()
        self.G.zero_grad()
        with amp():
            out = self.D(fake).view(-1)
        err_g = self.bce(out.float(), ones)
        err_g.backward()
        d_g_z2 = out.float().mean().item()
        self.opt_g.step()
        self.last = ((err_real + err_fake).item(), err_g.item(), d_x, d_g_z1, d_g_z2)  # its progress line


class _UNetLevel(nn.Module):
    """One level of the reference U-Net: down conv, the inner levels, up conv; the input is concatenated to the
    output except at the outermost level."""

    def __init__(self, outer: int, inner: int, inside: nn.Module | None = None, in_ch: int | None = None,
                 where: str = "middle", dropout: bool = False):  # fmt: skip
        super().__init__()
        down = nn.Conv2d(outer if in_ch is None else in_ch, inner, 4, 2, 1, bias=False)  # BatchNorm: no conv bias
        self.outermost = where == "outer"
        if where == "outer":
            layers = [down, inside, nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1), nn.Tanh()]
        elif where == "inner":
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]  # fmt: skip
        else:
            layers = [nn.LeakyReLU(0.2, True), down, nn.BatchNorm2d(inner), inside, nn.ReLU(True),
                      nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]  # fmt: skip
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y if self.outermost else torch.cat([x, y], 1)


def ref_unet(in_ch: int, out_ch: int, num_downs: int = 8, ngf: int = 64) -> nn.Module:
    level: nn.Module = _UNetLevel(ngf * 8, ngf * 8, where="inner")
    for _ in range(num_downs - 5):
        level = _UNetLevel(ngf * 8, ngf * 8, level, dropout=True)
    for mult in (4, 2, 1):
        level = _UNetLevel(ngf * mult, ngf * mult * 2, level)
    return _UNetLevel(out_ch, ngf, level, in_ch=in_ch, where="outer")


def ref_patch_discriminator(in_ch: int, ndf: int = 64, n_layers: int = 3) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers + 1):  # the last of these keeps the size (stride 1)
        prev, mult = mult, min(2**n, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, 1, bias=False),
                   nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]  # fmt: skip
    layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
    return nn.Sequential(*layers)


class RefPix2Pix:
    """junyanz/pytorch-CycleGAN-and-pix2pix's pix2pix (unet_256, basic PatchGAN, batch norm), as described above."""

    def __init__(self, in_ch: int, out_ch: int, lambda_l1: float = 100.0, lr: float = 2e-4, beta1: float = 0.5):
        self.G = ref_unet(in_ch, out_ch)
        self.D = ref_patch_discriminator(in_ch + out_ch)
        self.G.apply(_init_normal)
        self.D.apply(_init_normal)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=(beta1, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr, betas=(beta1, 0.999))
        self.lambda_l1 = lambda_l1

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    @staticmethod
    def _gan(pred: torch.Tensor, real: bool) -> torch.Tensor:  # vanilla GANLoss: BCE with logits, target expanded
        pred = pred.float()
        return F.binary_cross_entropy_with_logits(pred, torch.tensor(1.0 if real else 0.0).expand_as(pred))

    def step(self, batch: dict[str, torch.Tensor], amp: Callable[[], Any]) -> None:
        a, b = batch["input"], batch["image"]
        with amp():
            fake_b = self.G(a)
        self.D.requires_grad_(True)
        self.opt_d.zero_grad()
        with amp():
            pred_fake = self.D(torch.cat([a, fake_b], 1).detach())
            pred_real = self.D(torch.cat([a, b], 1))
        loss_d = (self._gan(pred_fake, False) + self._gan(pred_real, True)) * 0.5
        loss_d.backward()
        self.opt_d.step()
        self.D.requires_grad_(False)
        self.opt_g.zero_grad()
        with amp():
            pred_fake = self.D(torch.cat([a, fake_b], 1))
        loss_g = self._gan(pred_fake, True) + F.l1_loss(fake_b.float(), b) * self.lambda_l1
        loss_g.backward()
        self.opt_g.step()


# ============================================================================ helpers
def _bf16_amp() -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def param_counts(nets: dict[str, nn.Module]) -> dict[str, dict[str, int]]:
    """Per network: all parameters, and the weights of conv/linear layers only (tensors with > 1 dimension)."""
    return {
        k: {"total": sum(p.numel() for p in m.parameters()), "weights": sum(p.numel() for p in m.parameters() if p.dim() > 1)}
        for k, m in nets.items()
    }


def count_flops(fn: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def ceiling(dtype: torch.dtype, seconds: float) -> dict[str, float]:
    """Best FLOP/s of a 1024^3 matmul loop and of a 3x3 convolution loop (8x128x32x32 -> 128), ``seconds`` each."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 1024, generator=g).to(dtype), torch.randn(1024, 1024, generator=g).to(dtype)
    x, w = torch.randn(8, 128, 32, 32, generator=g).to(dtype), torch.randn(128, 128, 3, 3, generator=g).to(dtype)

    def rate(fn: Callable[[], Any], flops: float) -> float:
        fn()  # warm-up
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds:
                return flops * n / dt

    mm = rate(lambda: torch.mm(a, b), 2.0 * 1024**3)
    conv = rate(lambda: F.conv2d(x, w, padding=1), 2.0 * 8 * 128 * 128 * 9 * 32 * 32)
    return {"matmul_flops_per_s": mm, "conv_flops_per_s": conv, "flops_per_s": max(mm, conv)}


def native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def load(manifest: Path, cache: Path):
    from medbalance.data.config import DataConfig
    from medbalance.data.sources import load_dataset

    return load_dataset(DataConfig(path=str(manifest), mask_values=MASK_VALUES, cache_dir=str(cache)))


def batches(ds, batch: int, one_hot: bool) -> list[dict[str, torch.Tensor]]:
    """Consecutive batches of the dataset in memory (the reference's input; one-hot label map for pix2pix)."""
    out = []
    for s in range(len(ds) // batch):
        idx = torch.arange(s * batch, (s + 1) * batch)
        bt = {"image": ds.images[idx], "label": ds.labels[idx], "mask": ds.masks[idx], "index": idx}
        if one_hot:
            bt["input"] = F.one_hot(ds.masks[idx].long(), len(MASK_VALUES)).permute(0, 3, 1, 2).float()
        out.append(bt)
    return out


def mb_config(setup: dict[str, Any], manifest: Path, cache: Path, out: Path, steps: int, precision: str,
              threads: int):  # fmt: skip
    from medbalance.training.config import RunConfig

    return RunConfig.from_dict({
        "out_dir": str(out),
        "data": {"path": str(manifest), "mask_values": MASK_VALUES, "cache_dir": str(cache)},
        "model": {"name": setup["model"], "preset": "paper"},
        "train": {"steps": steps, "batch_size": setup["batch"], "precision": precision, "device": "cpu",
                  "threads": threads},
    })  # fmt: skip


@contextlib.contextmanager
def timed_grid_and_checkpoint():
    """Time the engine's sample grids and checkpoints (``Trainer.sample_grid`` / ``Trainer._save_checkpoint``,
    wrapped for the duration; they still run unchanged) to split a run's time into loop and periodic work."""
    from medbalance.training.engine import Trainer

    spent = {"grid_s": 0.0, "checkpoint_s": 0.0}
    saved = {"sample_grid": Trainer.sample_grid, "_save_checkpoint": Trainer._save_checkpoint}

    def timed(fn: Callable, key: str) -> Callable:
        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0

        return inner

    Trainer.sample_grid = timed(saved["sample_grid"], "grid_s")
    Trainer._save_checkpoint = timed(saved["_save_checkpoint"], "checkpoint_s")
    try:
        yield spent
    finally:
        for k, fn in saved.items():
            setattr(Trainer, k, fn)


def mb_run(cfg) -> dict[str, float]:
    """One ``train()`` call: wall time, engine time, and the parts of it spent on the sample grid and checkpoint."""
    from medbalance.training.config import TrainConfig
    from medbalance.training.engine import train
    from medbalance.training.logging import read_losses_csv

    t0 = time.perf_counter()
    with timed_grid_and_checkpoint() as spent:
        res = train(cfg)
    wall = time.perf_counter() - t0
    rows = read_losses_csv(Path(cfg.out_dir) / "losses.csv")
    if not rows or rows[-1]["step"] != cfg.train.steps:
        raise RuntimeError(f"losses.csv of {cfg.out_dir} does not end at step {cfg.train.steps}")
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    b, k = cfg.train.batch_size, cfg.train.steps
    loop = res.seconds - spent["grid_s"] - spent["checkpoint_s"]
    fields = TrainConfig.model_fields
    per_step = (loop / k + spent["grid_s"] / fields["sample_every"].default
                + spent["checkpoint_s"] / fields["checkpoint_every"].default)  # fmt: skip
    return {
        "wall_s": wall,
        "engine_s": res.seconds,
        "loop_s": loop,
        **spent,
        "logged_images_per_s": rows[-1]["images_per_s"],  # the engine's own figure for the last window
        "loop_images_per_s": k * b / loop,
        "e2e_images_per_s": b / per_step,
        "call_images_per_s": k * b / wall,
    }


# ============================================================================ one comparison
def compare(name: str, args: argparse.Namespace, root: Path, bf16: bool, ceilings: dict[str, list[dict]]) -> dict:
    from medbalance.data.config import PhantomConfig
    from medbalance.data.phantom import write_phantom_dataset
    from medbalance.models.registry import build_method

    setup = dict(SETUPS[name])
    if args.tiny:
        setup["n"] = TINY[f"{name}_n"]
        if name == "dcgan":
            setup["batch"] = TINY["dcgan_batch"]
    size, B = setup["size"], setup["batch"]
    manifest = write_phantom_dataset(root / f"data_{name}", PhantomConfig(n=setup["n"], size=size))
    cache = root / "cache"
    ds = load(manifest, cache)
    info = ds.info()
    data = batches(ds, B, one_hot=name == "pix2pix")

    torch.manual_seed(0)
    ref = RefDCGAN(info.channels) if name == "dcgan" else RefPix2Pix(len(MASK_VALUES), info.channels)
    method = build_method(setup["model"], "paper", {}, info)  # the networks train() builds (same preset)
    method.setup_optimizers()
    method.train()
    params = {"reference": param_counts(ref.networks()), "medbalance": param_counts(method.networks())}
    fp32 = contextlib.nullcontext
    flops = {
        "reference": count_flops(lambda: ref.step(data[0], fp32)),
        "medbalance": count_flops(lambda: method.training_step(data[0], 0)),
    }
    method = None  # not timed: free it (pix2pix: 57 M parameters + Adam state)
    model_flops = min(flops.values())

    variants = ["fp32"] + (["bf16"] if bf16 else [])
    counter = {"i": 0}

    def ref_steps(prec: str, n: int) -> float:
        amp = _bf16_amp if prec == "bf16" else fp32
        t0 = time.perf_counter()
        for _ in range(n):
            ref.step(data[counter["i"] % len(data)], amp)
            counter["i"] += 1
        return time.perf_counter() - t0

    runs = {"n": 0}

    def mb_steps(prec: str, n: int) -> dict[str, float]:
        runs["n"] += 1
        out = root / f"run_{name}_{runs['n']}"
        return mb_run(mb_config(setup, manifest, cache, out, n, prec, args.threads))

    for prec in variants:  # warm-up: oneDNN primitives, allocator, first TensorBoard import
        for _ in range(args.warmup):
            ref_steps(prec, 1)
            mb_steps(prec, 2)
    ref_t: dict[str, list[float]] = {p: [] for p in variants}
    mb_r: dict[str, list[dict[str, float]]] = {p: [] for p in variants}
    mine: dict[str, list[dict]] = {p: [] for p in variants}  # this comparison's ceiling rounds
    for r in range(args.rounds):
        for prec in variants:
            mine[prec].append(ceiling(torch.bfloat16 if prec == "bf16" else torch.float32, args.ceiling_s))
            ceilings[prec].append(mine[prec][-1])
        for prec in variants:
            if r % 2 == 0:  # ABBA order: a drift of the machine's load within a round favours neither side
                ref_t[prec].append(ref_steps(prec, args.steps))
                mb_r[prec].append(mb_steps(prec, args.steps))
            else:
                mb_r[prec].append(mb_steps(prec, args.steps))
                ref_t[prec].append(ref_steps(prec, args.steps))
            print(f"  {name} round {r + 1}/{args.rounds} {prec}: reference {B * args.steps / ref_t[prec][-1]:.2f} img/s, "
                  f"medbalance loop {mb_r[prec][-1]['loop_images_per_s']:.2f} e2e {mb_r[prec][-1]['e2e_images_per_s']:.2f} "
                  f"call {mb_r[prec][-1]['call_images_per_s']:.2f} img/s", flush=True)  # fmt: skip

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    ceil = {p: med([c["flops_per_s"] for c in mine[p]]) for p in variants}
    rows = []
    for prec in variants:
        ref_ips = B * args.steps / med(ref_t[prec])
        row: dict[str, Any] = {"precision": prec, "reference_images_per_s": ref_ips}
        for kind in ("loop", "e2e", "call"):
            row[f"mb_{kind}_images_per_s"] = med([x[f"{kind}_images_per_s"] for x in mb_r[prec]])
        row["mb_setup_s"] = med([x["wall_s"] - x["engine_s"] for x in mb_r[prec]])
        row["mb_grid_s"] = med([x["grid_s"] for x in mb_r[prec]])
        row["mb_checkpoint_s"] = med([x["checkpoint_s"] for x in mb_r[prec]])
        row["reference_ceiling_fraction"] = model_flops * ref_ips / B / ceil[prec]
        row["mb_e2e_ceiling_fraction"] = model_flops * row["mb_e2e_images_per_s"] / B / ceil[prec]
        paired = [x["e2e_images_per_s"] * t / (B * args.steps) for x, t in zip(mb_r[prec], ref_t[prec])]
        row["paired_ratio_e2e_rounds"] = paired  # mb e2e / reference within each round
        row["paired_ratio_e2e_median"] = med(paired)
        row["ceiling_flops_per_s"] = ceil[prec]
        row["rounds"] = {"reference_s": ref_t[prec], "medbalance": mb_r[prec], "ceiling": mine[prec]}
        rows.append(row)
    best_ref = max(rows, key=lambda x: x["reference_images_per_s"])
    auto = rows[-1]  # precision "auto" picks bf16 where the CPU has it, else fp32: the last variant measured
    for row in rows:
        for kind in ("loop", "e2e", "call"):
            row[f"ratio_mb_{kind}_over_reference"] = row[f"mb_{kind}_images_per_s"] / row["reference_images_per_s"]
    ratio_best = auto["mb_e2e_images_per_s"] / best_ref["reference_images_per_s"]
    ceil_prec = "bf16" if bf16 else "fp32"
    ceil_frac = next(r for r in rows if r["precision"] == ceil_prec)["mb_e2e_ceiling_fraction"]
    differences = {
        net: params["medbalance"][net]["total"] - params["reference"][net]["total"] for net in ("G", "D")
    }
    return {
        "name": name,
        "label": setup["label"],
        "model": setup["model"],
        "preset": "paper",
        "size": size,
        "batch_size": B,
        "channels": info.channels,
        "mask_labels": len(MASK_VALUES),
        "n_images": len(ds),
        "params": params,
        "param_differences": differences,
        "flops_per_step": {**flops, "model": model_flops},
        "rows": rows,
        "targets": {
            "ratio": {
                "target": RATIO_TARGET,
                "value": ratio_best,
                "compared": f"medbalance e2e ({auto['precision']}, precision auto) / reference {best_ref['precision']}",
                "met": ratio_best >= RATIO_TARGET,
            },
            "ceiling": {
                "target": CEILING_TARGET,
                "value": ceil_frac,
                "precision": ceil_prec,
                "note": "" if bf16 else "no native bf16 on this CPU: fraction of the fp32 ceiling instead",
                "met": ceil_frac >= CEILING_TARGET,
            },
        },
    }


# ============================================================================ output
def markdown(res: dict) -> str:
    lines = [
        (
            "| comparison | precision | reference img/s | mb loop img/s | mb e2e img/s | mb call img/s | e2e / reference "
            "| per round: median (range) | model GFLOP/step | reference % of ceiling | mb e2e % of ceiling |"
        ),
        "|" + "---|" * 11,
    ]
    for c in res["comparisons"]:
        gf = c["flops_per_step"]["model"] / 1e9
        for r in c["rows"]:
            lines.append(
                f"| {c['name']}-{c['size']} (batch {c['batch_size']}) | {r['precision']} | {r['reference_images_per_s']:.2f} "
                f"| {r['mb_loop_images_per_s']:.2f} | {r['mb_e2e_images_per_s']:.2f} | {r['mb_call_images_per_s']:.2f} "
                f"| {r['ratio_mb_e2e_over_reference']:.2f} | {r['paired_ratio_e2e_median']:.2f} "
                f"({min(r['paired_ratio_e2e_rounds']):.2f}-{max(r['paired_ratio_e2e_rounds']):.2f}) | {gf:.1f} | {100 * r['reference_ceiling_fraction']:.1f} "
                f"| {100 * r['mb_e2e_ceiling_fraction']:.1f} |"
            )
    lines += ["", "| comparison | network | reference params | medbalance params | difference | conv/linear weights equal |",
              "|" + "---|" * 6]  # fmt: skip
    for c in res["comparisons"]:
        for net in ("G", "D"):
            a, b = c["params"]["reference"][net], c["params"]["medbalance"][net]
            lines.append(f"| {c['name']} | {net} | {a['total']:,} | {b['total']:,} | {b['total'] - a['total']:+,} "
                         f"| {'yes' if a['weights'] == b['weights'] else 'no'} |")  # fmt: skip
    lines += ["", "| comparison | target | value | met |", "|---|---|---|---|"]
    for c in res["comparisons"]:
        t = c["targets"]
        lines.append(f"| {c['name']} | medbalance e2e >= {t['ratio']['target']}x reference ({t['ratio']['compared']}) "
                     f"| {t['ratio']['value']:.2f}x | {'met' if t['ratio']['met'] else 'missed'} |")  # fmt: skip
        note = f" ({t['ceiling']['note']})" if t["ceiling"]["note"] else ""
        lines.append(f"| {c['name']} | >= {100 * t['ceiling']['target']:.0f} % of the {t['ceiling']['precision']} ceiling"
                     f"{note} | {100 * t['ceiling']['value']:.1f} % | {'met' if t['ceiling']['met'] else 'missed'} |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="dcgan,pix2pix", help="comma list of comparisons: dcgan, pix2pix")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (both sides, and train.threads)")
    ap.add_argument("--steps", type=int, default=10, help="training steps per timing round (one engine log window)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up calls per variant")
    ap.add_argument("--ceiling-s", type=float, default=0.5, help="seconds per ceiling loop per round")
    ap.add_argument("--bf16", choices=("auto", "off"), default="auto",
                    help="bf16 variants: auto = when the CPU has native bf16 (medbalance refuses emulated bf16)")  # fmt: skip
    ap.add_argument("--tiny", action="store_true", help=f"smoke run, same architectures: {TINY}")
    ap.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    if args.tiny:
        args.steps, args.rounds, args.warmup, args.ceiling_s = TINY["steps"], TINY["rounds"], TINY["warmup"], TINY["ceiling_s"]
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in names if s not in SETUPS]
    if bad or not names:
        ap.error(f"--only: unknown comparison(s) {bad}; allowed: {', '.join(SETUPS)}")
    if min(args.threads, args.steps, args.rounds) < 1 or args.warmup < 0 or args.ceiling_s <= 0:
        ap.error("--threads, --steps and --rounds must be >= 1, --warmup >= 0, --ceiling-s > 0")
    args.names = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MEDBALANCE_QUIET", "1")
    torch.set_num_threads(args.threads)
    native = native_bf16()
    bf16 = args.bf16 == "auto" and native
    load_start = os.getloadavg()
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {cpu_model()}, {os.cpu_count()} CPUs, {args.threads} threads, load average "
          f"{load_start[0]:.2f}; native bf16: {native}" + ("" if bf16 else " (bf16 variants skipped)"), flush=True)  # fmt: skip
    ceilings: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    comps = []
    with tempfile.TemporaryDirectory(prefix="bench_reference_") as tmp:
        for name in args.names:
            comps.append(compare(name, args, Path(tmp), bf16, ceilings))
    ceil = {
        p: {k: statistics.median(c[k] for c in v) for k in v[0]} if v else None for p, v in ceilings.items()
    }
    res = {
        "date": _dt.date.today().isoformat(),
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "bf16_native": native,
            "bf16_measured": bf16,
            "loadavg_start": list(load_start),
            "loadavg_end": list(os.getloadavg()),
        },
        "settings": {
            "steps": args.steps,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "ceiling_s": args.ceiling_s,
            "tiny": args.tiny,
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        },
        "ceiling": ceil,
        "comparisons": comps,
        "seconds": time.perf_counter() - started,
        "note": "shared machine: absolute images/s move with the load; compare the ratios of one run",
    }
    c32 = ceil["fp32"]
    print(f"\nceiling fp32: matmul {c32['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s, conv {c32['conv_flops_per_s'] / 1e9:.1f} "
          f"GFLOP/s" + (f"; bf16: {ceil['bf16']['flops_per_s'] / 1e9:.1f} GFLOP/s" if ceil["bf16"] else ""))  # fmt: skip
    print(f"load average {load_start[0]:.2f} at the start, {res['machine']['loadavg_end'][0]:.2f} at the end; "
          f"{res['seconds']:.0f} s\n")
    print(markdown(res))
    if args.json is not None:
        from medbalance.utils.io import atomic_write_json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, res)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
