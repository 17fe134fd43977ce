"""Privacy of synthetic data: does it leak (copy) the training patients?

Distance to closest record (DCR)
--------------------------------
For every synthetic sample, the Euclidean distance to its nearest *training* image (the images
the generator was trained on), in pixel space and in feature space, is compared with the same
distance for *held-out* real images (never seen by the generator), which is the reference of a
generator that learned the distribution without copying:

- ``dcr_share``: fraction of synthetic DCRs below the median held-out DCR. 0.5 is ideal; much
  above 0.5 means synthetic samples sit closer to the training images than new real images do.
- ``memorization_rate``: fraction of synthetic DCRs below the 1st percentile of held-out DCRs
  (by construction ~1 % for held-out-like data; much higher flags copies).
- ``exact_duplicates`` (pixel space): synthetic samples whose nearest training image differs by at
  most ``dup_tol`` in every pixel (default half a uint8 grey level on the ``[-1, 1]`` scale).
- a montage PNG of the closest synthetic / training pairs.

Membership inference
--------------------
AUC (:func:`sklearn.metrics.roc_auc_score`) of attacks telling training from held-out real images
(label 1 = training): (a) a given score function (e.g. the trained discriminator's score, higher =
"training"); (b) a distance attack: minus the distance of each real image to its nearest synthetic
sample. About 0.5 means the synthetic data (or the model) does not reveal membership.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medbalance.utils.imaging import figure_png, to_display
from medbalance.utils.io import atomic_write_bytes
from medbalance.utils.neighbors import knn, knn_pair

DEFAULT_DUP_TOL = 1.0 / 255.0  # half a uint8 grey level on the [-1, 1] scale


def _flat(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.reshape(t.shape[0], -1).float()


def _dcr_stats(d_syn: np.ndarray, i_syn: np.ndarray, d_ho: np.ndarray, n_train: int) -> dict[str, Any]:
    med = float(np.median(d_ho))
    p1 = float(np.percentile(d_ho, 1))
    return {
        "dcr_share": float((d_syn < med).mean()),
        "memorization_rate": float((d_syn < p1).mean()),
        "holdout_dcr_median": med,
        "holdout_dcr_p1": p1,
        "synthetic_dcr_median": float(np.median(d_syn)),
        "n_train": int(n_train),
        "n_holdout": int(d_ho.shape[0]),
        "n_synthetic": int(d_syn.shape[0]),
        "_dcr": d_syn,
        "_nearest": i_syn,
    }


def _attack_auc(d_train: np.ndarray, d_holdout: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(d_train.shape[0]), np.zeros(d_holdout.shape[0])]
    return float(roc_auc_score(y, -np.r_[d_train, d_holdout]))


def _check_holdout(ho: torch.Tensor) -> None:
    if ho.shape[0] < 2:
        raise ValueError("the DCR reference needs at least 2 held-out images")


def dcr_analysis(
    *,
    train: np.ndarray | torch.Tensor,
    holdout: np.ndarray | torch.Tensor,
    synthetic: np.ndarray | torch.Tensor,
    progress: bool = False,
) -> dict[str, Any]:
    """DCR share and memorisation rate of ``synthetic`` vs the held-out reference (any vectors)."""
    tr, ho, sy = _flat(train), _flat(holdout), _flat(synthetic)
    _check_holdout(ho)
    d_syn, i_syn = knn(sy, tr, 1, progress="DCR synthetic->train" if progress else None)
    d_ho, _ = knn(ho, tr, 1, progress="DCR held-out->train" if progress else None)
    return _dcr_stats(d_syn[:, 0], i_syn[:, 0], d_ho[:, 0], tr.shape[0])


def _dcr_and_attack(
    train: np.ndarray | torch.Tensor,
    holdout: np.ndarray | torch.Tensor,
    synthetic: np.ndarray | torch.Tensor,
    progress: bool = False,
) -> tuple[dict[str, Any], float]:
    """:func:`dcr_analysis` and :func:`distance_attack_auc` from three distance scans instead of four: the
    synthetic x training scan serves both synthetic->train (DCR) and train->synthetic (attack)."""
    tr, ho, sy = _flat(train), _flat(holdout), _flat(synthetic)
    _check_holdout(ho)
    (d_syn, i_syn), (d_tr, _) = knn_pair(sy, tr, 1, progress="DCR synthetic<->train" if progress else None)
    d_ho_tr, _ = knn(ho, tr, 1, progress="DCR held-out->train" if progress else None)
    d_ho_sy, _ = knn(ho, sy, 1, progress="attack held-out->synthetic" if progress else None)
    dcr = _dcr_stats(d_syn[:, 0], i_syn[:, 0], d_ho_tr[:, 0], tr.shape[0])
    return dcr, _attack_auc(d_tr[:, 0], d_ho_sy[:, 0])


def exact_duplicates(
    train: torch.Tensor, synthetic: torch.Tensor, nearest: np.ndarray, tol: float = DEFAULT_DUP_TOL
) -> np.ndarray:
    """Boolean mask: synthetic image within ``tol`` (max abs pixel difference) of its nearest training image."""
    tr, sy = _flat(train), _flat(synthetic)
    out = np.empty(sy.shape[0], dtype=bool)
    for s in range(0, sy.shape[0], 1024):
        diff = (sy[s : s + 1024] - tr[torch.as_tensor(nearest[s : s + 1024])]).abs().amax(1)
        out[s : s + 1024] = (diff <= tol).numpy()
    return out


def distance_attack_auc(
    *, train: np.ndarray | torch.Tensor, holdout: np.ndarray | torch.Tensor, synthetic: np.ndarray | torch.Tensor
) -> float:
    """AUC of the attack "closer to a synthetic sample => training member"."""
    tr, ho, sy = _flat(train), _flat(holdout), _flat(synthetic)
    d_tr, _ = knn(tr, sy, 1)
    d_ho, _ = knn(ho, sy, 1)
    return _attack_auc(d_tr[:, 0], d_ho[:, 0])


def score_attack_auc(
    score_fn: Callable[[torch.Tensor], Any], *, train: torch.Tensor, holdout: torch.Tensor, batch: int = 256
) -> float:
    """AUC of ``score_fn(images)`` (higher = "training member") on training vs held-out images."""
    from sklearn.metrics import roc_auc_score

    def scores(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            parts = [np.asarray(torch.as_tensor(score_fn(x[s : s + batch])).float().reshape(-1).cpu()) for s in range(0, x.shape[0], batch)]
        return np.concatenate(parts)

    s_tr, s_ho = scores(train), scores(holdout)
    if s_tr.shape[0] != train.shape[0] or s_ho.shape[0] != holdout.shape[0]:
        raise ValueError("score_fn must return one score per image")
    y = np.r_[np.ones(len(s_tr)), np.zeros(len(s_ho))]
    return float(roc_auc_score(y, np.r_[s_tr, s_ho]))


def save_closest_pairs_montage(
    path: str | Path,
    synthetic: torch.Tensor,
    train: torch.Tensor,
    dcr: np.ndarray,
    nearest: np.ndarray,
    n: int = 8,
    synthetic_ids: list[str] | None = None,
    train_ids: list[str] | None = None,
) -> Path:
    """PNG: the ``n`` synthetic samples closest to a training image (top row) and those images (bottom)."""
    from matplotlib.figure import Figure

    order = np.argsort(dcr, kind="stable")[: min(n, len(dcr))]
    k = len(order)
    fig = Figure(figsize=(1.8 * max(k, 1), 4.0), dpi=100)
    axes = fig.subplots(2, max(k, 1), squeeze=False)

    def show(ax, img: torch.Tensor, title: str) -> None:
        ax.imshow(to_display(img[None])[0].numpy())
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    for col, j in enumerate(order):
        t = int(nearest[j])
        show(axes[0, col], synthetic[j], f"syn {synthetic_ids[j] if synthetic_ids else j}\nDCR {dcr[j]:.3g}")
        show(axes[1, col], train[t], f"train {train_ids[t] if train_ids else t}")
    fig.suptitle("closest synthetic (top) / training (bottom) pairs, pixel space", fontsize=9)
    return atomic_write_bytes(path, figure_png(fig))


def privacy_metrics(
    *,
    train: torch.Tensor,
    holdout: torch.Tensor,
    synthetic: torch.Tensor,
    train_features: np.ndarray | None = None,
    holdout_features: np.ndarray | None = None,
    synthetic_features: np.ndarray | None = None,
    score_fn: Callable[[torch.Tensor], Any] | None = None,
    dup_tol: float = DEFAULT_DUP_TOL,
    montage_path: str | Path | None = None,
    montage_n: int = 8,
    synthetic_ids: list[str] | None = None,
    train_ids: list[str] | None = None,
) -> dict[str, Any]:
    """Pixel- and feature-space DCR analysis, duplicates, membership-inference AUCs, montage.

    ``train`` / ``holdout`` / ``synthetic`` are image tensors ``(N, C, H, W)`` of the same size.
    """
    if train.shape[1:] != synthetic.shape[1:] or holdout.shape[1:] != synthetic.shape[1:]:
        raise ValueError(
            f"privacy needs images of one shape: train {tuple(train.shape[1:])}, "
            f"held-out {tuple(holdout.shape[1:])}, synthetic {tuple(synthetic.shape[1:])}"
        )
    pix, pix_auc = _dcr_and_attack(train, holdout, synthetic, progress=True)
    dcr, nearest = pix.pop("_dcr"), pix.pop("_nearest")
    dups = exact_duplicates(train, synthetic, nearest, tol=dup_tol)
    pix["exact_duplicates"] = int(dups.sum())
    pix["exact_duplicate_rate"] = float(dups.mean()) if len(dups) else 0.0
    pix["mia_distance_auc"] = pix_auc
    out: dict[str, Any] = {"pixels": pix}
    if train_features is not None and holdout_features is not None and synthetic_features is not None:
        feat, feat_auc = _dcr_and_attack(train_features, holdout_features, synthetic_features)
        feat.pop("_dcr")
        feat.pop("_nearest")
        feat["mia_distance_auc"] = feat_auc
        out["features"] = feat
    if score_fn is not None:
        out["mia_score_auc"] = score_attack_auc(score_fn, train=train, holdout=holdout)
    if montage_path is not None:
        out["montage"] = str(
            save_closest_pairs_montage(montage_path, synthetic, train, dcr, nearest, montage_n, synthetic_ids, train_ids)
        )
    return out
