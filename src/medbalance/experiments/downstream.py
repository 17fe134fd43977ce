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
    mask_pool: Literal["auto", "same_class", "any"] = Field(
        "auto", description="label maps for the generator: of the requested class, or of any class; auto = any for "
        "Red-GAN conditioned on the class (as in the paper), else same_class"
    )
    target: Literal["label", "condition"] = Field(
        "label", description="what the generator arms rebalance: the class, or the condition column (site)"
    )
    allow_val_overlap: bool = Field(True, description="allow the generator to have seen validation ids (warned)")
    near_duplicates: bool = Field(False, description="also keep near-duplicates (equal perceptual hash) on one side "
                                  "of the split (identical images always are)")
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    arch: Optional[str] = None
    device: str = "auto"
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


def parse_arm(arm: str) -> ArmSpec:
    rest = arm.strip()
    flt = None
    if "|" in rest:
        rest, _, f = rest.partition("|")
        if not f.startswith("filter=") or f[len("filter="):] not in ARM_FILTERS:
            raise ConfigError(f"arm {arm!r}: expected ...|filter=NAME with NAME one of {', '.join(ARM_FILTERS)}")
        flt = f[len("filter="):]
    cw = False
    if rest.endswith("+class-weight") and rest != "class-weight":
        rest, cw = rest[: -len("+class-weight")], True
    ratio = kind = None
    if "@" in rest:
        rest, _, r = rest.partition("@")
        kind = "minority" if r.endswith("x") else "all"
        try:
            ratio = float(r[:-1] if kind == "minority" else r)
        except ValueError:
            raise ConfigError(f"arm {arm!r}: expected real+synthetic@RATIO (every class) or @RATIOx (the minority), "
                              "e.g. real+synthetic@0.5 or real+synthetic@2x") from None
        if ratio <= 0:
            raise ConfigError(f"arm {arm!r}: the ratio must be positive")
        if rest != "real+synthetic":
            raise ConfigError(f"arm {arm!r}: a ratio applies to real+synthetic only")
    if rest not in BASE_ARMS:
        raise ConfigError(f"unknown arm {arm!r}; allowed: {', '.join(BASE_ARMS)}, real+synthetic@R, "
                          "real+synthetic@Rx, with optional +class-weight and |filter=NAME")
    spec = ArmSpec(arm, rest, ratio, kind, cw, flt)
    if (cw or flt) and not spec.synthetic:
        raise ConfigError(f"arm {arm!r}: +class-weight and |filter= combine with a synthetic arm only")
    return spec


def arm_ratio(arm: str) -> float | None:
    """R of ``real+synthetic@R`` (every class), else None."""
    spec = parse_arm(arm)
    return spec.ratio if spec.ratio_kind == "all" else None


def check_arms(arms: list[str]) -> None:
    for a in arms:
        parse_arm(a)
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


def make_split(data: ImageDataset, cfg: DownstreamConfig) -> Split:
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
        train_idx = subsample_class(train_idx, data.labels.numpy(), data.class_names.index(cls), frac, seed=cfg.split_seed)
    idx = {"train": train_idx.tolist(), "val": np.asarray(parts["val"]).tolist(), "test": np.asarray(parts["test"]).tolist()}
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


def synthetic_leakage_guard(source: SyntheticSource, split: Split, allow_val_overlap: bool = True) -> list[str]:
    """:func:`leakage_guard` for a fixed synthetic set (``--synthetic MANIFEST``): its provenance (the generator's
    training ids, ``provenance.json`` checked against the manifest's digest) must not contain a test id.
    Without provenance: refused, unless ``source.allow_unverified`` (then a warning that the report shows)."""
    prov = source.provenance
    if prov is None:
        msg = ("the synthetic set carries no training-ids provenance (provenance.json / train_ids_sha256), so "
               "leakage into the test split cannot be ruled out")
        if not source.allow_unverified:
            raise DataError(msg + "; export it with medbalance rebalance/generate, or pass "
                            "--allow-unverified-synthetic", path=source.path)
        return ["UNVERIFIED synthetic set (--allow-unverified-synthetic): " + msg]

    class _Seen:
        train_ids = prov["train_ids"]
        run_dir = source.path

    return leakage_guard(_Seen(), split, allow_val_overlap)


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


def oversample_dataset(train: ImageDataset, target: dict[str, int], seed: int) -> ImageDataset:
    """Random duplication of real samples up to ``target`` total per class (:func:`oversample_indices`)."""
    extra = oversample_indices(train.labels.numpy(), {train.class_names.index(c): n for c, n in target.items()}, seed)
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
    pool_files: dict[str, str] = field(default_factory=dict)  # "seed0/none" -> file (relative to cache_dir's parent)
    filter_reports: dict[str, Any] = field(default_factory=dict)
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
        if name == "memorization":  # held-out = the validation split (never seen by the generator)
            return [MemorizationGate(split.train.images, split.val.images)]
        raise ConfigError(f"unknown filter {name!r}; allowed: {', '.join(ARM_FILTERS)}")

    def _digest(self) -> str:
        runs = self.run.values() if isinstance(self.run, dict) else [self.run]
        return ",".join(str(getattr(r, "checkpoint_sha256", "")) for r in runs)

    def pool(self, split: Split, need: dict[str, int], seed: int, mask_source: str, filter_name: str | None
             ) -> ImageDataset:
        key = (seed, filter_name or "none")
        if key in self.pools:
            return self.pools[key]
        train = split.train
        path = None if self.cache_dir is None else Path(self.cache_dir) / f"seed{seed}-{key[1]}.safetensors"
        if path is not None and path.is_file():
            ds = _load_pool(path, train, self._digest(), need)
            if ds is not None:
                self.pools[key] = ds
                self.pool_files[f"seed{seed}/{key[1]}"] = path.name
                return ds
        from medbalance.synthesis.oversampler import GenerativeOverSampler

        counts = train.class_counts()
        strat = {c: counts[c] + n for c, n in need.items() if n > 0}
        if not strat:
            ds = train.subset([])
            ds.synthetic = torch.zeros(0, dtype=torch.bool)
        else:
            s = GenerativeOverSampler(self.run, sampling_strategy=strat, mask_source=mask_source, random_state=seed,
                                      progress=False, mask_pool=self.mask_pool, target="label",
                                      filters=self._filters(filter_name, split)).fit(train)
            ds = s.sample()
            self.sampler_info[f"seed{seed}/{key[1]}"] = (s.provenance_, s.report_)
            if filter_name:
                self.filter_reports[f"seed{seed}/{filter_name}"] = s.report_.to_dict()
        if path is not None:
            _save_pool(path, ds, seed, key[1], self._digest())
            self.pool_files[f"seed{seed}/{key[1]}"] = path.name
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
        if self.run is not None:
            pool = self.pool(split, need or counts, seed, mask_source, spec.filter)
            labels = pool.labels.numpy()
            take = []
            for c, n in counts.items():
                idx = np.flatnonzero(labels == pool.class_names.index(c))
                if n > len(idx):
                    raise DataError(f"the synthetic pool of seed {seed} has {len(idx)} images of class {c!r}, "
                                    f"{n} needed (a filter rejected too many)")
                take.append(idx[:n])
            return pool.subset(np.concatenate(take) if take else np.zeros(0, dtype=np.int64))
        if self.dataset is None:
            raise ConfigError("this arm needs synthetic data: give a generator run (--run) or a synthetic manifest")
        if spec.filter:
            raise ConfigError(f"arm {spec.name!r}: filters apply to a generator run, not to a fixed synthetic set")
        syn = self.dataset
        rng = np.random.default_rng(seed)
        take = []
        labels = syn.labels.numpy()
        for c, n in counts.items():
            pool = np.nonzero(labels == syn.class_names.index(c))[0] if c in syn.class_names else np.zeros(0, int)
            if len(pool) == 0 and n > 0:  # the set has no images of this class: it gets none
                self.missing.add(c)
                continue
            if n > len(pool):
                raise DataError(f"the synthetic set has {len(pool)} images of class {c!r}, {n} needed")
            take.append(rng.choice(pool, size=n, replace=False))
        return syn.subset(np.concatenate(take) if take else np.zeros(0, dtype=np.int64))


def _save_pool(path: Path, ds: ImageDataset, seed: int, filter_name: str, digest: str) -> None:
    from medbalance.utils.io import save_safetensors

    tensors = {"images": ds.images.contiguous(), "labels": ds.labels}
    if ds.masks is not None:
        tensors["masks"] = ds.masks
    if ds.conditions is not None:
        tensors["conditions"] = ds.conditions
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
    opts: dict[str, Any] = {}
    if spec.base == "real":
        return train, opts
    targets = balanced_targets(train, cfg.strategy)
    if spec.base == "oversample":
        return oversample_dataset(train, targets, seed), opts
    if spec.base == "class-weight":
        return train, {"class_weights": True}
    if spec.base == "augment":
        return train, {"augment": True}
    if source is None:
        raise ConfigError(f"arm {arm!r} needs synthetic data: give a generator run (--run) or --synthetic MANIFEST")
    if spec.class_weight:
        opts["class_weights"] = True
    counts = arm_synthetic_counts(spec, train, targets)
    need = pool_needs(cfg.arms, train, cfg.strategy).get(spec.filter) or counts
    syn = source.take(split, spec, counts, seed, cfg.mask_source, need)
    syn = _strip_masks_if_needed(syn, train)
    if spec.base in ("synthetic-only", PRETRAIN_ARM):
        return syn, opts
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
            if not len(sel):
                continue
            if task == "classification":
                sm = classification_metrics(y[sel], probs[sel], data.class_names)
                m["per_site"][site] = {"n": int(len(sel)), "balanced_accuracy": sm["balanced_accuracy"],
                                       "macro_f1": sm["macro_f1"],
                                       "recall": {c: v["recall"] for c, v in sm["per_class"].items()}}
            else:
                m["per_site"][site] = {"n": int(len(sel)),
                                       "dice_foreground": float(np.mean(np.asarray(m["per_case_dice_foreground"])[sel]))}
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
    warnings: list[str] = []
    if source is not None and source.run is not None:
        source.mask_pool, source.target, source.strategy = cfg.mask_pool, cfg.target, cfg.strategy
        if source.cache_dir is None:
            source.cache_dir = out_dir / "synthetic"
        for r in (source.run.values() if isinstance(source.run, dict) else [source.run]):
            warnings += leakage_guard(r, split, cfg.allow_val_overlap)
    elif source is not None and source.dataset is not None:
        warnings += synthetic_leakage_guard(source, split, cfg.allow_val_overlap)
        source.dataset = align_synthetic_classes(source.dataset, list(data.class_names), source.path)
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
                m, comp = train_arm(arm, split, cfg, seed, source, data)
                compositions.setdefault(arm, comp)
                results[arm].append(m)
                bar.advance(task)
    evaluation = None
    if cfg.fidelity and source is not None:
        evaluation = evaluate_synthetic(source, split, cfg)
        if evaluation is not None:
            atomic_write_json(out_dir / "evaluation.json", evaluation)
    if source is not None and source.missing:
        warnings.append(f"the synthetic set has no images of class(es) {', '.join(sorted(source.missing))}: "
                        "those classes got no synthetic images")
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
        "synthetic_provenance": _provenance_summary(source),
        "synthetic_sets": synthetic_sets_summary(source),
        "evaluated_synthetic_set": None if evaluation is None else evaluation["synthetic_set"],
        "duplicates": split_duplicate_summary(split),
        "seconds": round(time.perf_counter() - t_start, 1),
        "notes": [
            "model selection on real validation data only; test on real test data only",
            "one split for every arm and seed; seeds change initialisation, data order and generation",
        ],
    }
    atomic_write_json(out_dir / "downstream.json", report)
    return report


def evaluate_synthetic(source: SyntheticSource, split: Split, cfg: DownstreamConfig, extractor: str = "pixels",
                       extractor_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Fidelity, diversity, image statistics and privacy of the synthetic images the first seed's arms used (its
    unfiltered pool; a fixed synthetic set: the whole set), against the real training split, with the validation
    split as held-out real images for privacy. None when no synthetic image was used."""
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
                           seed=seed, ms_ssim_pairs=100, kid_subset_size=min(1000, len(syn)))
    ev["privacy_holdout"] = "validation split (never seen by the generator)"
    ev["synthetic_set"] = {"what": what, "n": len(syn), "seed": seed,
                           "statement": f"fidelity, privacy and seed {seed}'s utility measured on the same {len(syn)} "
                                        f"synthetic images: {what}"}
    return ev


def synthetic_sets_summary(source: SyntheticSource | None) -> dict[str, Any] | None:
    """The synthetic pools the arms drew from (seed/filter -> file and per-class counts)."""
    if source is None or not source.pools:
        return None
    out = {}
    for (seed, flt), ds in sorted(source.pools.items()):
        key = f"seed{seed}/{flt}"
        out[key] = {"file": source.pool_files.get(key), "n": len(ds), "class_counts": ds.class_counts(),
                    "filter_report": source.filter_reports.get(key)}
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


def split_duplicate_summary(split: Split) -> dict[str, Any]:
    return dict(getattr(split, "duplicates", None) or {"groups": 0, "images": 0, "near_duplicate_groups": 0})


def metric_table(task: str, class_names: list[str]) -> dict[str, Any]:
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


def _site_value(r: dict[str, Any], site: str, key: str) -> float:
    m = (r.get("per_site") or {}).get(site)
    if m is None:
        return float("nan")
    if key.startswith("recall/"):
        v = m["recall"].get(key.split("/", 1)[1])
        return float("nan") if v is None else v
    return m[key]


def summarize_arms(
    results: dict[str, list[dict[str, Any]]], task: str, class_names: list[str], test_labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Mean, std, 95 % bootstrap CI per arm and metric; paired Wilcoxon of each arm vs ``real`` across seeds
    (and, for classification recall and segmentation Dice, across test cases)."""
    table = metric_table(task, class_names)
    base = results["real"]
    for site in (base[0].get("per_site") or {}) if base else {}:  # per acquisition site, when the data has sites
        keys = ["balanced_accuracy"] + [f"recall/{c}" for c in class_names] if task == "classification" \
            else ["dice_foreground"]
        for key in keys:
            table[f"{key}@{site}"] = (lambda s_, k_: (lambda r: _site_value(r, s_, k_)))(site, key)
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
