"""Data-parallel training on 2 CPU processes (gloo, started with torchrun) equals one process
with the same global batch. Uses the tiny GAN without BatchNorm and index-derived noise, so the
two runs see exactly the same samples and noise; only the gradient summation order differs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import _tiny_method as tm
from medbalance.training.config import RunConfig
from medbalance.training.engine import train
from medbalance.training.logging import read_losses_csv
from medbalance.utils.io import load_safetensors
from medbalance.utils.seed import seed_everything

TESTS = Path(__file__).resolve().parent


def cfg_dict(out: Path) -> dict:
    return {
        "out_dir": str(out),
        "model": {"name": "tiny-test", "params": {"noise": "index"}},
        "train": {"steps": 5, "batch_size": 8, "precision": "fp32", "checkpoint_every": 5, "sample_every": 5,
                  "log_every": 1, "tensorboard": False, "seed": 4, "ema_decay": 0.9, "device": "cpu"},
    }


def with_workers(cfg: dict, n: int) -> dict:
    return {**cfg, "train": {**cfg["train"], "num_workers": n}}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "dataloader-workers"])
def test_two_cpu_processes_equal_one(tmp_path, workers):
    """2 ranks (each with `workers` DataLoader workers reading its shard) equal 1 process without workers."""
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, json
        sys.path.insert(0, {str(TESTS)!r})
        import torch
        torch.set_num_threads(1)
        import _tiny_method as tm
        from medbalance.training.config import RunConfig
        from medbalance.training.engine import train
        cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
        train(cfg, tm.tiny_dataset(n=20))
    """))
    import json

    env = {**os.environ, "MEDBALANCE_QUIET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), json.dumps(with_workers(cfg_dict(tmp_path / "ddp"), workers))],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = train(RunConfig.from_dict(with_workers(cfg_dict(tmp_path / "one"), 0)), tm.tiny_dataset(n=20))

    a = read_losses_csv(tmp_path / "ddp" / "losses.csv")
    b = read_losses_csv(tmp_path / "one" / "losses.csv")
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):  # losses are averaged over ranks = the global-batch mean
        assert ra["loss_D"] == pytest.approx(rb["loss_D"], rel=1e-5)
        assert ra["loss_G"] == pytest.approx(rb["loss_G"], rel=1e-5)
    folder = tmp_path / "ddp" / "checkpoints" / "step_000005"
    for name, net in {**single.method.networks(), "G_ema": single.ema_G}.items():
        w = load_safetensors(folder / f"{name}.safetensors")[0]
        for k, v in net.state_dict().items():
            torch.testing.assert_close(w[k], v, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    # the weights moved away from the common init by much more than the tolerance
    seed_everything(4)
    init = tm.TinyGAN(tm.TinyParams(noise="index"), tm.tiny_dataset(n=20).info()).G.state_dict()["net.0.weight"]
    final = load_safetensors(folder / "G.safetensors")[0]["net.0.weight"]
    assert (final - init).abs().max() > 5e-3
    # rank 0 wrote everything once; one RNG state per rank was saved
    rng = load_safetensors(folder / "rng.safetensors")[0]
    assert sorted(rng) == ["torch_cpu/rank0", "torch_cpu/rank1"] and not torch.equal(rng["torch_cpu/rank0"],
                                                                                      rng["torch_cpu/rank1"])
    assert sorted(p.name for p in (tmp_path / "ddp" / "samples").iterdir()) == ["step_000005.png"]
