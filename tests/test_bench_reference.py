"""The reference-implementation benchmark's tiny run: its JSON fields, and which parameter counts agree."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_reference.py"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in [str(REPO / "src"), os.environ.get("PYTHONPATH", "")] if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "MEDBALANCE_QUIET": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)  # fmt: skip


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_reference_tiny_json_and_parameter_counts(tmp_path):
    out = tmp_path / "ref.json"
    r = _run(["--tiny", "--threads", "1", "--json", str(out)], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| dcgan-64 (batch 8) | fp32 |" in r.stdout and "| pix2pix-256 (batch 1) | fp32 |" in r.stdout
    res = json.loads(out.read_text())
    m = res["machine"]
    assert m["threads"] == 1 and m["cpu_count"] >= 1 and m["cpu_model"]
    assert len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3
    assert isinstance(m["bf16_native"], bool) and m["bf16_measured"] == m["bf16_native"]
    assert res["settings"]["tiny"] is True and res["settings"]["steps"] == 1
    c32 = res["ceiling"]["fp32"]
    assert c32["flops_per_s"] == max(c32["matmul_flops_per_s"], c32["conv_flops_per_s"]) > 0
    assert (res["ceiling"]["bf16"] is not None) == m["bf16_native"]

    comps = {c["name"]: c for c in res["comparisons"]}
    assert list(comps) == ["dcgan", "pix2pix"]
    assert (comps["dcgan"]["size"], comps["dcgan"]["batch_size"]) == (64, 8)
    assert (comps["pix2pix"]["size"], comps["pix2pix"]["batch_size"]) == (256, 1)
    for name, c in comps.items():
        assert c["preset"] == "paper" and c["channels"] == 1 and c["mask_labels"] == 5
        ref, mb = c["params"]["reference"], c["params"]["medbalance"]
        for net in ("G", "D"):
            print(f"{name} {net}: reference {ref[net]['total']:,} parameters, medbalance {mb[net]['total']:,}")
            # the same conv / transposed-conv weight tensors on both sides
            assert ref[net]["weights"] == mb[net]["weights"], (name, net)
            assert c["param_differences"][net] == mb[net]["total"] - ref[net]["total"]
        fl = c["flops_per_step"]
        assert _positive(fl["reference"]) and _positive(fl["medbalance"])
        assert fl["model"] == min(fl["reference"], fl["medbalance"])
        rows = c["rows"]
        assert [row["precision"] for row in rows] == (["fp32", "bf16"] if m["bf16_native"] else ["fp32"])
        for row in rows:
            for k in ("reference", "mb_loop", "mb_e2e", "mb_call"):
                assert _positive(row[f"{k}_images_per_s"]), (name, k)
            # call (setup + one grid and checkpoint per run) <= e2e (amortised) <= loop
            assert row["mb_call_images_per_s"] <= row["mb_e2e_images_per_s"] <= row["mb_loop_images_per_s"]
            assert math.isclose(row["ratio_mb_e2e_over_reference"],
                                row["mb_e2e_images_per_s"] / row["reference_images_per_s"])  # fmt: skip
            assert 0 < row["mb_e2e_ceiling_fraction"] and 0 < row["reference_ceiling_fraction"]
            assert row["mb_grid_s"] > 0 and row["mb_checkpoint_s"] > 0 and row["mb_setup_s"] > 0
            assert len(row["rounds"]["reference_s"]) == len(row["rounds"]["medbalance"]) == 1
            # one round: the per-round ratio is the ratio of the two medians
            assert len(row["paired_ratio_e2e_rounds"]) == 1
            assert math.isclose(row["paired_ratio_e2e_median"], row["ratio_mb_e2e_over_reference"])
        for t in c["targets"].values():
            assert t["met"] == (t["value"] >= t["target"])

    # pix2pix: junyanz's unet_256 / basic PatchGAN and medbalance's paper preset are the same networks
    p = comps["pix2pix"]["params"]
    assert p["reference"] == p["medbalance"]
    assert p["reference"]["G"]["total"] == 54_411_905 and p["reference"]["D"]["total"] == 2_768_705
    # DCGAN: the same G; medbalance's D adds a bias to its first and last convolution (ndf + 1 = 65 parameters)
    d = comps["dcgan"]["params"]
    assert d["reference"]["G"] == d["medbalance"]["G"]
    assert comps["dcgan"]["param_differences"] == {"G": 0, "D": 64 + 1}
    # pytorch/examples' G step also computes D's weight gradients; medbalance freezes D there
    assert comps["dcgan"]["flops_per_step"]["reference"] > comps["dcgan"]["flops_per_step"]["medbalance"]


def test_bench_reference_rejects_unknown_comparison(tmp_path):
    r = _run(["--only", "dcgan,cyclegan"], tmp_path)
    assert r.returncode == 2
    assert "unknown comparison(s) ['cyclegan']" in r.stderr
