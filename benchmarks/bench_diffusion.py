"""Training and sampling speed of the diffusion models' presets (images/s), per training phase.

    python benchmarks/bench_diffusion.py                                   # both models, cpu preset, 64 px, 1 thread
    python benchmarks/bench_diffusion.py --models latent-diffusion --threads 2 --precision fp32
    python benchmarks/bench_diffusion.py --params '{"sample_steps": 50}'

For each model: ``method.training_step`` (the exact call the engine makes, with the engine's precision
setting via ``medbalance.utils.device``) on a random batch of ``--batch-size`` images, median of ``--rounds``
rounds of ``--steps`` steps after a warm-up step; for ``latent-diffusion`` separately for phase 1 (autoencoder)
and phase 2 (latent U-Net). Then ``method.generate`` for ``--n-gen`` images (the preset's sampler, steps and
classifier-free guidance). The machine may be shared: absolute numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="latent-diffusion,diffusion")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--params", type=json.loads, default={}, help="JSON dict of parameter overrides")
    ap.add_argument("--nhwc", action="store_true",
                    help="also time training in the channels-last layout (what train.channels_last true does)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from medbalance.data.dataset import DataInfo
    from medbalance.models.registry import build_method
    from medbalance.utils.device import autocast, resolve_precision

    device = torch.device("cpu")
    prec = resolve_precision(args.precision, device)
    info = DataInfo(channels=1, spatial_shape=(args.size, args.size), class_names=[f"c{i}" for i in range(args.classes)])
    B = args.batch_size
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(B, 1, args.size, args.size, generator=g) * 2 - 1,
             "label": torch.randint(0, args.classes, (B,), generator=g)}
    layouts = ["NCHW", "NHWC"] if args.nhwc else ["NCHW"]
    for name, layout in [(m.strip(), lay) for m in args.models.split(",") if m.strip() for lay in layouts]:
        torch.manual_seed(0)
        m = build_method(name, args.preset, dict(args.params), info)
        if layout == "NHWC":
            m.to(memory_format=torch.channels_last)
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        else:
            batch["image"] = batch["image"].contiguous()
        m.setup_optimizers()
        m.autocast = lambda: autocast(device, prec)
        params = {k: sum(p.numel() for p in v.parameters()) for k, v in m.networks().items()}

        def rate(first_step: int) -> float:
            m.training_step(batch, first_step)  # warm-up
            rounds = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                for i in range(args.steps):
                    m.training_step(batch, first_step + 1 + i)
                rounds.append(B * args.steps / (time.perf_counter() - t))
            return statistics.median(rounds)

        phases = {}
        if hasattr(m, "AE"):
            phases["autoencoder"] = rate(0)
            phases["latent U-Net"] = rate(m.params.ae_steps)
        else:
            phases["U-Net"] = rate(0)
        labels = torch.arange(args.n_gen) % args.classes
        t = time.perf_counter()
        m.generate(labels, generator=torch.Generator().manual_seed(0))
        gen = args.n_gen / (time.perf_counter() - t)
        prov = m.sampling_provenance()
        train_s = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
        print(f"{name} ({args.preset}, {args.size} px, batch {B}, {prec}, {layout}, {args.threads} thread(s)); "
              f"parameters {params}: "
              f"train img/s: {train_s}; generate {gen:.2f} img/s ({prov['sampler']}, {prov['steps']} steps, "
              f"guidance {prov['guidance_scale']})", flush=True)


if __name__ == "__main__":
    main()
