"""Feature-level augmentation end to end (Mehra, Soliman & Sahoo, arXiv 2209.14097).

Pipeline (:func:`run_feature_augment`, CLI ``medbalance feature-augment``):

1. one real train/val/test split -- the image experiments' :func:`~medbalance.experiments.downstream.make_split`;
2. a segmentation U-Net trained on the *training split* slices and their whole-lesion masks (label > 0, as the
   paper's "all" task), selected on the validation split, or loaded (``segmentor=``; refused when it was trained
   on any test id);
3. the U-Net bottleneck of every slice into a memory-mapped store (:mod:`medbalance.synthesis.features`);
4. a class-conditional ACGAN on the training-split features (:mod:`medbalance.models.feature_acgan`);
5. a feature classifier (2 x [conv, BN, ReLU, max-pool], 2 FC with dropout 0.5) per arm and seed, selected on
   real validation features, tested on real test features. The arms are the image experiments' (grammar, class
   targets, oversampling, synthetic counts: :func:`~medbalance.experiments.downstream.arm_plan`) restricted to
   :data:`FEATURE_ARMS`; synthetic features come from the ACGAN, kept only when D's class head agrees (the
   paper's filter). Features are standardised per channel with the real training statistics (all arms alike).

``feature_downstream.json`` is an :func:`~medbalance.experiments.downstream.experiment_report` like
``downstream.json``, plus a ``feature_augment`` section (segmentor Dice, feature shape, ACGAN class accuracies and
filter acceptance, timings) and ``paper_reference`` (Table 3 of the paper).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from pydantic import Field

from medbalance.data.anatomy import whole_lesion
from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.experiments.downstream import (
    ArmSpec,
    ExperimentConfig,
    arm_plan,
    check_arms,
    check_seen_ids,
    experiment_report,
    make_split,
    parse_arm,
    run_arms,
    small_class_warnings,
)
from medbalance.models.tasknets import CLASSIFIER_PRESETS, FeatureClassifierConfig
from medbalance.training.metrics import classification_metrics
from medbalance.utils.io import atomic_write_json

FEATURE_ARMS = ("real", "oversample", "class-weight", "real+synthetic")  # the arm bases features support

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
              "batch_size": 10, "lr": 1e-5, "weight_decay": 0.0, "schedule": "constant", "dropout": 0.0,
              "augment": True},
    # cpu: small U-Net, positive-class weight in the BCE (a lesion covers a few % of a slice; without it the
    # short schedule collapses to "no lesion")
    "cpu": {"arch": "unet", "seg_mode": "sigmoid", "channels": [8, 16, 32, 64], "epochs": 8, "batch_size": 16,
            "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "dropout": 0.0, "augment": True,
            "class_weights": True},
}


class FeatureAugmentConfig(ExperimentConfig):
    preset: Literal["cpu", "paper"] = "cpu"
    arms: list[str] = Field(default_factory=lambda: ["real", "oversample", "real+synthetic"])
    filter_generated: bool = Field(True, description="keep generated features only when D's class head agrees (paper)")
    max_factor: float = Field(20.0, ge=1, description="at most this many candidates per requested feature")
    segmentor: dict[str, Any] = Field(default_factory=dict, description="TaskConfig overrides of the preset")
    acgan: dict[str, Any] = Field(default_factory=dict, description="FeatureACGANConfig overrides of the preset")
    classifier: dict[str, Any] = Field(default_factory=dict, description="FeatureClassifierConfig overrides")
    generated_eval_per_class: int = Field(500, ge=1, description="unfiltered samples per class for D's accuracy")
    extract_batch_size: int = Field(64, ge=1)
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads during the run (null = unchanged)")
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


def stage_configs(cfg: FeatureAugmentConfig) -> tuple[Any, Any, FeatureClassifierConfig]:
    """The (segmentor TaskConfig, FeatureACGANConfig, FeatureClassifierConfig) of ``cfg``: preset + overrides."""
    from medbalance.models.feature_acgan import ACGAN_PRESETS, FeatureACGANConfig
    from medbalance.training.task import TaskConfig

    run = {"device": cfg.device, "progress": cfg.progress}
    return (TaskConfig.from_dict({**SEGMENTOR_PRESETS[cfg.preset], **cfg.segmentor, "task": "segmentation", **run},
                                 source="feature-augment segmentor"),
            FeatureACGANConfig.from_dict({**ACGAN_PRESETS[cfg.preset], **cfg.acgan, **run},
                                         source="feature-augment acgan"),
            FeatureClassifierConfig.from_dict({**CLASSIFIER_PRESETS[cfg.preset], **cfg.classifier},
                                              source="feature-augment classifier"))


# ---------------------------------------------------------------------------------------------- arms
def arm_feature_set(
    arm: str, x: torch.Tensor, y: torch.Tensor, class_names: list[str], strategy: Any, seed: int,
    acgan: Any = None, filter_generated: bool = True, max_factor: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any], dict[str, Any]]:
    """(features, labels, synthetic flags, training options, generation stats) of one arm (raw feature units):
    the image arms' :func:`~medbalance.experiments.downstream.arm_plan` on features."""
    from medbalance.models.feature_acgan import generate_filtered

    spec = feature_arm(arm)
    opts, dup, n_syn = arm_plan(spec, y.numpy(), class_names, strategy, seed)
    none = torch.zeros(x.shape[0], dtype=torch.bool)
    if not spec.synthetic and len(dup):  # oversample
        idx = torch.from_numpy(np.concatenate([np.arange(x.shape[0]), dup]))
        return x[idx], y[idx], torch.zeros(idx.shape[0], dtype=torch.bool), opts, {}
    if not spec.synthetic:
        return x, y, none, opts, {}
    if acgan is None:
        raise ConfigError(f"arm {arm!r} needs a trained feature ACGAN")
    plan = {k: n_syn[c] for k, c in enumerate(class_names) if n_syn[c] > 0}
    if filter_generated:
        xs, ys, stats = generate_filtered(acgan.generate, acgan.classify, plan, seed=seed, max_factor=max_factor)
    else:
        g = torch.Generator().manual_seed(seed)
        ys = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in plan.items()] or [torch.zeros(0).long()])
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
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
    """Every arm x seed on (raw) features (:func:`~medbalance.experiments.downstream.run_arms`): (results, arm
    training sets, generation stats per arm and seed)."""
    from medbalance.training.task import predict_classifier, train_feature_classifier

    check_arms(cfg.arms, feature_arm)
    ccfg = stage_configs(cfg)[2]
    mean = train[0].mean(dim=(0, 2, 3), keepdim=True)
    std = train[0].std(dim=(0, 2, 3), keepdim=True)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    xv, xt, yt = (val[0] - mean) / std, (test[0] - mean) / std, test[1].numpy()
    generation: dict[str, Any] = {}

    def counts(y: torch.Tensor) -> dict[str, int]:
        return {c: int(v) for c, v in zip(class_names, np.bincount(y.numpy(), minlength=len(class_names)))}

    def train_one(arm: str, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        xa, ya, syn, opts, gstats = arm_feature_set(arm, *train, class_names, cfg.strategy, seed, acgan,
                                                    cfg.filter_generated, cfg.max_factor)
        if gstats:
            generation.setdefault(arm, {})[str(seed)] = gstats
        t0 = time.perf_counter()
        model, best_epoch, _ = train_feature_classifier((xa - mean) / std, ya, xv, val[1], len(class_names), ccfg,
                                                        seed, bool(opts.get("class_weights")), cfg.device)
        probs, pred = predict_classifier(model, xt, 512)  # feature maps are small: large batches
        m = classification_metrics(yt, probs, class_names)
        correct = (pred.numpy() == yt).astype(int).tolist()
        m.update(per_case_correct=correct, seed=seed, arm=arm, best_epoch=int(best_epoch),
                 train_seconds=round(time.perf_counter() - t0, 2), n_synthetic=int(syn.sum()))
        return m, {"n": int(xa.shape[0]), "class_counts": counts(ya), "synthetic": int(syn.sum()),
                   "synthetic_class_counts": counts(ya[syn]), **opts}

    results, comps = run_arms(cfg.arms, cfg.seeds, train_one, "feature classifier", cfg.progress)
    return results, comps, generation


# ---------------------------------------------------------------------------------------------- pipeline
def run_feature_augment(
    data: ImageDataset, cfg: FeatureAugmentConfig, out_dir: str | Path, segmentor: str | Path | None = None,
) -> dict[str, Any]:
    """The whole pipeline; writes OUT/segmentor, OUT/features, OUT/acgan, OUT/feature_downstream.json."""
    check_arms(cfg.arms, feature_arm)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or before)
    try:
        return _run_feature_augment(data, cfg, Path(out_dir), segmentor)
    finally:
        torch.set_num_threads(before)


def _run_feature_augment(data: ImageDataset, cfg: FeatureAugmentConfig, out: Path,
                         segmentor: str | Path | None) -> dict[str, Any]:
    from medbalance.models.feature_acgan import FeatureACGAN, class_accuracy, generated_class_accuracy
    from medbalance.models.tasknets import load_task_model
    from medbalance.synthesis.features import extract_to_store
    from medbalance.training.task import evaluate_task_model, train_feature_acgan, train_task_model
    from medbalance.utils.device import select_device

    seg_cfg, ac_cfg, cl_cfg = stage_configs(cfg)  # every stage's config validated before any work
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    split = make_split(data, cfg)
    warnings = small_class_warnings(split, "slices")
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
    train_feature_acgan(acgan, train_f[0], train_f[1])
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
    results, comps, generation = run_feature_downstream(train_f[:2], val_f[:2], test_f[:2], data.class_names, cfg,
                                                        acgan)
    timings["classifier"] = round(time.perf_counter() - t0, 1)
    for arm, per in generation.items():
        for s, st in per.items():
            short = {c: v["shortfall"] for c, v in st.items() if v["shortfall"]}
            if short:
                warnings.append(f"{arm} seed {s}: the filter could not fill the quota {short} "
                                "(D rejects those classes)")
    report = experiment_report(
        {**cfg.model_dump(mode="json"), "task": "classification"}, split, results, comps, test_f[1].numpy(), warnings,
        t_all, ["features = bottleneck of a segmentation U-Net trained on the training split only",
                "feature classifier selected on real validation features, tested on real test features",
                "one split for every arm and seed; seeds change classifier initialisation, data order and generation"],
        feature_augment={
            "data": data.meta.get("path"),
            "image_shape": [data.channels, *data.spatial_shape],
            "feature_shape": list(store.feature_shape),
            "features_nonnegative": store.nonnegative,
            "segmentor": seg_info,
            "acgan": {**acgan_eval, "config": ac_cfg.model_dump(mode="json"),
                      "final_epoch": acgan.history[-1] if acgan.history else None},
            "generation": generation,
            "classifier": cl_cfg.model_dump(mode="json"),
            "timings_seconds": timings,
            "torch_threads": torch.get_num_threads(),
            "groups_per_split": None if data.groups is None else
            {k: sorted(set(getattr(split, k).groups or [])) for k in ("train", "val", "test")},
        },
        paper_reference=PAPER_REFERENCE)
    atomic_write_json(out / "feature_downstream.json", report)
    return report

