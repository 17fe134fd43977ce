"""Downstream utility: does adding synthetic images help a classifier / segmentor on *real* test data?

One experiment = one real train/validation/test split (seeded, stratified, patient-grouped), the same for
every arm and every seed; per seed, every arm trains a task network from the same initialisation seed, selects
its epoch on real validation data and is tested on real test data only.

Arms (each selectable):

- ``real``: the real training split (baseline);
- ``oversample``: random duplication of real images to the same per-class counts as the balanced arm;
- ``class-weight``: real data, inverse-frequency class weights in the loss;
- ``augment``: real data with classic augmentation (flips, rotations, small affine);
- ``real+synthetic``: real + synthetic images bringing the classes to balance (``strategy``, imbalanced-learn
  semantics); ``real+synthetic@R``: real + R x real synthetic images per class (Red-GAN's 50/100/200 %);
- ``synthetic-only``: only synthetic images, as many per class as the balanced arm has (Shin et al.'s
  anonymisation use).

**Leakage guard**: the generator's run records which sample ids it was trained on; the experiment refuses to
run when any test id (or, with ``allow_val_overlap=False``, validation id) was seen by the generator.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from pydantic import Field

from medbalance.config import BaseConfig
from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.evaluation.stats import min_attainable_p, paired_wilcoxon, summarize
from medbalance.utils.io import atomic_write_json
from medbalance.utils.progress import make_progress

BASE_ARMS = ("real", "oversample", "class-weight", "augment", "real+synthetic", "synthetic-only")


class DownstreamConfig(BaseConfig):
    task: Literal["classification", "segmentation"] = "classification"
    arms: list[str] = Field(default_factory=lambda: ["real", "oversample", "class-weight", "real+synthetic"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    subsample: dict[str, float] = Field(
        default_factory=dict, description="class -> fraction of its *training* images kept (e.g. meningioma: 0.1)"
    )
    strategy: Any = Field("auto", description="sampling strategy of the balanced synthetic arm")
    mask_source: str = "real"
    allow_val_overlap: bool = Field(True, description="allow the generator to have seen validation ids (warned)")
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    arch: Optional[str] = None
    device: str = "auto"
    precision: str = "auto"


def arm_ratio(arm: str) -> float | None:
    if arm.startswith("real+synthetic@"):
        try:
            return float(arm.split("@", 1)[1])
        except ValueError:
            raise ConfigError(f"arm {arm!r}: expected real+synthetic@RATIO, e.g. real+synthetic@0.5") from None
    return None


def check_arms(arms: list[str]) -> None:
    for a in arms:
        if a not in BASE_ARMS and arm_ratio(a) is None:
            raise ConfigError(f"unknown arm {a!r}; allowed: {', '.join(BASE_ARMS)}, real+synthetic@RATIO")
    if "real" not in arms:
        raise ConfigError("the arms must include 'real' (every other arm is compared with it)")


# ---------------------------------------------------------------------------------------------- metrics
def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Per-class recall (sensitivity), precision, F1, specificity; balanced accuracy, macro-F1, AUROC (OvR),
    confusion matrix. scikit-learn throughout."""
    from sklearn.metrics import (
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    k = len(class_names)
    y_pred = probs.argmax(1)
    labels = list(range(k))
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    fp = cm.sum(0) - np.diag(cm)
    spec = np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), np.nan)
    try:
        if k == 2:
            auroc = float(roc_auc_score(y_true, probs[:, 1]))
        else:
            auroc = float(roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
    except ValueError:
        auroc = float("nan")
    return {
        "per_class": {
            c: {"recall": float(rec[i]), "precision": float(prec[i]), "f1": float(f1[i]),
                "specificity": float(spec[i]), "support": int(support[i])}
            for i, c in enumerate(class_names)
        },
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": float((y_pred == y_true).mean()),
        "auroc": auroc,
        "confusion_matrix": cm.tolist(),
    }


def _dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two boolean arrays; empty-empty counts as 1 (as in Red-GAN's evaluation)."""
    s = pred.sum() + true.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(pred, true).sum() / s)


def segmentation_metrics(
    pred: np.ndarray, true: np.ndarray, labels: np.ndarray, class_names: list[str], mask_values: list[int]
) -> dict[str, Any]:
    """Dice per label (mean over test images), per global class (mean foreground Dice of that class's images),
    and BraTS whole tumour / tumour core / enhancing tumour when the label values are BraTS's."""
    n = pred.shape[0]
    per_label = {}
    for li in range(1, len(mask_values)):
        per_label[str(mask_values[li])] = float(np.mean([_dice(pred[i] == li, true[i] == li) for i in range(n)]))
    fg = np.array([_dice(pred[i] > 0, true[i] > 0) for i in range(n)])
    out: dict[str, Any] = {
        "dice_per_label": per_label,
        "dice_foreground": float(fg.mean()),
        "dice_per_class": {c: float(fg[labels == k].mean()) if (labels == k).any() else float("nan")
                           for k, c in enumerate(class_names)},
        "per_case_dice_foreground": fg.tolist(),
    }
    if set(mask_values) <= {0, 1, 2, 3, 4} and 4 in mask_values and 2 in mask_values:
        vals = np.asarray(mask_values)
        pv, tv = vals[pred], vals[true]
        wt = [_dice(pv[i] > 0, tv[i] > 0) for i in range(n)]
        tc = [_dice(np.isin(pv[i], [1, 3, 4]), np.isin(tv[i], [1, 3, 4])) for i in range(n)]
        et = [_dice(pv[i] == 4, tv[i] == 4) for i in range(n)]
        out["brats"] = {"WT": float(np.mean(wt)), "TC": float(np.mean(tc)), "ET": float(np.mean(et))}
    return out


# ---------------------------------------------------------------------------------------------- data per arm
@dataclass
class Split:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    indices: dict[str, list[int]] = field(default_factory=dict)


def make_split(data: ImageDataset, cfg: DownstreamConfig) -> Split:
    from medbalance.data.splits import stratified_split, subsample_class

    parts = stratified_split(data, fractions=cfg.fractions, seed=cfg.split_seed)
    train_idx = np.asarray(parts["train"])
    for cls, frac in cfg.subsample.items():
        if cls not in data.class_names:
            raise ConfigError(f"--subsample: unknown class {cls!r}; classes are {', '.join(data.class_names)}")
        if not 0 < frac <= 1:
            raise ConfigError(f"--subsample {cls}={frac}: the fraction must be in (0, 1]")
        train_idx = subsample_class(train_idx, data.labels.numpy(), data.class_names.index(cls), frac, seed=cfg.split_seed)
    idx = {"train": train_idx.tolist(), "val": np.asarray(parts["val"]).tolist(), "test": np.asarray(parts["test"]).tolist()}
    return Split(data.subset(idx["train"]), data.subset(idx["val"]), data.subset(idx["test"]), idx)


def leakage_guard(run: Any, split: Split, allow_val_overlap: bool = True) -> list[str]:
    """Refuse when the generator saw any test id; return warnings (validation overlap)."""
    seen = set(getattr(run, "train_ids", None) or [])
    if not seen:
        raise DataError(
            "the generator run records no training ids, so leakage cannot be ruled out; retrain it with medbalance"
        )
    bad = sorted(seen & set(split.test.ids))
    if bad:
        raise DataError(
            f"leakage: the generator was trained on {len(bad)} of the {len(split.test)} test samples "
            f"(e.g. {', '.join(bad[:3])}); train it on the experiment's training split only",
            path=getattr(run, "run_dir", None),
        )
    warns = []
    val_bad = seen & set(split.val.ids)
    if val_bad:
        msg = f"the generator saw {len(val_bad)} validation samples (model selection may be optimistic)"
        if not allow_val_overlap:
            raise DataError("leakage: " + msg)
        warns.append(msg)
    return warns


def oversample_dataset(train: ImageDataset, target: dict[str, int], seed: int) -> ImageDataset:
    """Random duplication of real samples up to ``target`` total per class."""
    rng = np.random.default_rng(seed)
    labels = train.labels.numpy()
    extra = []
    for cls, total in target.items():
        k = train.class_names.index(cls)
        idx = np.nonzero(labels == k)[0]
        need = int(total) - len(idx)
        if need > 0 and len(idx):
            extra.append(rng.choice(idx, size=need, replace=True))
    if not extra:
        return train
    dup = train.subset(np.concatenate(extra))
    dup.ids = [f"{i}#dup{j}" for j, i in enumerate(dup.ids)]
    return train.concat(dup)


def balanced_targets(train: ImageDataset, strategy: Any) -> dict[str, int]:
    from medbalance.synthesis.strategy import plan_sampling

    names = [train.class_names[i] for i in train.labels.tolist()]
    plan = plan_sampling(names, strategy)
    counts = train.class_counts()
    return {c: counts[c] + int(plan.get(c, 0)) for c in train.class_names}


# ---------------------------------------------------------------------------------------------- experiment
@dataclass
class SyntheticSource:
    """Where synthetic training images come from: a trained generator run, or a fixed synthetic dataset."""

    run: Any = None
    dataset: ImageDataset | None = None

    def make(self, train: ImageDataset, plan: dict[str, int] | None, ratio: float | None, seed: int,
             mask_source: str) -> ImageDataset:
        if self.run is not None:
            from medbalance.synthesis.oversampler import GenerativeOverSampler

            kw: dict[str, Any] = {"mask_source": mask_source, "random_state": seed, "progress": False}
            if ratio is not None:
                kw.update(ratio=ratio)
            else:
                kw.update(sampling_strategy={c: train.class_counts()[c] + n for c, n in plan.items() if n > 0}
                          if plan else "auto")
            s = GenerativeOverSampler(self.run, **kw).fit(train)
            return s.sample()
        if self.dataset is None:
            raise ConfigError("this arm needs synthetic data: give a generator run (--run) or a synthetic manifest")
        syn = self.dataset
        rng = np.random.default_rng(seed)
        want = {c: int(round(ratio * n)) for c, n in train.class_counts().items()} if ratio is not None else (plan or {})
        take = []
        labels = syn.labels.numpy()
        for c, n in want.items():
            pool = np.nonzero(labels == syn.class_names.index(c))[0]
            if n > len(pool):
                raise DataError(f"the synthetic set has {len(pool)} images of class {c!r}, {n} needed")
            take.append(rng.choice(pool, size=n, replace=False))
        return syn.subset(np.concatenate(take) if take else np.zeros(0, dtype=np.int64))


def arm_training_set(arm: str, split: Split, cfg: DownstreamConfig, seed: int, source: SyntheticSource | None
                     ) -> tuple[ImageDataset, dict[str, Any]]:
    """The training set of one arm and the task options it changes."""
    train = split.train
    targets = balanced_targets(train, cfg.strategy)
    extra_plan = {c: targets[c] - n for c, n in train.class_counts().items()}
    opts: dict[str, Any] = {}
    if arm == "real":
        return train, opts
    if arm == "oversample":
        return oversample_dataset(train, targets, seed), opts
    if arm == "class-weight":
        return train, {"class_weights": True}
    if arm == "augment":
        return train, {"augment": True}
    if source is None:
        raise ConfigError(f"arm {arm!r} needs synthetic data: give a generator run (--run) or --synthetic MANIFEST")
    if arm == "synthetic-only":
        syn = source.make(train, {c: t for c, t in targets.items()}, None, seed, cfg.mask_source)
        return _strip_masks_if_needed(syn, train), opts
    ratio = arm_ratio(arm)
    syn = source.make(train, extra_plan, ratio, seed, cfg.mask_source)
    syn = _strip_masks_if_needed(syn, train)
    if syn.masks is None and train.masks is not None:  # a generator without label maps (classification only)
        if cfg.task == "segmentation":
            raise ConfigError(f"arm {arm!r}: the synthetic images have no label maps, segmentation needs them")
        train = _without_masks(train)
    return train.concat(syn), opts


def _without_masks(ds: ImageDataset) -> ImageDataset:
    out = ds.subset(range(len(ds)))
    out.masks, out.mask_values = None, None
    return out


def _strip_masks_if_needed(syn: ImageDataset, like: ImageDataset) -> ImageDataset:
    if like.masks is None and syn.masks is not None:
        syn = syn.subset(range(len(syn)))
        syn.masks, syn.mask_values = None, None
    if like.conditions is None and syn.conditions is not None:
        syn.conditions, syn.condition_names = None, None
    return syn


def run_downstream(
    data: ImageDataset, cfg: DownstreamConfig, out_dir: str | Path, source: SyntheticSource | None = None
) -> dict[str, Any]:
    """Run every arm for every seed; write ``downstream.json`` into ``out_dir`` and return it."""
    from medbalance.training.task import TaskConfig, predict_classifier, predict_segmentor, train_task_model

    check_arms(cfg.arms)
    if cfg.task == "segmentation" and data.masks is None:
        raise DataError("segmentation needs label maps, the dataset has none", path=data.meta.get("path"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = make_split(data, cfg)
    warnings: list[str] = []
    if source is not None and source.run is not None:
        warnings += leakage_guard(source.run, split, cfg.allow_val_overlap)
    for c, n in split.train.class_counts().items():
        if n < 10:
            warnings.append(f"class {c!r} has only {n} training images")
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in cfg.arms}
    compositions: dict[str, dict[str, Any]] = {}
    t_start = time.perf_counter()
    total = len(cfg.arms) * len(cfg.seeds)
    with make_progress() as bar:
        task = bar.add_task("downstream", total=total)
        for seed in cfg.seeds:
            for arm in cfg.arms:
                bar.update(task, description=f"seed {seed} · {arm}")
                train_set, opts = arm_training_set(arm, split, cfg, seed, source)
                comp = {
                    "n": len(train_set),
                    "class_counts": train_set.class_counts(),
                    "synthetic": int(train_set.is_synthetic().sum()),
                    **opts,
                }
                compositions.setdefault(arm, comp)
                tcfg = TaskConfig(**{
                    "task": cfg.task, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
                    "seed": seed, "device": cfg.device, "precision": cfg.precision, "augment": False,
                    "progress": False, **({"arch": cfg.arch} if cfg.arch else {}), **opts,
                })
                t0 = time.perf_counter()
                res = train_task_model(train_set, split.val, tcfg)
                train_s = time.perf_counter() - t0
                if cfg.task == "classification":
                    probs, _ = predict_classifier(res.model, split.test)
                    probs = np.asarray(probs)
                    m = classification_metrics(split.test.labels.numpy(), probs, data.class_names)
                    m["per_case_correct"] = (probs.argmax(1) == split.test.labels.numpy()).astype(int).tolist()
                else:
                    pred = np.asarray(predict_segmentor(res.model, split.test))
                    m = segmentation_metrics(pred, split.test.masks.numpy(), split.test.labels.numpy(),
                                             data.class_names, list(data.mask_values))
                m.update(seed=seed, arm=arm, best_epoch=int(res.best_epoch), train_seconds=round(train_s, 2))
                results[arm].append(m)
                bar.advance(task)
    report = {
        "config": cfg.model_dump(mode="json"),
        "task": cfg.task,
        "class_names": list(data.class_names),
        "split": {k: len(v) for k, v in split.indices.items()},
        "split_class_counts": {k: getattr(split, k).class_counts() for k in ("train", "val", "test")},
        "test_ids": list(split.test.ids),
        "arm_training_sets": compositions,
        "results": results,
        "summary": summarize_arms(results, cfg.task, data.class_names, split.test.labels.numpy()),
        "warnings": warnings,
        "seconds": round(time.perf_counter() - t_start, 1),
        "notes": [
            "model selection on real validation data only; test on real test data only",
            "one split for every arm and seed; seeds change initialisation, data order and generation",
        ],
    }
    atomic_write_json(out_dir / "downstream.json", report)
    return report


def _metric_table(task: str, class_names: list[str]) -> dict[str, Any]:
    """metric name -> function(result dict) -> float."""
    if task == "classification":
        table: dict[str, Any] = {
            "balanced_accuracy": lambda r: r["balanced_accuracy"],
            "macro_f1": lambda r: r["macro_f1"],
            "auroc": lambda r: r["auroc"],
        }
        for c in class_names:
            for k in ("recall", "precision", "f1", "specificity"):
                table[f"{k}/{c}"] = (lambda c_, k_: (lambda r: r["per_class"][c_][k_]))(c, k)
        return table
    table = {"dice_foreground": lambda r: r["dice_foreground"]}
    for c in class_names:
        table[f"dice/{c}"] = (lambda c_: (lambda r: r["dice_per_class"][c_]))(c)
    table.update({f"brats/{k}": (lambda k_: (lambda r: r.get("brats", {}).get(k_, float("nan"))))(k) for k in ("WT", "TC", "ET")})
    return table


def summarize_arms(
    results: dict[str, list[dict[str, Any]]], task: str, class_names: list[str], test_labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Mean, std, 95 % bootstrap CI per arm and metric; paired Wilcoxon of each arm vs ``real`` across seeds
    (and, for classification recall and segmentation Dice, across test cases)."""
    table = _metric_table(task, class_names)
    base = results["real"]
    out: dict[str, Any] = {}
    for arm, runs in results.items():
        arm_out: dict[str, Any] = {}
        for name, fn in table.items():
            vals = [float(fn(r)) for r in runs]
            if all(math.isnan(v) for v in vals):
                continue
            entry: dict[str, Any] = summarize(vals).to_dict()
            if arm != "real":
                bvals = [float(fn(r)) for r in base]
                entry["vs_real_seeds"] = paired_wilcoxon(vals, bvals)
            arm_out[name] = entry
        if arm != "real":
            arm_out["_cases"] = _case_tests(runs, base, task, class_names, test_labels)
        out[arm] = arm_out
    out["_min_attainable_p_seeds"] = min_attainable_p(len(base))
    return out


def _case_tests(runs, base, task, class_names, test_labels) -> dict[str, Any]:
    """Per test case, the arm's score averaged over seeds vs real's; Wilcoxon across the cases of each class
    (classification: correctness, i.e. recall; segmentation: foreground Dice)."""
    key = "per_case_correct" if task == "classification" else "per_case_dice_foreground"
    a = np.mean([r[key] for r in runs], axis=0)
    b = np.mean([r[key] for r in base], axis=0)
    out = {"all": paired_wilcoxon(a, b)}
    if test_labels is not None:
        for k, c in enumerate(class_names):
            sel = np.asarray(test_labels) == k
            if sel.any():
                out[c] = paired_wilcoxon(a[sel], b[sel])
    return out
