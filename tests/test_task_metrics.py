"""The one definition of the task metrics (training/metrics.py), against independent computations."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medbalance.training import metrics as M

SRC = Path(__file__).resolve().parents[1] / "src" / "medbalance"


# ---------------------------------------------------------------------------------------------- classification
def test_classification_metrics_against_hand_computation():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    m = M.classification_metrics(y, probs, ["a", "b", "c"])
    assert m["per_class"]["a"]["recall"] == 0.5 and m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    # specificity of a: negatives are 4 samples of b/c, one (the last c) predicted a -> 3/4
    assert m["per_class"]["a"]["specificity"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # macro-F1 by hand: per class F1 = 2PR/(P+R)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))


def test_classification_auroc_by_pair_counting_and_torch_input():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    y[:2] = [0, 1]
    score = rng.random(50) + 0.4 * y
    probs = np.stack([1 - score / 2, score / 2], 1)
    m = M.classification_metrics(torch.tensor(y), torch.tensor(probs), ["neg", "pos"])
    pos, neg = score[y == 1], score[y == 0]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert m["auroc"] == pytest.approx(pairs)


def test_classification_absent_class_gives_nan_recall_and_auroc():
    y = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 0, 1, 2]]
    m = M.classification_metrics(y, probs, ["a", "b", "c"])
    assert np.isnan(m["per_class"]["c"]["recall"]) and m["per_class"]["c"]["support"] == 0
    assert np.isnan(m["auroc"])


# ---------------------------------------------------------------------------------------------- segmentation
def test_missed_tumour_scores_zero_with_anatomy_labels_present():
    """A segmentor that finds the brain (anatomy label) but misses the whole tumour scores 0, not 1."""
    values = [0, 3, 255]  # background, brain (anatomy, Red-GAN's label 3), tumour
    true = np.zeros((2, 8, 8), np.int64)
    true[:, 1:7, 1:7] = 1  # brain
    true[:, 3:5, 3:5] = 2  # tumour inside the brain
    pred = np.where(true > 0, 1, 0)  # the whole brain, no tumour
    m = M.segmentation_metrics(pred, true, values, anatomy_values=[3])
    assert m["dice"] == 0.0 and m["dice_foreground"] == 0.0
    assert list(m["dice_per_label"]) == ["255"]  # anatomy is never a scored label
    assert m["dice_global"] == 0.0
    # without declaring the anatomy, the brain would count as a lesion label (what the bug did)
    assert M.segmentation_metrics(pred, true, values)["dice_foreground"] > 0.9


def test_missed_tumour_scores_zero_in_brats_regions_with_anatomy():
    values = [0, 1, 2, 4, 9]  # 9: an anatomy label added to BraTS labels
    true = np.zeros((1, 6, 6), np.int64)
    true[0] = 4  # anatomy everywhere
    true[0, 1:3, 1:3] = 3  # enhancing (value 4)
    true[0, 3:5, 3:5] = 2  # oedema (value 2)
    pred = np.full_like(true, 4)
    m = M.segmentation_metrics(pred, true, values, anatomy_values=[9])
    assert m["brats"] == {"WT": 0.0, "TC": 0.0, "ET": 0.0}


@pytest.mark.parametrize(
    "p_on, t_on, expected",
    [(False, False, 1.0), (True, False, 0.0), (False, True, 0.0), (True, True, 1.0)],
    ids=["both-empty", "prediction-on-empty-truth", "missed-lesion", "exact"],
)
def test_empty_mask_rule(p_on, t_on, expected):
    pred = np.zeros((1, 4, 4), np.int64)
    true = np.zeros((1, 4, 4), np.int64)
    if p_on:
        pred[0, :2, :2] = 1
    if t_on:
        true[0, :2, :2] = 1
    m = M.segmentation_metrics(pred, true, [0, 255])
    assert m["dice"] == expected and m["dice_foreground"] == expected
    assert m["dice_global"] == (None if not (p_on or t_on) else expected)


def test_segmentation_against_monai_compute_dice():
    """Per-label per-image Dice equals MONAI's compute_dice with ignore_empty=False (its rule: empty-empty = 1)."""
    from monai.metrics import compute_dice

    g = torch.Generator().manual_seed(0)
    values = [0, 1, 2, 4]
    K = len(values)
    true = torch.randint(0, K, (6, 12, 12), generator=g)
    pred = torch.where(torch.rand(6, 12, 12, generator=g) < 0.7, true, torch.randint(0, K, (6, 12, 12), generator=g))
    true[0] = 0  # an empty image
    pred[0] = 0
    pred[1][pred[1] == 2] = 0  # label 2 missed in image 1
    m = M.segmentation_metrics(pred, true, values)
    ref = compute_dice(F.one_hot(pred, K).movedim(-1, 1), F.one_hot(true, K).movedim(-1, 1), include_background=False,
                       ignore_empty=False)
    for li, v in enumerate(values[1:]):
        assert m["dice_per_label"][str(v)] == pytest.approx(ref[:, li].mean().item(), abs=1e-6)
    fg = compute_dice((pred > 0).long()[:, None], (true > 0).long()[:, None], ignore_empty=False)
    assert m["dice_foreground"] == pytest.approx(fg.mean().item(), abs=1e-6)
    # pooled Dice by hand
    for li, v in enumerate(values[1:], start=1):
        p, t = pred == li, true == li
        assert m["dice_global_per_label"][str(v)] == pytest.approx(2 * (p & t).sum().item() / (p.sum() + t.sum()).item())


def test_segmentation_brats_regions_and_per_class():
    true = np.zeros((2, 4, 4), np.int64)
    pred = np.zeros((2, 4, 4), np.int64)
    values = [0, 1, 2, 4]
    true[0, 0, :2] = 3  # value 4: enhancing
    true[0, 1, :2] = 2  # value 2: oedema
    pred[0, 0, :2] = 3
    pred[0, 1, :2] = 1  # predicted necrosis where oedema is
    true[1, 2, :2] = 2
    m = M.segmentation_metrics(pred, true, values, labels=np.array([0, 1]), class_names=["x", "y"])
    assert m["brats"]["WT"] == pytest.approx((1.0 + 0.0) / 2)  # image 1: missed lesion
    assert m["brats"]["ET"] == pytest.approx((1.0 + 1.0) / 2)  # image 1 has no ET anywhere: empty-empty
    assert m["brats"]["TC"] == pytest.approx((2 * 2 / (4 + 2) + 1.0) / 2)
    assert m["dice_per_label"]["2"] == 0.0
    assert m["dice_per_class"] == {"x": 1.0, "y": 0.0}


def test_no_lesion_label_is_an_error():
    with pytest.raises(ValueError, match="no lesion label"):
        M.segmentation_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), [0, 3], anatomy_values=[3])


# ---------------------------------------------------------------------------------------------- one module
def test_one_definition_used_everywhere():
    defs = []
    for f in SRC.rglob("*.py"):
        for name in ("classification_metrics", "segmentation_metrics", "selection_score"):
            if re.search(rf"^def {name}\(", f.read_text(), re.M):
                defs.append((name, f.relative_to(SRC).as_posix()))
    assert sorted(defs) == [("classification_metrics", "training/metrics.py"),
                            ("segmentation_metrics", "training/metrics.py"),
                            ("selection_score", "training/metrics.py")]
    from medbalance.experiments import downstream, feature_downstream
    from medbalance.training import task

    assert task.classification_metrics is M.classification_metrics
    assert task.segmentation_metrics is M.segmentation_metrics
    assert downstream.classification_metrics is M.classification_metrics
    assert downstream.segmentation_metrics is M.segmentation_metrics
    assert feature_downstream.classification_metrics is M.classification_metrics


def test_train_task_selection_uses_lesion_dice(monkeypatch):
    """train-task's epoch selection reads the dataset's anatomy values."""
    from medbalance.data.dataset import ImageDataset
    from medbalance.training.task import evaluate_task_model

    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, 1:7, 1:7] = 1
    masks[:, 3:5, 3:5] = 2
    ds = ImageDataset(images=torch.zeros(2, 1, 8, 8), labels=torch.tensor([0, 1]), class_names=["a", "b"],
                      ids=["i0", "i1"], masks=masks, mask_values=[0, 3, 255], meta={"anatomy_values": [3]})
    monkeypatch.setattr("medbalance.training.task.predict_segmentor", lambda model, d, bs=128: (masks > 0).long())
    m = evaluate_task_model(None, ds, "segmentation")
    assert m["dice"] == 0.0
