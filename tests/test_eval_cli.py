"""`medbalance evaluate` end to end on tiny manifests, and evaluate_datasets on a corrupted set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.data.dataset import ImageDataset
from medbalance.evaluation.evaluate import evaluate_datasets

CLASSES = ["a", "b"]


def _write_manifest(folder, n_per_class, seed, synthetic_flags=None, size=16):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["id,image,label" + (",synthetic" if synthetic_flags is not None else "")]
    k = 0
    for c, name in enumerate(CLASSES):
        for i in range(n_per_class):
            base = rng.integers(0, 255, size=(4, 4)).astype(np.float32)
            img = np.kron(base, np.ones((size // 4, size // 4))) * 0.8 + 40 * c
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{seed}_{k}.png")
            row = f"{seed}_{k},{seed}_{k}.png,{name}"
            if synthetic_flags is not None:
                row += "," + ("1" if synthetic_flags(k) else "0")
            lines.append(row)
            k += 1
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


@pytest.fixture()
def data(tmp_path):
    real = _write_manifest(tmp_path / "real", 20, seed=1)
    syn = _write_manifest(tmp_path / "syn", 15, seed=2, synthetic_flags=lambda k: k % 3 != 0)
    return tmp_path, real, syn


def test_cli_evaluate_writes_json_and_table(data, monkeypatch):
    tmp, real, syn = data
    ids = [f"1_{k}" for k in range(40)]
    (tmp / "train_ids.json").write_text(json.dumps({"train": ids[::2], "heldout": ids[1::2]}))
    out = tmp / "res.json"
    r = CliRunner().invoke(
        app,
        ["evaluate", "--real", str(real), "--synthetic", str(syn), "--per-class", "--privacy",
         "--train-split", str(tmp / "train_ids.json"), "--holdout-split", str(tmp / "train_ids.json"),
         "--kid-subset-size", "10", "--kid-subsets", "5", "--ms-ssim-pairs", "10",
         "--cache-dir", str(tmp / "cache"), "--montage", str(tmp / "m.png"), "--json-out", str(out)],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["n_real"] == 40
    assert res["n_synthetic"] == 20  # only rows with synthetic=1 (k % 3 != 0 of 30)
    assert res["extractor"]["name"] == "pixels" and res["extractor"]["dim"] == 256
    assert set(res["fidelity"]["per_class"]) == {"a", "b"}
    assert res["privacy"]["pixels"]["n_train"] == 20 and res["privacy"]["pixels"]["n_holdout"] == 20
    assert res["fidelity"]["overall"]["fd"] > 0
    assert "fd" in r.output and "DCR share" in r.output
    assert any("< 50" in w for w in res["warnings"])
    assert (tmp / "m.png").is_file() and list((tmp / "cache").glob("*.npy"))


def test_cli_errors_are_one_line(data, monkeypatch):
    tmp, real, syn = data
    monkeypatch.delenv("MEDBALANCE_INCEPTION_WEIGHTS", raising=False)
    run = lambda *a: CliRunner().invoke(app, ["evaluate", "--real", str(real), "--synthetic", str(syn), *a])  # noqa: E731
    r = run("--privacy")
    assert r.exit_code == 2 and "error: --privacy needs --train-split" in r.output
    r = run("--extractor", "nope")
    assert r.exit_code == 2 and "unknown feature extractor 'nope'" in r.output
    r = run("--extractor", "inception-v3")
    assert r.exit_code == 2 and "MEDBALANCE_INCEPTION_WEIGHTS" in r.output
    r = run("--metric", "fid")
    assert r.exit_code == 2 and "unknown metric 'fid'" in r.output


def test_corrupted_synthetic_set_scores_worse():
    g = torch.Generator().manual_seed(0)
    n = 400
    base = torch.rand(2 * n, 1, 8, 8, generator=g)
    imgs = (torch.nn.functional.interpolate(base, size=(16, 16), mode="bilinear") * 2 - 1).clamp(-1, 1)
    labels = torch.arange(2 * n) % 2
    ds = lambda x, lab, p: ImageDataset(images=x, labels=lab, class_names=CLASSES, ids=[f"{p}{i}" for i in range(len(x))])  # noqa: E731
    real, other = ds(imgs[:n], labels[:n], "r"), ds(imgs[n:], labels[n:], "o")
    noisy = ds((imgs[n:] + 0.5 * torch.randn(n, 1, 16, 16, generator=g)).clamp(-1, 1), labels[n:], "n")
    kw = dict(
        metrics=["fd", "kid", "precision_recall", "image_stats"], extractor_options={"size": 16},
        kid_subsets=2, kid_subset_size=n, use_cache=False,
    )
    good = evaluate_datasets(real=real, synthetic=other, **kw)
    bad = evaluate_datasets(real=real, synthetic=noisy, **kw)
    assert bad["fidelity"]["overall"]["fd"] > 2 * good["fidelity"]["overall"]["fd"]
    gk, bk = good["fidelity"]["overall"], bad["fidelity"]["overall"]
    assert bk["kid"] > gk["kid"], (gk, bk)  # full-set unbiased MMD^2 (weakly sensitive on raw pixels)
    assert bad["image_stats"]["spectrum_log10_distance"] > good["image_stats"]["spectrum_log10_distance"]
    mixed = ds(torch.cat([imgs[n:], imgs[:10]]), torch.cat([labels[n:], labels[:10]]), "m")
    mixed.synthetic = torch.tensor([True] * n + [False] * 10)
    res = evaluate_datasets(real=real, synthetic=mixed, **kw)
    assert res["n_synthetic"] == n
    assert res["fidelity"]["overall"]["fd"] == pytest.approx(good["fidelity"]["overall"]["fd"])


def test_mixed_sizes_and_class_alignment_warn():
    g = torch.Generator().manual_seed(1)
    real = ImageDataset(images=torch.rand(30, 1, 16, 16, generator=g) * 2 - 1, labels=torch.arange(30) % 2,
                        class_names=CLASSES, ids=[f"r{i}" for i in range(30)])
    # synthetic at another size, classes in another order plus one the real data lacks
    syn = ImageDataset(images=torch.rand(30, 1, 8, 8, generator=g) * 2 - 1, labels=torch.arange(30) % 3,
                       class_names=["b", "a", "zzz"], ids=[f"s{i}" for i in range(30)])
    res = evaluate_datasets(real=real, synthetic=syn, metrics=["fd"], per_class=True, use_cache=False)
    assert any(w.startswith("mixed image sizes") for w in res["warnings"])
    assert any("zzz" in w for w in res["warnings"])
    assert res["synthetic_class_counts"] == {"a": 10, "b": 10}
    assert set(res["fidelity"]["per_class"]) == {"a", "b"}
    assert res["fidelity"]["per_class"]["a"]["n_synthetic"] == 10
