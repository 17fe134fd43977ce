"""Downstream utility: does adding synthetic images help a classifier / segmentor on *real* test data?

One experiment = one real train/validation/test split (seeded, stratified, patient-grouped), the same for
every arm and every seed; per seed, every arm trains a task network from the same initialisation seed, selects
its epoch on real validation data and is tested on real test data only. The feature-level experiment
(:mod:`medbalance.experiments.feature_downstream`) runs its arms through the same helpers.

Arms (grammar: :class:`ArmSpec`; what each changes: :func:`arm_plan`): ``real`` (baseline); ``oversample`` (real
images duplicated to the balanced counts); ``class-weight`` (inverse-frequency loss weights); ``augment`` (flips,
rotations, small affine); ``real+synthetic`` (synthetic images up to balance, ``strategy`` in imbalanced-learn
semantics; ``@R``: R x real per class, Red-GAN's 50/100/200 %); ``synthetic-only`` (as many synthetic images per
class as the balanced arm has, Shin et al.'s anonymisation use); ``synthetic-pretrain+finetune``.

**Leakage guard**: the generator's run records which sample ids it was trained on; the experiment refuses to
run when any test id (or, with ``allow_val_overlap=False``, validation id) was seen by the generator.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
from pydantic import Field

from medbalance.config import BaseConfig
from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.evaluation.stats import min_attainable_p, paired_wilcoxon, summarize
from medbalance.training.metrics import classification_metrics, segmentation_metrics
from medbalance.utils.io import atomic_write_json
from medbalance.utils.progress import make_progress

PRETRAIN_ARM = "synthetic-pretrain+finetune"  # Shin et al.: train on synthetic only, then fine-tune on real
BASE_ARMS = ("real", "oversample", "class-weight", "augment", "real+synthetic", "synthetic-only", PRETRAIN_ARM)


class ExperimentConfig(BaseConfig):
    """What the image and feature experiments share: the split (:func:`make_split`), seeds, balancing strategy."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    subsample: dict[str, float] = Field(
        default_factory=dict, description="class -> fraction of its *training* images kept (e.g. meningioma: 0.1)"
    )
    near_duplicates: bool = Field(False, description="also keep near-duplicates (equal perceptual hash) on one side "
                                  "of the split (identical images always are)")
    strategy: Any = Field("auto", description="sampling strategy of the balanced synthetic arm (imbalanced-learn)")
    device: str = "auto"


class DownstreamConfig(ExperimentConfig):
    task: Literal["classification", "segmentation"] = "classification"
    arms: list[str] = Field(default_factory=lambda: ["real", "oversample", "class-weight", "real+synthetic"])
    mask_source: str = "real"
    mask_pool: Literal["auto", "same_class", "any"] = Field(
        "auto", description="label maps for the generator: of the requested class, or of any class; auto = any for "
        "Red-GAN conditioned on the class (as in the paper), else same_class"
    )
    target: Literal["label", "condition"] = Field(
        "label", description="what the generator arms rebalance: the class, or the condition column (site)"
    )
    allow_val_overlap: bool = Field(True, description="allow the generator to have seen validation ids (warned)")
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    arch: Optional[str] = None
    precision: str = "auto"
    fidelity: bool = Field(True, description="also measure fidelity, diversity and privacy (pixel features; held-out "
                           "= validation split) of the first seed's synthetic images, the ones its arms train on")


@dataclass(frozen=True)
class ArmSpec:
    """A parsed arm name: ``BASE[@R | @Rx][+class-weight][|filter=NAME]``.

    - ``BASE``: one of :data:`BASE_ARMS`;
    - ``@R`` (``real+synthetic`` only): R x the real count of *every* class (Red-GAN's 50/100/200 %);
    - ``@Rx``: R x the real count of each class the strategy oversamples (the minority), capped at that class's
      balanced target; ``@1x`` adds as many synthetic as real images of the rare class;
    - ``+class-weight``: inverse-frequency class weights on the arm's (mixed) training set;
    - ``|filter=NAME``: synthetic images pass an acceptance filter first (:data:`ARM_FILTERS`).
    """

    name: str
    base: str
    ratio: float | None = None
    ratio_kind: str | None = None  # "all" (@R) | "minority" (@Rx)
    class_weight: bool = False
    filter: str | None = None

    @property
    def synthetic(self) -> bool:
        return self.base not in ("real", "oversample", "class-weight", "augment")


ARM_FILTERS = ("discriminator", "memorization")


_ARM_RE = re.compile(r"(?P<base>[a-z+-]+?)(?:@(?P<ratio>[0-9.]+)(?P<x>x?))?(?P<cw>\+class-weight)?"
                     r"(?:\|filter=(?P<filter>\w+))?")


def parse_arm(arm: str) -> ArmSpec:
    m = _ARM_RE.fullmatch(arm.strip())
    try:
        ratio = None if m is None or m["ratio"] is None else float(m["ratio"])
    except ValueError:
        m = None
    if m is None or m["base"] not in BASE_ARMS:
        raise ConfigError(f"unknown arm {arm!r}; allowed: {', '.join(BASE_ARMS)}, real+synthetic@R (R x every class), "
                          "real+synthetic@Rx (R x the minority), with optional +class-weight and |filter=NAME")
    kind = None if ratio is None else "minority" if m["x"] else "all"
    spec = ArmSpec(arm, m["base"], ratio, kind, bool(m["cw"]), m["filter"])
    if spec.filter is not None and spec.filter not in ARM_FILTERS:
        raise ConfigError(f"arm {arm!r}: unknown filter {spec.filter!r}; allowed: {', '.join(ARM_FILTERS)}")
    if ratio is not None and (ratio <= 0 or spec.base != "real+synthetic"):
        raise ConfigError(f"arm {arm!r}: a ratio applies to real+synthetic only and must be positive")
    if (spec.class_weight or spec.filter) and not spec.synthetic:
        raise ConfigError(f"arm {arm!r}: +class-weight and |filter= combine with a synthetic arm only")
    return spec


def check_arms(arms: list[str], parse: Callable[[str], ArmSpec] = parse_arm) -> None:
    """Every arm parses (with ``parse``: the feature experiment's restricted grammar) and ``real`` is one of them."""
    for a in arms:
        parse(a)
    if "real" not in arms:
        raise ConfigError("the arms must include 'real' (every other arm is compared with it)")


# ---------------------------------------------------------------------------------------------- data per arm
@dataclass
class Split:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    indices: dict[str, list[int]] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)  # identical-image groups kept on one side


def make_split(data: ImageDataset, cfg: ExperimentConfig) -> Split:
    from medbalance.data.splits import stratified_split, subsample_class

    dup_stats: dict[str, int] = {}
    parts = stratified_split(data, fractions=cfg.fractions, seed=cfg.split_seed, group_duplicates=True,
                             near_duplicates=cfg.near_duplicates, stats=dup_stats)
    train_idx = np.asarray(parts["train"])
    for cls, frac in cfg.subsample.items():
        if cls not in data.class_names:
            raise ConfigError(f"--subsample: unknown class {cls!r}; classes are {', '.join(data.class_names)}")
        if not 0 < frac <= 1:
            raise ConfigError(f"--subsample {cls}={frac}: the fraction must be in (0, 1]")
        train_idx = subsample_class(train_idx, data.labels.numpy(), data.class_names.index(cls), frac, cfg.split_seed)
    idx = {"train": train_idx.tolist(), **{k: np.asarray(parts[k]).tolist() for k in ("val", "test")}}
    return Split(data.subset(idx["train"]), data.subset(idx["val"]), data.subset(idx["test"]), idx, dup_stats)


def leakage_guard(run: Any, split: Split, allow_val_overlap: bool = True) -> list[str]:
    """Refuse when the generator saw any test id; return warnings (validation overlap)."""
    return check_seen_ids(getattr(run, "train_ids", None), split, allow_val_overlap, path=getattr(run, "run_dir", None))


def check_seen_ids(seen_ids: Any, split: Split, allow_val_overlap: bool = True, *, model: str = "generator",
                   unit: str = "samples", path: Any = None) -> list[str]:
    """The leakage check of any model trained on real data (the generator, the feature method's segmentor): refuse
    when it records no training ids or saw a test id; validation overlap is a warning (an error unless
    ``allow_val_overlap``)."""
    seen = set(seen_ids or [])
    if not seen:
        raise DataError(f"the {model} records no training ids, so leakage cannot be ruled out; retrain it with "
                        "medbalance", path=path)
    bad = sorted(seen & set(split.test.ids))
    if bad:
        raise DataError(
            f"leakage: the {model} was trained on {len(bad)} of the {len(split.test)} test {unit} "
            f"(e.g. {', '.join(bad[:3])}); train it on the experiment's training split only", path=path)
    val_bad = seen & set(split.val.ids)
    if not val_bad:
        return []
    msg = f"the {model} saw {len(val_bad)} validation {unit} (model selection may be optimistic)"
    if not allow_val_overlap:
        raise DataError("leakage: " + msg, path=path)
    return [msg]


def align_synthetic_classes(syn: ImageDataset, class_names: list[str], path: Any = None) -> ImageDataset:
    """Relabel a synthetic set to the real data's class list. A real class it lacks simply gets no synthetic
    images; a class the real data does not have is refused (one line)."""
    if list(syn.class_names) == list(class_names):
        return syn
    present = sorted(set(syn.labels.tolist()))
    extra = [syn.class_names[i] for i in present if syn.class_names[i] not in class_names]
    if extra:
        raise DataError(f"the synthetic set has classes the real data lacks: {', '.join(extra)} "
                        f"(real classes: {', '.join(class_names)})", path=path)
    mapping = torch.tensor([class_names.index(c) if c in class_names else -1 for c in syn.class_names])
    out = syn.subset(range(len(syn)))
    out.labels = mapping[syn.labels]
    out.class_names = list(class_names)
    return out


def oversample_indices(labels: Any, target: dict[int, int], seed: int) -> np.ndarray:
    """Indices of real samples to duplicate (random, with replacement) so that class ``k`` reaches ``target[k]``
    samples in total; classes are drawn in ``target``'s order from one ``default_rng(seed)``. Empty when no class
    needs more (or a class has no sample to duplicate)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    extra = []
    for k, total in target.items():
        idx = np.flatnonzero(labels == k)
        need = int(total) - len(idx)
        if need > 0 and len(idx):
            extra.append(rng.choice(idx, size=need, replace=True))
    return np.concatenate(extra) if extra else np.zeros(0, dtype=np.int64)


def with_duplicates(train: ImageDataset, extra: np.ndarray) -> ImageDataset:
    """``train`` plus copies of its samples ``extra`` (ids ``ID#dupJ``): the ``oversample`` arm of images."""
    if not len(extra):
        return train
    dup = train.subset(extra)
    dup.ids = [f"{i}#dup{j}" for j, i in enumerate(dup.ids)]
    return train.concat(dup)


def class_targets(labels: Any, class_names: list[str], strategy: Any) -> dict[str, int]:
    """Per-class totals after balancing ``labels`` (class indices): the real count plus what
    :func:`~medbalance.synthesis.strategy.plan_sampling` adds for ``strategy`` (imbalanced-learn semantics)."""
    from medbalance.synthesis.strategy import plan_sampling

    labels = np.asarray(labels, dtype=np.int64)
    plan = plan_sampling([class_names[i] for i in labels.tolist()], strategy)
    counts = np.bincount(labels, minlength=len(class_names))
    return {c: int(counts[k]) + int(plan.get(c, 0)) for k, c in enumerate(class_names)}


def balanced_targets(train: ImageDataset, strategy: Any) -> dict[str, int]:
    """:func:`class_targets` of a training set."""
    return class_targets(train.labels.numpy(), train.class_names, strategy)


# ---------------------------------------------------------------------------------------------- experiment
def arm_synthetic_counts(spec: ArmSpec, train: ImageDataset, targets: dict[str, int]) -> dict[str, int]:
    """How many synthetic images of each class the arm ``spec`` adds (or, synthetic-only, trains on)."""
    return synthetic_counts(spec, train.class_counts(), targets)


def synthetic_counts(spec: ArmSpec, counts: dict[str, int], targets: dict[str, int]) -> dict[str, int]:
    """:func:`arm_synthetic_counts` from the real per-class ``counts`` (image and feature arms alike)."""
    if spec.base in ("synthetic-only", PRETRAIN_ARM):
        return {c: int(targets[c]) for c in counts}
    if spec.ratio_kind == "all":
        return {c: int(round(spec.ratio * n)) for c, n in counts.items()}
    extra = {c: max(int(targets[c]) - n, 0) for c, n in counts.items()}
    if spec.ratio_kind == "minority":  # R x the real count of each oversampled class, at most up to balance
        return {c: min(int(round(spec.ratio * counts[c])), e) if e > 0 else 0 for c, e in extra.items()}
    return extra


def arm_plan(spec: ArmSpec, labels: Any, class_names: list[str], strategy: Any, seed: int
             ) -> tuple[dict[str, Any], np.ndarray, dict[str, int]]:
    """What an arm does to a real training set with these ``labels`` (class indices), for images and features
    alike: (task options, indices of real samples to duplicate, synthetic samples per class)."""
    labels = np.asarray(labels, dtype=np.int64)
    opts = {"augment": True} if spec.base == "augment" else (
        {"class_weights": True} if spec.base == "class-weight" or spec.class_weight else {})
    none = np.zeros(0, dtype=np.int64)
    if spec.base in ("real", "class-weight", "augment"):
        return opts, none, {}
    targets = class_targets(labels, class_names, strategy)
    if spec.base == "oversample":
        return opts, oversample_indices(labels, dict(enumerate(targets.values())), seed), {}
    counts = dict(zip(class_names, np.bincount(labels, minlength=len(class_names)).tolist()))
    return opts, none, synthetic_counts(spec, counts, targets)


@dataclass
class SyntheticSource:
    """Where synthetic training images come from: a trained generator run, or a fixed synthetic dataset.

    With a run, the images of one seed are generated **once** as a pool (per acceptance filter) holding, per class,
    as many images as the most demanding arm needs; every arm of that seed takes the first images of each class from
    it. With ``cache_dir`` the pools are saved there (safetensors + JSON: seed, filter, counts, generator checkpoint
    digest) and listed in the experiment's JSON, so fidelity, privacy and utility can be measured on the same
    images, and a resumed experiment reuses them."""

    run: Any = None  # a loaded run, or {class: run} trained on that class only (per-class runs)
    dataset: ImageDataset | None = None
    provenance: dict[str, Any] | None = None  # --synthetic: read_provenance(manifest) (the generator's training ids)
    allow_unverified: bool = False  # --allow-unverified-synthetic
    path: Any = None
    missing: set[str] = field(default_factory=set)  # real classes the synthetic set has no images of
    mask_pool: str = "auto"  # run_downstream sets these three from DownstreamConfig
    target: str = "label"
    strategy: Any = "auto"
    cache_dir: Path | None = None
    pools: dict[tuple[int, str], ImageDataset] = field(default_factory=dict)
    pool_files: dict[str, str] = field(default_factory=dict)  # "seed0/none" -> file name in cache_dir
    sampler_info: dict[str, Any] = field(default_factory=dict)  # "seed0/none" -> (provenance rows, synthesis report)

    # ------------------------------------------------------------------ pools (generator runs)
    def _filters(self, name: str | None, split: Split) -> list[Any]:
        from medbalance.synthesis.filters import DiscriminatorFilter, MemorizationGate

        if name is None:
            return []
        if isinstance(self.run, dict):
            raise ConfigError(f"filter {name!r} needs one class-conditional run, not per-class runs")
        if name == "discriminator":
            return [DiscriminatorFilter(self.run.method)]
        # memorization: held-out = the validation split (never seen by the generator)
        return [MemorizationGate(split.train.images, split.val.images)]

    def _digest(self) -> str:
        runs = self.run.values() if isinstance(self.run, dict) else [self.run]
        return ",".join(str(getattr(r, "checkpoint_sha256", "")) for r in runs)

    def pool(self, split: Split, need: dict[str, int], seed: int, mask_source: str, filter_name: str | None
             ) -> ImageDataset:
        """Seed ``seed``'s images of one filter (None: unfiltered), at least ``need[c]`` of each class ``c``: generated
        once, or read from ``cache_dir`` when saved there by the same generator."""
        from medbalance.synthesis.oversampler import GenerativeOverSampler

        key, train = (seed, filter_name or "none"), split.train
        if key in self.pools:
            return self.pools[key]
        name = f"seed{seed}/{key[1]}"
        path = None if self.cache_dir is None else Path(self.cache_dir) / f"seed{seed}-{key[1]}.safetensors"
        ds = _load_pool(path, train, self._digest(), need) if path is not None and path.is_file() else None
        if ds is None:
            counts = train.class_counts()
            strat = {c: counts[c] + n for c, n in need.items() if n > 0}
            if strat:
                s = GenerativeOverSampler(self.run, sampling_strategy=strat, mask_source=mask_source,
                                          random_state=seed, progress=False, mask_pool=self.mask_pool, target="label",
                                          filters=self._filters(filter_name, split)).fit(train)
                ds = s.sample()
                self.sampler_info[name] = (s.provenance_, s.report_)
            else:
                ds = train.subset([])
                ds.synthetic = torch.zeros(0, dtype=torch.bool)
            if path is not None:
                _save_pool(path, ds, seed, key[1], self._digest())
        if path is not None:
            self.pool_files[name] = path.name
        self.pools[key] = ds
        return ds

    def take(self, split: Split, spec: ArmSpec, counts: dict[str, int], seed: int, mask_source: str,
             need: dict[str, int] | None = None) -> ImageDataset:
        """The synthetic images of one arm: ``counts[c]`` images of each class ``c``."""
        train = split.train
        if self.run is not None and self.target == "condition":  # plan by site: generated per arm
            from medbalance.synthesis.oversampler import GenerativeOverSampler

            kw: dict[str, Any] = {"mask_source": mask_source, "random_state": seed, "progress": False,
                                  "mask_pool": self.mask_pool, "target": self.target}
            if spec.ratio_kind == "all":
                kw.update(ratio=spec.ratio)
            else:
                kw.update(sampling_strategy=self.strategy)
            return GenerativeOverSampler(self.run, **kw).fit(train).sample()
        if self.run is not None:  # the first images of each class of this seed's pool
            syn, rng = self.pool(split, need or counts, seed, mask_source, spec.filter), None
        elif self.dataset is None:
            raise ConfigError("this arm needs synthetic data: give a generator run (--run) or a synthetic manifest")
        elif spec.filter:
            raise ConfigError(f"arm {spec.name!r}: filters apply to a generator run, not to a fixed synthetic set")
        else:  # a random draw from the fixed set
            syn, rng = self.dataset, np.random.default_rng(seed)
        labels, take = syn.labels.numpy(), []
        for c, n in counts.items():
            idx = np.flatnonzero(labels == syn.class_names.index(c)) if c in syn.class_names else np.zeros(0, int)
            if rng is not None and len(idx) == 0 and n > 0:  # the set has no images of this class: it gets none
                self.missing.add(c)
                continue
            if n > len(idx):  # a pool holds what every arm needs, unless its filter rejected too many
                what = "set" if rng is not None else f"pool of seed {seed} (after its filter)"
                raise DataError(f"the synthetic {what} has {len(idx)} images of class {c!r}, {n} needed")
            take.append(idx[:n] if rng is None else rng.choice(idx, size=n, replace=False))
        return syn.subset(np.concatenate(take) if take else np.zeros(0, dtype=np.int64))


def _save_pool(path: Path, ds: ImageDataset, seed: int, filter_name: str, digest: str) -> None:
    from medbalance.utils.io import save_safetensors

    tensors = {k: v for k, v in (("images", ds.images.contiguous()), ("labels", ds.labels), ("masks", ds.masks),
                                 ("conditions", ds.conditions)) if v is not None}
    save_safetensors(path, tensors, {"seed": seed, "filter": filter_name, "generator_checkpoints": digest,
                                     "ids": list(ds.ids), "class_counts": ds.class_counts(),
                                     "class_names": list(ds.class_names)})


def _load_pool(path: Path, like: ImageDataset, digest: str, need: dict[str, int]) -> ImageDataset | None:
    """A saved pool, or None when it belongs to another generator or holds fewer images than needed."""
    from medbalance.utils.io import load_safetensors

    t, meta = load_safetensors(path)
    if meta.get("generator_checkpoints") != digest or meta.get("class_names") != list(like.class_names):
        return None
    have = meta.get("class_counts") or {}
    if any(int(have.get(c, 0)) < n for c, n in need.items()):
        return None
    n = len(t["labels"])
    return ImageDataset(
        images=t["images"], labels=t["labels"].long(), class_names=list(like.class_names), ids=list(meta["ids"]),
        masks=t.get("masks"), mask_values=like.mask_values if "masks" in t else None,
        conditions=t.get("conditions"), condition_names=like.condition_names if "conditions" in t else None,
        groups=list(meta["ids"]), intensity=like.intensity, meta={"source": "synthetic pool", "path": str(path)},
        synthetic=torch.ones(n, dtype=torch.bool),
    )


def pool_needs(arms: list[str], train: ImageDataset, strategy: Any) -> dict[str | None, dict[str, int]]:
    """Per acceptance filter (None = unfiltered): the most images of each class any arm takes from the pool."""
    targets = balanced_targets(train, strategy)
    out: dict[str | None, dict[str, int]] = {}
    for a in arms:
        spec = parse_arm(a)
        if not spec.synthetic:
            continue
        counts = arm_synthetic_counts(spec, train, targets)
        cur = out.setdefault(spec.filter, {c: 0 for c in train.class_names})
        for c, n in counts.items():
            cur[c] = max(cur[c], n)
    return out


def arm_training_set(arm: str, split: Split, cfg: DownstreamConfig, seed: int, source: SyntheticSource | None
                     ) -> tuple[ImageDataset, dict[str, Any]]:
    """The training set of one arm and the task options it changes (for synthetic-pretrain+finetune: the
    pre-training set)."""
    spec = parse_arm(arm)
    train = split.train
    opts, dup, counts = arm_plan(spec, train.labels.numpy(), train.class_names, cfg.strategy, seed)
    if not spec.synthetic:
        return with_duplicates(train, dup), opts
    if source is None:
        raise ConfigError(f"arm {arm!r} needs synthetic data: give a generator run (--run) or --synthetic MANIFEST")
    need = pool_needs(cfg.arms, train, cfg.strategy).get(spec.filter) or counts
    syn = _without(source.take(split, spec, counts, seed, cfg.mask_source, need), masks=train.masks is None,
                   conditions=train.conditions is None)
    if spec.base in ("synthetic-only", PRETRAIN_ARM):
        return syn, opts
    if syn.masks is None and train.masks is not None:  # a generator without label maps (classification only)
        if cfg.task == "segmentation":
            raise ConfigError(f"arm {arm!r}: the synthetic images have no label maps, segmentation needs them")
        train = _without(train, masks=True)
    return train.concat(syn), opts


def _without(ds: ImageDataset, masks: bool = False, conditions: bool = False) -> ImageDataset:
    """``ds`` without its label maps and / or conditions (a copy when it has any to drop)."""
    masks, conditions = masks and ds.masks is not None, conditions and ds.conditions is not None
    if not (masks or conditions):
        return ds
    out = ds.subset(range(len(ds)))
    if masks:
        out.masks, out.mask_values = None, None
    if conditions:
        out.conditions, out.condition_names = None, None
    return out


def _test_metrics(model: Any, test: ImageDataset, task: str, data: ImageDataset) -> dict[str, Any]:
    """Metrics of one trained task model on the test set, overall and per site when the data has sites."""
    from medbalance.training.task import predict_classifier, predict_segmentor

    if task == "classification":
        probs = np.asarray(predict_classifier(model, test)[0])
        y = test.labels.numpy()
        m = classification_metrics(y, probs, data.class_names)
        m["per_case_correct"] = (probs.argmax(1) == y).astype(int).tolist()
    else:
        pred = np.asarray(predict_segmentor(model, test))
        anatomy = data.meta.get("anatomy_values")
        m = segmentation_metrics(pred, test.masks.numpy(), list(data.mask_values), anatomy,
                                 test.labels.numpy(), data.class_names)
    if test.conditions is not None and test.condition_names:
        m["per_site"] = {}
        cond = test.conditions.numpy()
        for k, site in enumerate(test.condition_names):
            sel = np.flatnonzero(cond == k)
            if len(sel) and task == "classification":
                sm = classification_metrics(y[sel], probs[sel], data.class_names)
                m["per_site"][site] = {"n": len(sel), "balanced_accuracy": sm["balanced_accuracy"],
                                       "macro_f1": sm["macro_f1"],
                                       "recall": {c: v["recall"] for c, v in sm["per_class"].items()}}
            elif len(sel):
                dice = np.asarray(m["per_case_dice_foreground"])[sel]
                m["per_site"][site] = {"n": len(sel), "dice_foreground": float(np.mean(dice))}
    return m


def train_arm(arm: str, split: Split, cfg: DownstreamConfig, seed: int, source: SyntheticSource | None,
              data: ImageDataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and test one arm for one seed: (test metrics, the arm's training-set composition)."""
    from medbalance.training.task import TaskConfig, train_task_model

    pretrain = parse_arm(arm).base == PRETRAIN_ARM
    train_set, opts = arm_training_set(arm, split, cfg, seed, source)
    comp: dict[str, Any] = {"n": len(train_set), "class_counts": train_set.class_counts(),
                            "synthetic": int(train_set.is_synthetic().sum()), **opts}
    if pretrain:  # pre-trained on the synthetic set, then fine-tuned on the real training set
        comp = {"pretrain": comp, "finetune": {"n": len(split.train), "class_counts": split.train.class_counts(),
                                               "synthetic": 0}}
    tcfg = TaskConfig(**{
        "task": cfg.task, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "seed": seed, "device": cfg.device, "precision": cfg.precision, "augment": False,
        "progress": False, **({"arch": cfg.arch} if cfg.arch else {}), **opts,
    })
    t0 = time.perf_counter()
    res = train_task_model(train_set, split.val, tcfg)
    if pretrain:  # the same epochs budget on real data as every other arm
        res = train_task_model(split.train, split.val, tcfg.model_copy(update={"class_weights": False}),
                               init_model=res.model)
    train_s = time.perf_counter() - t0
    m = _test_metrics(res.model, split.test, cfg.task, data)
    m.update(seed=seed, arm=arm, best_epoch=int(res.best_epoch), train_seconds=round(train_s, 2))
    return m, comp


def prepare_source(source: SyntheticSource | None, split: Split, cfg: DownstreamConfig, out_dir: str | Path
                   ) -> list[str]:
    """Ready ``source`` for the experiment and run the leakage guard (returns its warnings). A run gets the config's
    mask pool, target and strategy and caches its pools in ``out_dir/synthetic``. A fixed set (``--synthetic``) gets
    the real classes; without provenance it is refused, unless ``source.allow_unverified`` (then a warning)."""
    if source is not None and source.run is not None:
        source.mask_pool, source.target, source.strategy = cfg.mask_pool, cfg.target, cfg.strategy
        source.cache_dir = source.cache_dir or Path(out_dir) / "synthetic"
        runs = source.run.values() if isinstance(source.run, dict) else [source.run]
        return [w for r in runs for w in leakage_guard(r, split, cfg.allow_val_overlap)]
    if source is None or source.dataset is None:
        return []
    msg = ("the synthetic set carries no training-ids provenance (provenance.json / train_ids_sha256), so "
           "leakage into the test split cannot be ruled out")
    if source.provenance is None and not source.allow_unverified:
        raise DataError(msg + "; export it with medbalance rebalance/generate, or pass --allow-unverified-synthetic",
                        path=source.path)
    warnings = (["UNVERIFIED synthetic set (--allow-unverified-synthetic): " + msg] if source.provenance is None else
                check_seen_ids(source.provenance["train_ids"], split, cfg.allow_val_overlap, path=source.path))
    source.dataset = align_synthetic_classes(source.dataset, list(split.train.class_names), source.path)
    return warnings


def small_class_warnings(split: Split, unit: str = "images") -> list[str]:
    return [f"class {c!r} has only {n} training {unit}" for c, n in split.train.class_counts().items() if n < 10]


def run_arms(arms: list[str], seeds: list[int], train_one: Callable[[str, int], tuple[dict[str, Any], Any]],
             label: str, progress: bool = True) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Every arm for every seed, seed by seed: ``train_one(arm, seed)`` -> (test metrics, training-set composition).
    Returns the metrics per arm and each arm's composition (of the first seed)."""
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    compositions: dict[str, Any] = {}
    with make_progress(enabled=progress) as bar:
        task = bar.add_task(label, total=len(arms) * len(seeds))
        for seed in seeds:
            for arm in arms:
                bar.update(task, description=f"{label} seed {seed} · {arm}")
                m, comp = train_one(arm, seed)
                compositions.setdefault(arm, comp)
                results[arm].append(m)
                bar.advance(task)
    return results, compositions


def experiment_report(config: dict[str, Any], split: Split, results: dict[str, list[dict[str, Any]]],
                      compositions: dict[str, Any], test_labels: np.ndarray, warnings: list[str], t_start: float,
                      notes: list[str], **extra: Any) -> dict[str, Any]:
    """The JSON of an experiment (``downstream.json``, ``feature_downstream.json``): config, split, per-arm
    training sets, results and :func:`summarize_arms`, warnings, ``extra`` sections, seconds since ``t_start``."""
    class_names = list(split.train.class_names)
    return {
        "config": config, "task": config["task"], "class_names": class_names,
        "split": {k: len(v) for k, v in split.indices.items()},
        "split_class_counts": {k: getattr(split, k).class_counts() for k in ("train", "val", "test")},
        "test_ids": list(split.test.ids), "arm_training_sets": compositions, "results": results,
        "summary": summarize_arms(results, config["task"], class_names, test_labels),
        "warnings": warnings, **extra, "seconds": round(time.perf_counter() - t_start, 1), "notes": notes,
    }


def run_downstream(
    data: ImageDataset, cfg: DownstreamConfig, out_dir: str | Path, source: SyntheticSource | None = None,
    split: Split | None = None,
) -> dict[str, Any]:
    """Run every arm for every seed; write ``downstream.json`` into ``out_dir`` and return it.

    ``split``: the experiment's split when the caller already drew it (``make_split(data, cfg)``); drawn here
    otherwise. A generator's synthetic images are generated once per seed and saved in ``out_dir/synthetic``."""
    check_arms(cfg.arms)
    if cfg.task == "segmentation" and data.masks is None:
        raise DataError("segmentation needs label maps, the dataset has none", path=data.meta.get("path"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = split if split is not None else make_split(data, cfg)
    warnings = prepare_source(source, split, cfg, out_dir) + small_class_warnings(split)
    t_start = time.perf_counter()
    results, compositions = run_arms(cfg.arms, cfg.seeds, lambda arm, seed: train_arm(arm, split, cfg, seed, source,
                                                                                       data), "downstream")
    evaluation = evaluate_synthetic(source, split, cfg) if cfg.fidelity and source is not None else None
    if evaluation is not None:
        atomic_write_json(out_dir / "evaluation.json", evaluation)
    if source is not None and source.missing:
        warnings.append(f"the synthetic set has no images of class(es) {', '.join(sorted(source.missing))}: "
                        "those classes got no synthetic images")
    report = experiment_report(
        cfg.model_dump(mode="json"), split, results, compositions, split.test.labels.numpy(), warnings, t_start,
        ["model selection on real validation data only; test on real test data only",
         "one split for every arm and seed; seeds change initialisation, data order and generation"],
        synthetic_provenance=_provenance_summary(source), synthetic_sets=synthetic_sets_summary(source),
        evaluated_synthetic_set=None if evaluation is None else evaluation["synthetic_set"],
        duplicates=dict(split.duplicates))
    atomic_write_json(out_dir / "downstream.json", report)
    return report


def evaluate_synthetic(source: SyntheticSource, split: Split, cfg: DownstreamConfig, extractor: str = "pixels",
                       extractor_options: dict[str, Any] | None = None, **options: Any) -> dict[str, Any] | None:
    """Fidelity, diversity, image statistics and privacy of the synthetic images the first seed's arms used (its
    unfiltered pool; a fixed synthetic set: the whole set), against the real training split, with the validation
    split as held-out real images for privacy; ``options`` go to ``evaluate_datasets`` (``montage_path``,
    ``ms_ssim_pairs``, ``seed``). None when no synthetic image was used."""
    from medbalance.evaluation.evaluate import evaluate_datasets

    seed = cfg.seeds[0]
    if source.run is not None:
        key = (seed, "none") if (seed, "none") in source.pools else next((k for k in sorted(source.pools)
                                                                             if k[0] == seed), None)
        if key is None:
            return None
        syn, what = source.pools[key], f"pool seed{key[0]}/{key[1]} ({source.pool_files.get(f'seed{key[0]}/{key[1]}')})"
    elif source.dataset is not None:
        syn, what = source.dataset, f"the synthetic set {source.path}"
    else:
        return None
    if len(syn) < 2:
        return None
    ev = evaluate_datasets(real=split.train, synthetic=syn, extractor=extractor,
                           extractor_options={"size": 16} if extractor_options is None else extractor_options,
                           per_class=True, privacy_train=split.train, privacy_holdout=split.val, use_cache=False,
                           **{"seed": seed, "ms_ssim_pairs": 100, "kid_subset_size": min(1000, len(syn)), **options})
    ev["privacy_holdout"] = "validation split (never seen by the generator)"
    ev["synthetic_set"] = {"what": what, "n": len(syn), "seed": seed,
                           "statement": f"fidelity, privacy and the utility of seed {seed} were measured on the same "
                                        f"{len(syn)} synthetic images: {what}"}
    return ev


def synthetic_sets_summary(source: SyntheticSource | None) -> dict[str, Any] | None:
    """The synthetic pools the arms drew from (seed/filter -> file and per-class counts)."""
    if source is None or not source.pools:
        return None
    out = {}
    for (seed, flt), ds in sorted(source.pools.items()):
        key = f"seed{seed}/{flt}"
        info = source.sampler_info.get(key) if flt != "none" else None
        out[key] = {"file": source.pool_files.get(key), "n": len(ds), "class_counts": ds.class_counts(),
                    "filter_report": None if info is None else info[1].to_dict()}
    return {"folder": None if source.cache_dir is None else str(source.cache_dir), "pools": out,
            "note": "each seed's images are generated once; every arm of that seed takes the first images of each "
                    "class from its pool"}


def _provenance_summary(source: SyntheticSource | None) -> dict[str, Any] | None:
    if source is None:
        return None
    if isinstance(source.run, dict):  # per-class runs
        return {"kind": "per-class runs", "verified": True,
                "n_train_ids": len({i for r in source.run.values() for i in (getattr(r, "train_ids", []) or [])}),
                "checkpoint_sha256": {c: getattr(r, "checkpoint_sha256", "") for c, r in source.run.items()}}
    if source.run is not None:
        return {"kind": "run", "verified": True, "n_train_ids": len(getattr(source.run, "train_ids", []) or []),
                "checkpoint_sha256": getattr(source.run, "checkpoint_sha256", "")}
    prov = source.provenance
    return {"kind": "manifest", "path": None if source.path is None else str(source.path), "verified": prov is not None,
            "train_ids_sha256": None if prov is None else prov["train_ids_sha256"],
            "checkpoint_sha256": None if prov is None else prov.get("checkpoint_sha256"),
            "allow_unverified": bool(source.allow_unverified)}


def _path(*keys: str) -> Callable[[dict[str, Any]], Any]:
    """``r[k1][k2]...`` of a result ``r``; nan where a level is missing."""
    def get(r: Any) -> Any:
        for k in keys:
            r = r.get(k) if isinstance(r, dict) else None
        return float("nan") if r is None else r
    return get


def metric_table(task: str, class_names: list[str]) -> dict[str, Any]:
    """metric name -> function(result dict) -> float."""
    if task == "classification":
        table = {k: _path(k) for k in ("balanced_accuracy", "macro_f1", "auroc")}
        table.update({f"{k}/{c}": _path("per_class", c, k) for c in class_names
                      for k in ("recall", "precision", "f1", "specificity")})
        return table
    table = {"dice_foreground": _path("dice_foreground")}
    table.update({f"dice/{c}": _path("dice_per_class", c) for c in class_names})
    return {**table, **{f"brats/{k}": _path("brats", k) for k in ("WT", "TC", "ET")}}


def summarize_arms(
    results: dict[str, list[dict[str, Any]]], task: str, class_names: list[str], test_labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Mean, std, 95 % bootstrap CI per arm and metric; paired Wilcoxon of each arm vs ``real`` across seeds
    (and, for classification recall and segmentation Dice, across test cases)."""
    table = metric_table(task, class_names)
    base = results["real"]
    keys = [("balanced_accuracy",), *(("recall", c) for c in class_names)] if task == "classification" \
        else [("dice_foreground",)]
    for site in (base[0].get("per_site") or {}) if base else {}:  # per acquisition site, when the data has sites
        table.update({f"{'/'.join(k)}@{site}": _path("per_site", site, *k) for k in keys})
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
