"""The task-network benchmark's tiny run: its JSON fields and table, with numbers that are finite and positive."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_tasknets.py"


def test_bench_tasknets_tiny(tmp_path):
    out = tmp_path / "tasknets.json"
    path = os.pathsep.join(p for p in [str(REPO / "src"), os.environ.get("PYTHONPATH", "")] if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "MEDBALANCE_QUIET": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| small CNN classifier | NHWC |" in r.stdout and "| U-Net segmentor | NCHW |" in r.stdout
    res = json.loads(out.read_text())
    assert res["settings"]["tiny"] is True and res["machine"]["threads"] == 1
    assert res["ceiling_fp32_flops_per_s"] > 0
    rows = {(x["task"], x["layout"]): x for x in res["rows"]}
    assert set(rows) == {(t, lay) for t in ("classification", "segmentation") for lay in ("NCHW", "NHWC")}
    for x in rows.values():
        for k in ("medbalance_images_per_s", "plain_images_per_s", "ratio_medbalance_over_plain", "flops_per_image",
                  "plain_ceiling_fraction"):
            assert math.isfinite(x[k]) and x[k] > 0, (x, k)
    # the small CNN at 32 px: 2 convs per stage (16/32/64/128) -> forward MACs by hand, training step ~3x forward
    fwd = 2 * sum(s * s * (ci * co + co * co) * 9 for s, ci, co in ((32, 1, 16), (16, 16, 32), (8, 32, 64), (4, 64, 128)))
    assert 2.5 * fwd < rows[("classification", "NCHW")]["flops_per_image"] < 3.5 * fwd
    assert rows[("classification", "NHWC")]["ratio_nhwc_over_nchw"] > 0
