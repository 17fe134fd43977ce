"""Memorisation report of a trained generator run: does it reproduce training images?

Written by ``medbalance train`` into every run folder of a model that sets ``reports_memorization``
(the diffusion models; they memorise more than GANs on small data) as ``memorization.json`` (and a montage of
the closest synthetic / training pairs, 2D only), and callable on any run folder from Python.

Samples: ``n_per_class`` images per class from the run's sampling network (EMA when present), seeded; for
mask-conditioned models the masks are drawn from training images of the same class.

Measures (pixel space, Euclidean):

- **nearest-neighbour distance ratio** of each synthetic image ``x``: ``d(x, NN_1) / mean(d(x, NN_2..NN_{n+1}))``
  over its nearest training images. A copy of one training image sits much closer to that image than to the
  next ones (ratio near 0); a new image is about equally far from several (ratio near 1). ``near_copy_share``:
  share of synthetic images with ratio below ``alpha`` (the test of Carlini et al., "Extracting training data
  from diffusion models", USENIX Security 2023, there with alpha = 0.5 and n = 50, the defaults here).
  ``heldout_near_copy_share``: the same test on held-out real images (the rate of a generator that copies
  nothing), when the run held images out.
- with held-out images (``train.val_fraction > 0``): the DCR analysis of :mod:`medbalance.evaluation.privacy`
  (``dcr_share``, ``memorization_rate``) and exact duplicates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medbalance.utils.neighbors import knn
from medbalance.evaluation.privacy import DEFAULT_DUP_TOL, dcr_analysis, exact_duplicates, save_closest_pairs_montage
from medbalance.utils.io import atomic_write_json

REPORT_NAME = "memorization.json"
MONTAGE_NAME = "memorization_pairs.png"


def nn_distance_ratio(synthetic: torch.Tensor, train: torch.Tensor, n: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query row: (ratio d1 / mean(d2..d_{n+1}), d1, index of the nearest ``train`` row); needs >= 2 train rows."""
    sy = synthetic.reshape(synthetic.shape[0], -1).float()
    tr = train.reshape(train.shape[0], -1).float()
    if tr.shape[0] < 2:
        raise ValueError("the nearest-neighbour ratio needs at least 2 training images")
    k = min(n + 1, tr.shape[0])
    d, idx = knn(sy, tr, k)
    rest = d[:, 1:].mean(1)
    ratio = np.where(rest > 0, d[:, 0] / np.maximum(rest, 1e-300), 0.0)
    return ratio, d[:, 0], idx[:, 0]


def _masks_for(labels: torch.Tensor, pool_labels: torch.Tensor, pool_masks: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in labels.tolist():
        of_c = torch.nonzero(pool_labels == c).flatten()
        if len(of_c) == 0:
            of_c = torch.arange(len(pool_labels))
        out.append(pool_masks[of_c[torch.randint(len(of_c), (1,), generator=g)]])
    return torch.cat(out)


def memorization_report(
    run_dir: str | Path,
    dataset: Any = None,
    *,
    n_per_class: int = 32,
    seed: int = 0,
    alpha: float = 0.5,
    n_neighbours: int = 50,
    batch_size: int = 64,
    checkpoint: str = "latest",
    write: bool = True,
) -> dict[str, Any]:
    """Generate ``n_per_class`` images per class from the run and measure how close they are to its training
    images (module docstring). ``dataset``: the run's data (loaded from its config when None). Writes
    ``memorization.json`` (and the montage) into ``run_dir`` when ``write``; returns the report."""
    from medbalance.training.run import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir, checkpoint=checkpoint)
    if dataset is None:
        from medbalance.data.sources import load_dataset

        dataset = load_dataset(run.config.data)
    index = {k: i for i, k in enumerate(dataset.ids)}
    train_idx = [index[k] for k in run.train_ids if k in index] if run.train_ids else list(range(len(dataset)))
    held_idx = [index[k] for k in run.heldout_ids if k in index]
    train = dataset.images[train_idx]
    labels = torch.arange(dataset.num_classes).repeat_interleave(n_per_class)
    masks = None
    if "mask" in run.method.needs and dataset.masks is not None:
        masks = _masks_for(labels, dataset.labels[train_idx], dataset.masks[train_idx], seed)
    syn = run.generate(labels, masks=masks, seed=seed, batch_size=batch_size)
    ratio, d1, nearest = nn_distance_ratio(syn, train, n_neighbours)
    near = ratio < alpha
    report: dict[str, Any] = {
        "run": str(run_dir),
        "checkpoint_step": run.step,
        "n_synthetic": int(len(syn)),
        "n_train": int(len(train_idx)),
        "n_heldout": int(len(held_idx)),
        "seed": seed,
        "space": "pixels",
        "nn_ratio": {"alpha": alpha, "n_neighbours": int(min(n_neighbours, len(train_idx) - 1))},
        "near_copy_share": float(near.mean()),
        "near_copies": int(near.sum()),
        "nn_ratio_median": float(np.median(ratio)),
        "nn_ratio_min": float(ratio.min()),
        "nn_distance_median": float(np.median(d1)),
        "near_copy_share_per_class": [float(near[(labels == c).numpy()].mean()) for c in range(dataset.num_classes)],
    }
    dups = exact_duplicates(train, syn, nearest, tol=DEFAULT_DUP_TOL)
    report["exact_duplicates"] = int(dups.sum())
    if len(held_idx) >= 2:
        held = dataset.images[held_idx]
        h_ratio, _, _ = nn_distance_ratio(held, train, n_neighbours)
        report["heldout_near_copy_share"] = float((h_ratio < alpha).mean())
        report["heldout_nn_ratio_median"] = float(np.median(h_ratio))
        dcr = dcr_analysis(train=train, holdout=held, synthetic=syn)
        dcr.pop("_dcr")
        dcr.pop("_nearest")
        report["dcr"] = dcr
    else:
        report["note"] = "no held-out images (train.val_fraction = 0): no DCR reference, memorization gate unavailable"
    if write:
        if syn.dim() == 4:
            ids = list(dataset.ids)
            report["montage"] = str(
                save_closest_pairs_montage(
                    run_dir / MONTAGE_NAME, syn, train, d1, nearest, train_ids=[ids[i] for i in train_idx]
                )
            )
        atomic_write_json(run_dir / REPORT_NAME, report)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line for the CLI."""
    s = (
        f"memorisation: {report['near_copies']}/{report['n_synthetic']} near-copies of training images "
        f"(nearest-neighbour ratio < {report['nn_ratio']['alpha']}), median ratio {report['nn_ratio_median']:.3f}"
    )
    if "heldout_near_copy_share" in report:
        s += f" (held-out real images: {report['heldout_near_copy_share']:.3f} flagged)"
    if "dcr" in report:
        s += f", DCR share {report['dcr']['dcr_share']:.3f} (0.5 = held-out-like)"
    return s
