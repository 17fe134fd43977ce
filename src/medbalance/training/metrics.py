"""Task metrics: the one definition of the classification and segmentation metrics.

Used by ``medbalance train-task`` (epoch selection, saved ``model.json``), ``medbalance downstream`` (every arm
and seed), the feature-level arms of ``medbalance feature-augment`` and the report. It lives in ``training``
so that the task-training loop can use it without importing from a later stage.

Classification (scikit-learn): per-class recall (sensitivity), precision, F1, specificity and support;
balanced accuracy, macro-F1, accuracy, AUROC (one-vs-rest; ``nan`` when a class is absent from the truth),
confusion matrix.

Segmentation: Dice on **lesion labels only**. Anatomy labels (``dataset.meta["anatomy_values"]``: Red-GAN's
brain label, ``data.anatomy_label`` / ``anatomy_levels``, the phantom's intracranial label) are context for a
generator, never foreground: before any Dice they are mapped to background in both the prediction and the truth.
Empty-mask rule (per image and per region, the BraTS challenge convention; docs/metrics.md):

- truth empty, prediction empty: 1 (correctly no lesion);
- truth empty, prediction not empty: 0 (a false positive);
- truth not empty, prediction empty: 0 (a missed lesion).

Per-image Dice values are averaged over all images. ``dice_global`` pools the voxels of the whole set per label
(one Dice per label; ``None`` when neither prediction nor truth has that label anywhere).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from medbalance.data.anatomy import lesion_indices

BRATS_REGIONS = {"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,)}


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------------- classification
def classification_metrics(y_true: Any, probs: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics of class probabilities ``probs`` (N, C) against integer labels ``y_true`` (N,)."""
    from sklearn.metrics import (
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y = _np(y_true).astype(np.int64)
    p = _np(probs).astype(np.float64)
    k = len(class_names)
    pred = p.argmax(1)
    labels = list(range(k))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    fp = cm.sum(0) - np.diag(cm)
    spec = np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), np.nan)
    auroc = float("nan")
    if len(np.unique(y)) == k:  # AUROC needs every class in the truth
        p = p / p.sum(1, keepdims=True)
        auroc = float(roc_auc_score(y, p[:, 1]) if k == 2 else roc_auc_score(y, p, multi_class="ovr", labels=labels))
    return {
        "per_class": {
            c: {"recall": float(rec[i]) if support[i] else float("nan"), "precision": float(prec[i]),
                "f1": float(f1[i]), "specificity": float(spec[i]), "support": int(support[i])}
            for i, c in enumerate(class_names)
        },
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        # macro-F1 over the classes present in the truth or the prediction (scikit-learn's default label set)
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "accuracy": float((pred == y).mean()),
        "auroc": auroc,
        "confusion_matrix": cm.tolist(),
    }


# ---------------------------------------------------------------------------------------------- segmentation
def dice_per_image(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Dice of boolean arrays (N, *spatial) per image, with the empty-mask rule of this module."""
    red = tuple(range(1, pred.ndim))
    inter = np.logical_and(pred, true).sum(red, dtype=np.int64)
    tot = pred.sum(red, dtype=np.int64) + true.sum(red, dtype=np.int64)
    return np.where(tot == 0, 1.0, 2.0 * inter / np.maximum(tot, 1))


def _dice_pooled(pred: np.ndarray, true: np.ndarray) -> float | None:
    tot = int(pred.sum()) + int(true.sum())
    return None if tot == 0 else 2.0 * int(np.logical_and(pred, true).sum()) / tot


def _mean(v: np.ndarray) -> float:
    return float(v.mean()) if v.size else float("nan")


def segmentation_metrics(
    pred: Any,
    true: Any,
    mask_values: Sequence[int],
    anatomy_values: Iterable[int] | None = None,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Dice of predicted label maps against the truth, both (N, *spatial) indices into ``mask_values``.

    Returns ``dice`` (mean over lesion labels of ``dice_per_label``: the selection score of a segmentor),
    ``dice_per_label`` (per lesion label value, mean per-image Dice), ``dice_foreground`` (per-image Dice of
    all lesion labels together, i.e. the whole lesion), ``per_case_dice_foreground``, ``dice_global`` /
    ``dice_global_per_label`` (pooled voxels), ``dice_per_class`` (mean ``dice_foreground`` of each global
    class's images, when ``labels`` and ``class_names`` are given) and ``brats`` (WT / TC / ET) when the lesion
    label values are BraTS's (2 and 4 among 1-4).
    """
    p = _np(pred).astype(np.int64)
    t = _np(true).astype(np.int64)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    lesion = lesion_indices(mask_values, anatomy_values)
    if not lesion:
        raise ValueError(f"no lesion label among mask values {list(mask_values)} (anatomy {list(anatomy_values or [])})")
    per_label: dict[str, float] = {}
    glob_label: dict[str, float | None] = {}
    for li in lesion:
        name = str(mask_values[li])
        per_label[name] = _mean(dice_per_image(p == li, t == li))
        glob_label[name] = _dice_pooled(p == li, t == li)
    lesion_idx = np.asarray(lesion)
    fg_p, fg_t = np.isin(p, lesion_idx), np.isin(t, lesion_idx)
    fg = dice_per_image(fg_p, fg_t)
    globs = [g for g in glob_label.values() if g is not None]
    out: dict[str, Any] = {
        "dice": float(np.mean(list(per_label.values()))),
        "dice_per_label": per_label,
        "dice_foreground": _mean(fg),
        "per_case_dice_foreground": fg.tolist(),
        "dice_global": float(np.mean(globs)) if globs else None,
        "dice_global_per_label": glob_label,
    }
    if labels is not None and class_names is not None:
        lab = _np(labels)
        out["dice_per_class"] = {c: _mean(fg[lab == k]) for k, c in enumerate(class_names)}
    values = {int(mask_values[i]) for i in lesion}
    if values <= {1, 2, 3, 4} and {2, 4} <= values:
        vals = np.asarray(mask_values)
        pv = np.where(np.isin(p, lesion_idx), vals[p], 0)
        tv = np.where(np.isin(t, lesion_idx), vals[t], 0)
        out["brats"] = {k: _mean(dice_per_image(np.isin(pv, r), np.isin(tv, r))) for k, r in BRATS_REGIONS.items()}
    return out


def selection_score(metrics: dict[str, Any], task: str) -> float:
    """The score a task model's epoch is selected by: balanced accuracy, or the lesion Dice."""
    v = metrics.get("balanced_accuracy" if task == "classification" else "dice")
    return float("-inf") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
