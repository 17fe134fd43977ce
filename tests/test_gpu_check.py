"""benchmarks/gpu_check.py: the tiny profile runs end to end on the CPU and writes its JSON + markdown; helpers."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_manifest(root: Path, per_class: int = 24, size: int = 32) -> Path:
    """A manifest with the brain-tumour class names (the experiment subsamples 'meningioma') and masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for c, name in enumerate(["glioma", "meningioma", "pituitary_tumor"]):
        for i in range(per_class):
            sid = f"{name}_{i}"
            img = rng.integers(0, 60, (size, size), dtype=np.uint8)
            img[8 + 4 * c: 16 + 4 * c, 8:20] = 200
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[8 + 4 * c: 16 + 4 * c, 8:20] = 255
            Image.fromarray(img).save(root / "images" / f"{sid}.png")
            Image.fromarray(mask).save(root / "masks" / f"{sid}.png")
            rows.append({"id": sid, "image": f"images/{sid}.png", "mask": f"masks/{sid}.png", "label": name})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "labels.csv"


@pytest.mark.slow
def test_tiny_profile_on_cpu_writes_every_section(tmp_path):
    data = _tiny_manifest(tmp_path / "data")
    out = tmp_path / "out"
    path = os.pathsep.join(p for p in [str(REPO / "src"), os.environ.get("PYTHONPATH", "")] if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}  # keep what the caller put on the path
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out), "--data", str(data),
           "--models", "dcgan,redgan", "--presets", "cpu", "--budget-s", "150"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["profile"] == "tiny" and report["environment"]["device"] == "cpu"
    assert report["seconds"] <= 150 + 5
    items = report["sections"]["models"]["items"]
    assert [(i["model"], i["preset"], i["size"]) for i in items] == [("dcgan", "cpu", 32), ("redgan", "cpu", 32)]
    for it in items:
        assert it["status"] == "ok", it
        assert it["steps"] == 2 and it["warmup_steps"] == 1 and it["timed_steps"] == 1
        assert it["train_images_per_s"] > 0 and it["gen_images_per_s"] > 0 and it["gen_images"] >= 1
        # no GPU: memory and utilisation are recorded as null, not as made-up numbers
        assert it["peak_mem_train_mib"] is None and it["gpu_util_mean"] is None and it["gpu_util_max"] is None
        assert it["precision"] in ("fp32", "bf16") and it["device"] == "cpu"
    ds = report["sections"]["downstream"]
    assert ds["status"] == "ok", ds
    assert set(ds["summary"]) == {"real", "oversample", "class-weight", "real+synthetic"}
    assert all(0 <= v["balanced_accuracy"] <= 1 for v in ds["summary"].values())
    assert ds["seeds"] == 1 and ds["generator_steps"] == 2
    assert set(json.loads((out / "downstream_report.json").read_text())["summary"]) >= set(ds["summary"])
    assert report["sections"]["tests"]["status"].startswith("skipped")
    md = (out / "gpu_check.md").read_text()
    assert "| dcgan | cpu | 32 | 2 | " in md and "| redgan | cpu | 32 | 2 | " in md
    assert "balanced_accuracy" in md


def test_timed_windows_excludes_the_warmup_window(tmp_path):
    mod = _module()
    p = tmp_path / "losses.csv"
    # windows of 10 steps at batch 4: 40 images each; warm-up window slow (1 s), then 0.5 s and 0.25 s
    p.write_text("step,loss_G,images_per_s\n10,1.0,40.0\n20,1.0,80.0\n30,1.0,160.0\n")
    steps, seconds = mod.timed_windows(p, batch_size=4, warmup_steps=10)
    assert steps == 20 and seconds == pytest.approx(0.75)
    assert mod.timed_windows(p, batch_size=4, warmup_steps=30) == (0, 0.0)


def test_deadline_guard_and_child_timeout(tmp_path):
    mod = _module()

    class M:
        def training_step(self, batch, step):
            return step

    m = M()
    mod.guard(m, "training_step", mod.now() + 60)
    assert m.training_step(None, 3) == 3
    mod.guard(m, "training_step", mod.now() - 1)
    with pytest.raises(mod.ItemTimeout):
        m.training_step(None, 4)
    # a child that outlives its budget is killed and reported as such (None), its output kept
    code, seconds, tail = mod.run_child([sys.executable, "-c", "import time; print('started', flush=True); "
                                         "time.sleep(30)"], 1.0, tmp_path / "child.log")
    assert code is None and seconds < 15 and "started" in tail


def test_markdown_marks_missing_gpu_figures():
    mod = _module()
    md = mod.markdown({"profile": "tiny", "environment": {"cpu_count": 2}, "sections": {"models": {"items": [
        {"model": "dcgan", "preset": "cpu", "size": 64, "batch_size": 16, "precision": "bf16", "timed_steps": 300,
         "train_images_per_s": 1234.5, "peak_mem_train_mib": None, "gpu_util_mean": None, "gpu_util_max": None,
         "gen_images_per_s": 99.0, "peak_mem_gen_mib": None, "status": "ok"},
        {"model": "spade", "preset": "paper", "size": 256, "status": "oom: CUDA out of memory | x"}]}}})
    assert "| dcgan | cpu | 64 | 16 | bf16 | 300 | 1234.5 | – | – | 99.0 | – | ok |" in md
    assert "| spade | paper | 256 | – |" in md and "oom: CUDA out of memory / x" in md


def test_utilisation_sampler_reads_nvidia_smi(tmp_path, monkeypatch):
    """The sampler parses nvidia-smi's csv (a stand-in script here) and summarises it; without it: nulls."""
    mod = _module()
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 40\necho 90\n")  # two GPUs: the sampler reads the first
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert mod.nvidia_smi_utilisation() == [40.0, 90.0]
    with mod.UtilSampler(True, interval_s=0.01) as s:
        import time

        t = time.time()
        while len(s.samples) < 3 and time.time() - t < 10:
            time.sleep(0.02)
    summ = s.summary()
    assert summ["gpu_util_mean"] == 40.0 and summ["gpu_util_max"] == 40.0 and summ["gpu_util_samples"] >= 3
    with mod.UtilSampler(False) as off:  # CPU device: nothing sampled, nulls recorded
        pass
    assert off.summary() == {"gpu_util_mean": None, "gpu_util_max": None, "gpu_util_samples": 0}
