"""benchmarks/bench_scale.py runs end to end with tiny settings (the full run needs ../shared/datasets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_scale_tiny(tmp_path):
    out = tmp_path / "scale.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--tiny", "--work",
                        str(tmp_path / "w"), "--models", "dcgan", "--json", str(out), "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    st = res["stages"]
    assert set(st) == {"prepare", "build", "inspect", "build64", "train", "loader"}
    assert st["build"]["images"] == 200 and st["build"]["cache_hit"] is False and st["build"]["images_per_s"] > 0
    assert st["build64"]["shape"] == [200, 3, 32, 32]
    assert st["inspect"]["n"] == 200 and st["train"]["steps"] == 4
    for s in st.values():
        assert s["rc"] == 0 and 0 < s["peak_rss_mb"] < 4096 and s["peak_pss_total_mb"] > 0
    (row,) = st["loader"]["models"]
    assert row["model"] == "dcgan" and row["loader_images_per_s"] > 0 and row["step_images_per_s"] > 0
    md = (tmp_path / "w" / "bench_scale.md").read_text()
    assert "| build |" in md and "| dcgan | 16 |" in md
