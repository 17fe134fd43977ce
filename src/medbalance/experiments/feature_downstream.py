"""Feature-level augmentation end to end (Mehra, Soliman & Sahoo, arXiv 2209.14097).

Pipeline (:func:`run_feature_augment`, CLI ``medbalance feature-augment``):

1. one real train/val/test split (stratified, patient-grouped when groups are known, the training part of chosen
   classes subsampled) -- the same :func:`~medbalance.experiments.downstream.make_split` as the image experiments;
2. a segmentation U-Net trained on the *training split* slices and their whole-lesion masks (label > 0, as the
   paper's "all" task), selected on the validation split, or loaded (``segmentor=``; refused when it was trained
   on any test id);
3. the U-Net bottleneck of every slice into a memory-mapped store (:mod:`medbalance.synthesis.features`);
4. a class-conditional ACGAN on the training-split features (:mod:`medbalance.models.feature_acgan`);
5. a feature classifier (2 x [conv, BN, ReLU, max-pool], 2 FC with dropout 0.5) per arm and seed, selected on
   real validation features, tested on real test features. Arms use the image experiments' grammar, class
   targets, oversampling and synthetic counts (:mod:`medbalance.experiments.downstream`): ``real``,
   ``oversample`` (duplicate real features to the balanced counts), ``class-weight``, ``real+synthetic`` (real +
   ACGAN features per class following ``strategy``, imbalanced-learn semantics, kept only when D's class head
   agrees -- the paper's filter), ``real+synthetic@R`` / ``@Rx`` and ``+class-weight`` as for images. Features
   are standardised per channel with the real training statistics (all arms alike).

``feature_downstream.json`` has the shape of ``downstream.json`` (``config``, ``task``, ``class_names``,
``split``, ``split_class_counts``, ``test_ids``, ``arm_training_sets``, ``results``, ``summary`` from
:func:`~medbalance.experiments.downstream.summarize_arms`, ``warnings``, ``seconds``, ``notes``) plus a
``feature_augment`` section (segmentor Dice, feature shape, ACGAN class accuracies and filter acceptance,
timings) and ``paper_reference`` (Table 3 of the paper).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medbalance.config import BaseConfig
from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.experiments.downstream import (
    ArmSpec,
    DownstreamConfig,
    check_arms,
    check_seen_ids,
    class_targets,
    make_split,
    oversample_indices,
    parse_arm,
    summarize_arms,
    synthetic_counts,
)
from medbalance.training.metrics import classification_metrics
from medbalance.utils.io import atomic_write_json
from medbalance.utils.progress import make_progress
from medbalance.utils.seed import seed_everything

FEATURE_ARMS = ("real", "oversample", "class-weight", "real+synthetic")  # the arm bases features support
FEATURE_EVAL_BATCH = 512  # feature maps are small: large no-grad batches

PAPER_REFERENCE = {
    "source": "Mehra, Soliman & Sahoo, arXiv 2209.14097, Table 3 (REMBRANDT FLAIR, 570 test slices, 64 % HGG)",
    "per_class_accuracy": {
        "HGG": {"real": 0.95, "real+synthetic": 0.569},
        "LGG": {"real": 0.05, "real+synthetic": 0.384},
    },
    "total_accuracy": {"real": 0.61, "real+synthetic": 0.524},
    "synthetic_added": 1158,
    "d_class_accuracy_generated": {"width 64": 0.76, "width 512": 0.823},
}

# Segmentor presets (TaskConfig fields). paper: Adam lr 1e-5, batch 10, 30 epochs, 5-level U-Net up to 1024
# channels; MONAI UNet (strided convs, residual units) stands in for the TensorLayer U-Net.
SEGMENTOR_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"arch": "unet", "seg_mode": "sigmoid", "channels": [64, 128, 256, 512, 1024], "epochs": 30,
              "batch_size": 10, "lr": 1e-5, "weight_decay": 0.0, "schedule": "constant", "dropout": 0.0, "augment": True},
    # cpu: small U-Net, positive-class weight in the BCE (a lesion covers a few % of a slice; without it the
    # short schedule collapses to "no lesion")
    "cpu": {"arch": "unet", "seg_mode": "sigmoid", "channels": [8, 16, 32, 64], "epochs": 8, "batch_size": 16,
            "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "dropout": 0.0, "augment": True,
            "class_weights": True},
}


class FeatureClassifierConfig(BaseConfig):
    """The downstream feature classifier (paper 2.8: widths, lr and epochs are not given; these are choices)."""

    channels: list[int] = Field(default_factory=lambda: [64, 64], min_length=2, max_length=2)
    hidden: int = Field(256, ge=1, description="width of the first fully connected layer")
    dropout: float = Field(0.5, ge=0, lt=1, description="before and after the first FC layer (paper: 0.5)")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    # paper (TF notebook variant): Adam 1e-3, batch 10, 20 epochs; widths are our choice for 1024-channel input
    "paper": {"channels": [256, 256], "hidden": 1024, "epochs": 20, "batch_size": 10, "lr": 1e-3},
    "cpu": {"channels": [64, 64], "hidden": 256, "epochs": 15, "batch_size": 64, "lr": 1e-3},
}


class FeatureAugmentConfig(BaseConfig):
    preset: Literal["cpu", "paper"] = "cpu"
    arms: list[str] = Field(default_factory=lambda: ["real", "oversample", "real+synthetic"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    subsample: dict[str, float] = Field(default_factory=dict, description="class -> fraction of its training slices kept")
    strategy: Any = Field("auto", description="sampling strategy of the synthetic features (imbalanced-learn semantics)")
    filter_generated: bool = Field(True, description="keep generated features only when D's class head agrees (paper)")
    max_factor: float = Field(20.0, ge=1, description="at most this many candidates per requested feature")
    segmentor: dict[str, Any] = Field(default_factory=dict, description="TaskConfig overrides of the preset")
    acgan: dict[str, Any] = Field(default_factory=dict, description="FeatureACGANConfig overrides of the preset")
    classifier: dict[str, Any] = Field(default_factory=dict, description="FeatureClassifierConfig overrides")
    generated_eval_per_class: int = Field(500, ge=1, description="unfiltered samples per class for D's accuracy")
    extract_batch_size: int = Field(64, ge=1)
    threads: Optional[int] = Field(
        None, ge=1, description="torch CPU threads during the run (null = unchanged); 1 is much faster on a busy shared CPU"
    )
    device: str = "auto"
    progress: bool = True


def feature_arm(arm: str) -> ArmSpec:
    """:func:`~medbalance.experiments.downstream.parse_arm` restricted to the bases of :data:`FEATURE_ARMS`
    (the D class filter is ``filter_generated``, not ``|filter=``)."""
    try:
        spec = parse_arm(arm)
    except ConfigError:
        spec = None
    if spec is None or spec.base not in FEATURE_ARMS or spec.filter:
        raise ConfigError(f"unknown feature arm {arm!r}; allowed: {', '.join(FEATURE_ARMS)}, real+synthetic@R, "
                          "real+synthetic@Rx, with optional +class-weight")
    return spec


def check_feature_arms(arms: list[str]) -> None:
    for a in arms:
        feature_arm(a)
    check_arms(arms)


def segmentor_config(cfg: FeatureAugmentConfig):
    from medbalance.training.task import TaskConfig

    d = {**SEGMENTOR_PRESETS[cfg.preset], **cfg.segmentor, "task": "segmentation", "device": cfg.device,
         "progress": cfg.progress}
    return TaskConfig.from_dict(d, source="feature-augment segmentor")


def acgan_config(cfg: FeatureAugmentConfig):
    from medbalance.models.feature_acgan import ACGAN_PRESETS, FeatureACGANConfig

    d = {**ACGAN_PRESETS[cfg.preset], **cfg.acgan, "device": cfg.device, "progress": cfg.progress}
    return FeatureACGANConfig.from_dict(d, source="feature-augment acgan")


def classifier_config(cfg: FeatureAugmentConfig) -> FeatureClassifierConfig:
    return FeatureClassifierConfig.from_dict({**CLASSIFIER_PRESETS[cfg.preset], **cfg.classifier},
                                             source="feature-augment classifier")


# ---------------------------------------------------------------------------------------------- classifier
class FeatureClassifier(nn.Module):
    """2 x [Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] -> Dropout -> FC -> ReLU -> Dropout -> FC (logits).

    The paper's output is a sigmoid for HGG vs LGG; softmax cross-entropy over K classes is the same model
    for K = 2 and works for any number of classes. Max-pooling uses ``ceil_mode`` so odd maps (15 x 15) work.
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int, channels: list[int] = (64, 64),
                 hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        C = int(shape[0])
        c1, c2 = (int(c) for c in channels)
        self.body = nn.Sequential(
            nn.Conv2d(C, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(True), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(True), nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(1),
        )
        with torch.no_grad():
            d = int(self.body(torch.zeros(2, *shape)).shape[1])
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(d, hidden), nn.ReLU(True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_feature_classifier(
    x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int,
    cfg: FeatureClassifierConfig, seed: int, class_weights: bool = False, device: str = "auto",
) -> tuple[nn.Module, int, list[dict[str, Any]]]:
    """Train on (standardised) features with the task-training loop (:func:`~medbalance.training.task.fit_epochs`:
    Adam, constant rate); keep the epoch with the best validation balanced accuracy."""
    from medbalance.training.task import (
        compute_class_weights,
        fit_epochs,
        predict_classifier,
    )
    from medbalance.utils.device import select_device

    n = x_train.shape[0]
    if n < 2:
        raise DataError(f"the feature classifier needs at least 2 training samples, got {n}")
    dev = select_device(device)
    seed_everything(seed)
    model = FeatureClassifier(tuple(x_train.shape[1:]), num_classes, cfg.channels, cfg.hidden, cfg.dropout).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    w = compute_class_weights(y_train, num_classes).to(dev) if class_weights else None
    names = [str(k) for k in range(num_classes)]

    def batch_loss(batch: list[torch.Tensor | None], _gen: torch.Generator) -> torch.Tensor:
        xb, yb = batch
        return F.cross_entropy(model(xb).float(), yb, weight=w)

    def evaluate() -> dict[str, Any]:
        return classification_metrics(y_val, predict_classifier(model, x_val, FEATURE_EVAL_BATCH)[0], names)

    history, best_epoch, _ = fit_epochs(model, [x_train, y_train], batch_loss, opt, epochs=cfg.epochs,
                                        batch_size=cfg.batch_size, seed=seed, evaluate=evaluate)
    return model, best_epoch, history


# ---------------------------------------------------------------------------------------------- arms
def arm_feature_set(
    arm: str, x: torch.Tensor, y: torch.Tensor, class_names: list[str], strategy: Any, seed: int,
    acgan: Any = None, filter_generated: bool = True, max_factor: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any], dict[str, Any]]:
    """(features, labels, synthetic flags, training options, generation stats) of one arm (raw feature units).

    Class targets, oversampling and synthetic counts are the image arms' (:func:`class_targets`,
    :func:`oversample_indices`, :func:`synthetic_counts`)."""
    from medbalance.models.feature_acgan import generate_filtered

    spec = feature_arm(arm)
    labels = y.numpy()
    none = torch.zeros(x.shape[0], dtype=torch.bool)
    opts = {"class_weights": True} if spec.base == "class-weight" or spec.class_weight else {}
    if spec.base in ("real", "class-weight"):
        return x, y, none, opts, {}
    targets = class_targets(labels, class_names, strategy)
    if spec.base == "oversample":
        extra = oversample_indices(labels, dict(enumerate(targets.values())), seed)
        if not len(extra):
            return x, y, none, opts, {}
        idx = torch.from_numpy(np.concatenate([np.arange(x.shape[0]), extra]))
        return x[idx], y[idx], torch.zeros(idx.shape[0], dtype=torch.bool), opts, {}
    # real+synthetic
    if acgan is None:
        raise ConfigError(f"arm {arm!r} needs a trained feature ACGAN")
    counts = dict(zip(class_names, np.bincount(labels, minlength=len(class_names)).tolist()))
    n_syn = synthetic_counts(spec, counts, targets)
    plan = {k: n_syn[c] for k, c in enumerate(class_names) if n_syn[c] > 0}
    if filter_generated:
        xs, ys, stats = generate_filtered(acgan.generate, acgan.classify, plan, seed=seed, max_factor=max_factor)
    else:
        g = torch.Generator().manual_seed(seed)
        ys = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in plan.items()]) if plan else torch.zeros(0, dtype=torch.long)
        xs = acgan.generate(ys, g)
        stats = {k: {"requested": n, "generated": n, "kept": n, "acceptance": float("nan"), "shortfall": 0}
                 for k, n in plan.items()}
    named = {class_names[k]: v for k, v in stats.items()}
    if xs.shape[0] == 0:
        return x, y, none, opts, named
    flags = torch.cat([none, torch.ones(xs.shape[0], dtype=torch.bool)])
    return torch.cat([x, xs.to(x.dtype)]), torch.cat([y, ys]), flags, opts, named


def run_feature_downstream(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor], class_names: list[str], cfg: FeatureAugmentConfig, acgan: Any = None,
) -> dict[str, Any]:
    """Every arm x seed on (raw) features; returns ``results``, ``summary``, ``arm_training_sets``, ``generation``."""
    from medbalance.training.task import predict_classifier

    check_feature_arms(cfg.arms)
    ccfg = classifier_config(cfg)
    x_tr, y_tr = train
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))

    def norm(a: torch.Tensor) -> torch.Tensor:
        return (a - mean) / std

    xv, yv = norm(val[0]), val[1]
    xt, yt = norm(test[0]), test[1].numpy()
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in cfg.arms}
    comps: dict[str, Any] = {}
    generation: dict[str, Any] = {}
    with make_progress() as bar:
        task = bar.add_task("feature classifier", total=len(cfg.arms) * len(cfg.seeds)) if cfg.progress else None
        for seed in cfg.seeds:
            for arm in cfg.arms:
                if task is not None:
                    bar.update(task, description=f"feature classifier seed {seed} · {arm}")
                xa, ya, syn, opts, gstats = arm_feature_set(
                    arm, x_tr, y_tr, class_names, cfg.strategy, seed, acgan, cfg.filter_generated, cfg.max_factor
                )
                comps.setdefault(arm, {
                    "n": int(xa.shape[0]),
                    "class_counts": {c: int(v) for c, v in zip(class_names, np.bincount(ya.numpy(), minlength=len(class_names)))},
                    "synthetic": int(syn.sum()),
                    "synthetic_class_counts": {c: int(v) for c, v in zip(class_names, np.bincount(ya[syn].numpy(), minlength=len(class_names)))},
                    **opts,
                })
                if gstats:
                    generation.setdefault(arm, {})[str(seed)] = gstats
                t0 = time.perf_counter()
                model, best_epoch, _ = train_feature_classifier(
                    norm(xa), ya, xv, yv, len(class_names), ccfg, seed, class_weights=bool(opts.get("class_weights")),
                    device=cfg.device,
                )
                probs, pred = predict_classifier(model, xt, FEATURE_EVAL_BATCH)
                m = classification_metrics(yt, probs, class_names)
                m["per_case_correct"] = (pred.numpy() == yt).astype(int).tolist()
                m.update(seed=seed, arm=arm, best_epoch=int(best_epoch), train_seconds=round(time.perf_counter() - t0, 2),
                         n_synthetic=int(syn.sum()))
                results[arm].append(m)
                if task is not None:
                    bar.advance(task)
    return {
        "results": results,
        "summary": summarize_arms(results, "classification", class_names, yt),
        "arm_training_sets": comps,
        "generation": generation,
        "classifier": ccfg.model_dump(mode="json"),
    }


# ---------------------------------------------------------------------------------------------- pipeline
def whole_lesion(ds: ImageDataset) -> ImageDataset:
    """Masks -> binary whole lesion (every lesion label; anatomy labels count as background), mask_values [0, 1]
    (the paper's 'all' task)."""
    if ds.masks is None:
        raise DataError("feature augmentation trains its segmentor on lesion masks, but the dataset has none "
                        "(give a trained segmentor with --segmentor)", path=ds.meta.get("path"))
    from medbalance.data.anatomy import lesion_indices

    lesion = torch.tensor(lesion_indices(ds.mask_values or [], ds.meta.get("anatomy_values")), dtype=torch.long)
    # anatomy labels (e.g. the phantom's intracranial space, Red-GAN's brain label) are background here
    meta = {k: v for k, v in ds.meta.items() if k != "anatomy_values"}
    return replace(ds, masks=torch.isin(ds.masks, lesion).long(), mask_values=[0, 1], meta=meta)


def run_feature_augment(
    data: ImageDataset, cfg: FeatureAugmentConfig, out_dir: str | Path, segmentor: str | Path | None = None,
) -> dict[str, Any]:
    """The whole pipeline; writes OUT/segmentor, OUT/features, OUT/acgan, OUT/feature_downstream.json."""
    check_feature_arms(cfg.arms)
    if cfg.threads is None:
        return _run_feature_augment(data, cfg, out_dir, segmentor)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_feature_augment(data, cfg, out_dir, segmentor)
    finally:
        torch.set_num_threads(before)


def _run_feature_augment(data: ImageDataset, cfg: FeatureAugmentConfig, out_dir: str | Path,
                         segmentor: str | Path | None) -> dict[str, Any]:
    from medbalance.models.feature_acgan import (
        FeatureACGAN,
        class_accuracy,
        generated_class_accuracy,
    )
    from medbalance.models.tasknets import load_task_model
    from medbalance.synthesis.features import extract_to_store
    from medbalance.training.task import evaluate_task_model, train_task_model
    from medbalance.utils.device import select_device

    seg_cfg = segmentor_config(cfg)
    ac_cfg = acgan_config(cfg)
    classifier_config(cfg)  # validate early
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    dcfg = DownstreamConfig(split_seed=cfg.split_seed, fractions=cfg.fractions, subsample=cfg.subsample)
    split = make_split(data, dcfg)
    warnings: list[str] = []
    for c, n in split.train.class_counts().items():
        if n < 10:
            warnings.append(f"class {c!r} has only {n} training slices")
    if data.groups is None:
        warnings.append("no patient ids: the split is slice-level, slices of one patient may be on both sides")
    else:
        ng = {k: len(set(getattr(split, k).groups or [])) for k in ("train", "val", "test")}
        if min(ng.values()) < 3:
            warnings.append(f"patients per split {ng}: far too few for conclusions beyond this sample")

    # 1. segmentor
    t0 = time.perf_counter()
    seg_info: dict[str, Any] = {}
    if segmentor is not None:
        model, meta = load_task_model(segmentor, device=select_device(cfg.device))
        if getattr(model, "arch_name", None) != "unet":
            raise DataError("--segmentor is not a segmentation U-Net", path=segmentor)
        if meta.get("in_channels") not in (None, data.channels) or (
            meta.get("spatial_shape") and list(meta["spatial_shape"]) != list(data.spatial_shape)
        ):
            raise DataError(f"the segmentor was trained on {meta.get('in_channels')} x {meta.get('spatial_shape')} "
                            f"images, the data are {data.channels} x {list(data.spatial_shape)} (set --image-size)",
                            path=segmentor)
        warnings += check_seen_ids(meta.get("train_ids"), split, model="segmentor", unit="slices", path=Path(segmentor))
        seg_info.update(source=str(segmentor), trained_here=False)
    else:
        tr, va = whole_lesion(split.train), whole_lesion(split.val)
        res = train_task_model(tr, va, seg_cfg, out_dir=out / "segmentor")
        model = res.model
        seg_info.update(source=str(out / "segmentor"), trained_here=True, best_epoch=res.best_epoch,
                        config=seg_cfg.model_dump(mode="json"))
    if split.test.masks is not None:
        m = evaluate_task_model(model, whole_lesion(split.test), "segmentation")
        seg_info["test_dice_whole_lesion"] = m["dice"]
        seg_info["test_dice_global_whole_lesion"] = m["dice_global"]
    timings["segmentor"] = round(time.perf_counter() - t0, 1)

    # 2. features of every slice
    t0 = time.perf_counter()
    side = np.full(len(data), "excluded", dtype=object)
    for k in ("train", "val", "test"):
        side[np.asarray(split.indices[k], dtype=np.int64)] = k
    store = extract_to_store(model, data, side.tolist(), out / "features", cfg.extract_batch_size,
                             meta={"segmentor": seg_info.get("source"), "data": data.meta.get("path")},
                             progress=cfg.progress)
    timings["features"] = round(time.perf_counter() - t0, 1)
    train_f, val_f, test_f = store.select("train"), store.select("val"), store.select("test")

    # 3. ACGAN on training features
    t0 = time.perf_counter()
    acgan = FeatureACGAN(store.feature_shape, data.class_names, ac_cfg)
    acgan.fit(train_f[0], train_f[1])
    acgan_eval = {
        "d_class_accuracy_generated": generated_class_accuracy(acgan, cfg.generated_eval_per_class, seed=ac_cfg.seed),
        "d_class_accuracy_real": {k: class_accuracy(acgan, f[0], f[1]) for k, f in
                                  (("train", train_f), ("val", val_f), ("test", test_f))},
        "nonnegative_output": bool(acgan.G.clamp),
    }
    acgan.save(out / "acgan", meta={"train_ids": train_f[2], **acgan_eval})
    timings["acgan"] = round(time.perf_counter() - t0, 1)

    # 4./5. classifier arms
    t0 = time.perf_counter()
    ds_out = run_feature_downstream(train_f[:2], val_f[:2], test_f[:2], data.class_names, cfg, acgan)
    timings["classifier"] = round(time.perf_counter() - t0, 1)
    short = {arm: {s: {c: v["shortfall"] for c, v in st.items() if v["shortfall"]} for s, st in per.items()}
             for arm, per in ds_out["generation"].items()}
    for arm, per in short.items():
        for s, sh in per.items():
            if sh:
                warnings.append(f"{arm} seed {s}: the filter could not fill the quota {sh} (D rejects those classes)")
    ns = {k: len(v) for k, v in split.indices.items()}
    report = {
        "config": {**cfg.model_dump(mode="json"), "task": "classification"},
        "task": "classification",
        "class_names": list(data.class_names),
        "split": ns,
        "split_class_counts": {k: getattr(split, k).class_counts() for k in ("train", "val", "test")},
        "test_ids": list(split.test.ids),
        "arm_training_sets": ds_out["arm_training_sets"],
        "results": ds_out["results"],
        "summary": ds_out["summary"],
        "warnings": warnings,
        "seconds": round(time.perf_counter() - t_all, 1),
        "notes": [
            "features = bottleneck of a segmentation U-Net trained on the training split only",
            "feature classifier selected on real validation features, tested on real test features",
            "one split for every arm and seed; seeds change classifier initialisation, data order and generation",
        ],
        "feature_augment": {
            "data": data.meta.get("path"),
            "image_shape": [data.channels, *data.spatial_shape],
            "feature_shape": list(store.feature_shape),
            "features_nonnegative": store.nonnegative,
            "segmentor": seg_info,
            "acgan": {**acgan_eval, "config": ac_cfg.model_dump(mode="json"),
                      "final_epoch": acgan.history[-1] if acgan.history else None},
            "generation": ds_out["generation"],
            "classifier": ds_out["classifier"],
            "timings_seconds": timings,
            "torch_threads": torch.get_num_threads(),
            "groups_per_split": None if data.groups is None else
            {k: sorted(set(getattr(split, k).groups or [])) for k in ("train", "val", "test")},
        },
        "paper_reference": PAPER_REFERENCE,
    }
    atomic_write_json(out / "feature_downstream.json", report)
    return report


__all__ = [
    "FEATURE_ARMS",
    "FeatureAugmentConfig",
    "FeatureClassifier",
    "FeatureClassifierConfig",
    "PAPER_REFERENCE",
    "arm_feature_set",
    "check_feature_arms",
    "feature_arm",
    "run_feature_augment",
    "run_feature_downstream",
    "train_feature_classifier",
    "whole_lesion",
]
