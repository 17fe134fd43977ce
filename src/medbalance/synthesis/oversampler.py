"""``GenerativeOverSampler``: scikit-learn / imbalanced-learn style rebalancing with a trained generator.

>>> from medbalance.training.run import load_run
>>> sampler = GenerativeOverSampler(generator=load_run("runs/spade"), sampling_strategy="auto", random_state=0)
>>> balanced = sampler.fit_resample(train_set)          # real + synthetic ImageDataset
>>> sampler.sampling_strategy_                          # new samples per class, imbalanced-learn semantics
>>> sampler.report_                                     # generated / rejected by filter / kept, per class
>>> GenerativeOverSampler({"melanoma": load_run("runs/mel"), "nevus": load_run("runs/nev")})  # one run per class
>>> GenerativeOverSampler(load_run("runs/redgan_site"), target="condition")                 # rebalance sites
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.synthesis.filters import FilterContext, SampleFilter
from medbalance.synthesis.masks import EDIT_OPS, MaskSampler
from medbalance.synthesis.strategy import (
    Strategy,
    plan_ratio,
    plan_sampling,
    plan_single_class,
)
from medbalance.utils.progress import make_progress
from medbalance.utils.seed import synthesis_batch_seed

TARGETS = ("label", "condition")


def conditions_on_class(method: Any) -> bool:
    """Whether a generator takes the class label as an input (``needs`` has ``label`` and the model was not
    built unconditional: ``conditional=False`` on DCGAN/LAPGAN, ``class_conditional=False`` on diffusion)."""
    if "label" not in tuple(getattr(method, "needs", ())):
        return False
    if getattr(method, "conditional", True) is False:
        return False
    params = getattr(method, "params", None)
    return getattr(params, "class_conditional", True) is not False


MASK_POOLS = ("auto", "same_class", "any")


def resolve_mask_pool(method: Any, pool: str) -> str:
    """``auto``: ``any`` for Red-GAN conditioned on the class (the paper renders every training mask under every
    class, Abhishek et al.'s ``gan/test.py`` with a fixed ``--condition_class``), else ``same_class``."""
    if pool not in MASK_POOLS:
        raise ConfigError(f"unknown mask pool {pool!r}; allowed: {', '.join(MASK_POOLS)}")
    if pool != "auto":
        return pool
    return "any" if getattr(method, "name", "") == "redgan" and conditions_on_class(method) else "same_class"


def check_per_class_run(cls_name: str, run: Any) -> None:
    """A run used for class ``cls_name`` alone (MelanoGANs' recipe) must have been trained on that class only."""
    names = list(getattr(run.info, "class_names", []))
    where = getattr(run, "run_dir", "the run")
    if names != [cls_name]:
        raise ConfigError(
            f"run {where} was trained on class(es) {names}, not on {cls_name!r} only: a per-class run must be "
            f"trained with data.class_subset: [{cls_name}]"
        )


def check_can_label(method: Any, *, mask_pool: str = "same_class", mask_source: str = "real") -> None:
    """Refuse (one line) a generator that cannot produce a requested class: it must take the class as input,
    or be mask-conditioned with masks of that class (the class is carried by the lesion in the label map)."""
    needs = tuple(getattr(method, "needs", ()))
    if conditions_on_class(method):
        return
    if "mask" in needs and mask_pool == "same_class" and mask_source != "folder":
        return
    name = getattr(method, "name", "?")
    raise ConfigError(
        f"model {name!r} is not class-conditional, so it cannot write a class label on its images "
        "(train a class-conditional model such as acgan, redgan or conditional dcgan/lapgan, pass one "
        "unconditional run per class (--run CLASS=RUN), or use a mask-conditioned model with mask_pool='same_class')"
    )


@dataclass
class SynthesisReport:
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def generated(self) -> int:
        return sum(v["generated"] for v in self.per_class.values())

    @property
    def kept(self) -> int:
        return sum(v["kept"] for v in self.per_class.values())

    def rejected(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.per_class.values():
            for k, n in v["rejected"].items():
                out[k] = out.get(k, 0) + n
        return out

    def shortfall(self) -> dict[str, int]:
        return {c: v["requested"] - v["kept"] for c, v in self.per_class.items() if v["kept"] < v["requested"]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated": self.generated,
            "rejected": self.rejected(),
            "kept": self.kept,
            "shortfall": self.shortfall(),
            "per_class": self.per_class,
        }

    def summary(self) -> str:
        rej = ", ".join(f"{k}: {v}" for k, v in self.rejected().items()) or "none"
        s = f"generated {self.generated}, rejected ({rej}), kept {self.kept}"
        short = self.shortfall()
        if short:
            s += "; NOT reached for " + ", ".join(f"{c} (short by {n})" for c, n in short.items())
        return s


class GenerativeOverSampler:
    """Rebalance a dataset with a trained conditional generator.

    Parameters
    ----------
    generator: a loaded run (:func:`medbalance.training.run.load_run`) or anything with ``method``
        (a :class:`~medbalance.models.base.GANMethod`), ``G`` (the network to sample with, e.g. the EMA copy)
        and ``info``; or a dict ``{class_name: run}`` of runs each trained on that one class only
        (``data.class_subset``, MelanoGANs' one-unconditional-generator-per-class recipe).
    target: ``label`` plans and labels by class; ``condition`` plans by the condition column (e.g. the
        acquisition site, Red-GAN's global class): the model must condition on it, the planned sites are fed to
        the generator and each image's class label is that of its label map's source image.
    sampling_strategy: imbalanced-learn semantics (see :mod:`medbalance.synthesis.strategy`); ignored when
        ``ratio`` or ``inject`` is given.
    ratio, ratio_mode: synthetic = ratio x real, ``per_class`` or ``overall``.
    inject: ``(class_name, n)``: add n samples of one class only.
    mask_source, mask_pool, edit_ops, mask_folder, anatomy_values: see :class:`MaskSampler`; ``mask_pool='auto'``
        (default) is ``any`` for Red-GAN conditioned on the class (as in the paper), else ``same_class``.
    filters: acceptance filters applied in order; a sample rejected by one is counted under its name.
    max_rounds: generation rounds per class to replace rejected samples before giving up (the shortfall is
        reported, never hidden).
    """

    def __init__(
        self,
        generator: Any,
        sampling_strategy: Strategy = "auto",
        *,
        ratio: float | None = None,
        ratio_mode: str = "per_class",
        inject: tuple[str, int] | None = None,
        mask_source: str = "real",
        mask_pool: str = "auto",
        edit_ops: Sequence[str] = EDIT_OPS,
        mask_folder: str | None = None,
        anatomy_values: Sequence[int] | None = None,
        filters: Sequence[SampleFilter] = (),
        max_rounds: int = 10,
        batch_size: int = 64,
        random_state: int = 0,
        progress: bool = True,
        target: str = "label",
    ):
        self.generator = generator
        self.target = target
        self.sampling_strategy = sampling_strategy
        self.ratio = ratio
        self.ratio_mode = ratio_mode
        self.inject = inject
        self.mask_source = mask_source
        self.mask_pool = mask_pool
        self.edit_ops = tuple(edit_ops)
        self.mask_folder = mask_folder
        self.anatomy_values = anatomy_values
        self.filters = list(filters)
        self.max_rounds = max_rounds
        self.batch_size = batch_size
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ planning
    @property
    def per_class(self) -> bool:
        return isinstance(self.generator, Mapping)

    def _run_for(self, cls_name: str | None = None) -> Any:
        if not self.per_class:
            return self.generator
        if cls_name is None:
            return next(iter(self.generator.values()))
        if cls_name not in self.generator:
            raise ConfigError(
                f"no run for class {cls_name!r}: per-class runs were given for {', '.join(self.generator)} "
                "(pass --run CLASS=RUN for every class the plan generates)"
            )
        return self.generator[cls_name]

    @property
    def method(self):
        return self._run_for().method

    def _needs(self, cls_name: str | None = None) -> tuple[str, ...]:
        return tuple(getattr(self._run_for(cls_name).method, "needs", ()))

    @property
    def pool_(self) -> str:
        """The mask pool in effect (``auto`` resolved for the generator)."""
        return resolve_mask_pool(self.method, self.mask_pool)

    def _check(self, dataset: ImageDataset) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}; allowed: {', '.join(TARGETS)}")
        if self.per_class:
            if self.target != "label":
                raise ConfigError("per-class runs rebalance classes: use target='label'")
            unknown = [c for c in self.generator if c not in dataset.class_names]
            if unknown:
                raise ConfigError(f"--run for unknown class(es) {unknown}; the data's classes are {dataset.class_names}")
            for c, run in self.generator.items():
                check_per_class_run(c, run)
                shape = (run.info.channels, *run.info.spatial_shape)
                if tuple(shape) != (dataset.channels, *dataset.spatial_shape):
                    raise DataError(f"the run for class {c!r} makes images of shape {tuple(shape)}, the data has "
                                    f"{(dataset.channels, *dataset.spatial_shape)}")
        else:
            info = self.generator.info
            if list(dataset.class_names) != list(info.class_names):
                raise DataError(
                    f"the dataset's classes {dataset.class_names} differ from the generator's {info.class_names}"
                )
            if self.target == "condition":
                needs = self._needs()
                if "condition" not in needs:
                    raise ConfigError(
                        f"model {self.method.name!r} does not condition on the condition column, so it cannot "
                        "rebalance it (train Red-GAN with global_condition: condition)"
                    )
                if "mask" not in needs or self.mask_source == "folder":
                    raise ConfigError(
                        "target='condition' takes each image's class from its label map's source image: it needs a "
                        "mask-conditioned model and a mask source other than 'folder'"
                    )
                if dataset.conditions is None:
                    raise DataError("target='condition' but the dataset has no condition column (data.condition_column)")
            else:
                check_can_label(self.method, mask_pool=self.pool_, mask_source=self.mask_source)
        if "mask" in self._needs() and self.mask_source != "folder" and dataset.masks is None:
            raise DataError(f"model {self.method.name!r} needs label maps but the dataset has no masks")

    def plan(self, dataset: ImageDataset) -> "OrderedDict[str, int]":
        if self.target == "condition":
            names = [_cond_name(dataset, i) for i in dataset.conditions.tolist()]
        else:
            names = [dataset.class_names[i] for i in dataset.labels.tolist()]
        if self.inject is not None:
            cls, n = self.inject
            return plan_single_class(names, cls, n)
        if self.ratio is not None:
            return plan_ratio(names, self.ratio, mode=self.ratio_mode)
        return plan_sampling(names, self.sampling_strategy)

    def fit(self, dataset: ImageDataset) -> "GenerativeOverSampler":
        self._check(dataset)
        self.dataset_ = dataset
        self.sampling_strategy_ = self.plan(dataset)
        return self

    # ------------------------------------------------------------------ generation
    def _mask_sampler(self, dataset: ImageDataset) -> MaskSampler | None:
        if not any("mask" in self._needs(c) for c in (self.generator if self.per_class else [None])):
            return None
        return MaskSampler(
            dataset,
            source=self.mask_source,
            anatomy_values=self.anatomy_values,
            pool=self.pool_,
            edit_ops=self.edit_ops,
            folder=self.mask_folder,
        )

    def _device(self, run: Any = None) -> torch.device:
        try:
            return next((run if run is not None else self._run_for()).G.parameters()).device
        except (StopIteration, AttributeError):
            return torch.device("cpu")

    @torch.no_grad()
    def sample(self) -> ImageDataset:
        """Generate the planned samples (after :meth:`fit`). Sets ``synthetic_``, ``provenance_``, ``report_``."""
        ds = self.dataset_
        sampler = self._mask_sampler(ds)
        by_site = self.target == "condition"
        images, labels, masks, conds, prov = [], [], [], [], []
        report = SynthesisReport()
        total = sum(self.sampling_strategy_.values())
        with make_progress(enabled=self.progress) as bar:
            task = bar.add_task("generating", total=total)
            for cls_name, n in self.sampling_strategy_.items():
                run = self._run_for(None if by_site else cls_name)
                needs = self._needs(None if by_site else cls_name)
                device = self._device(run)
                # per-class run: trained on this one class, so its own label index is 0
                c = ds.condition_names.index(cls_name) if by_site else ds.class_names.index(cls_name)
                rec = {"requested": int(n), "generated": 0, "rejected": {f.name: 0 for f in self.filters}, "kept": 0}
                kept = 0
                counter = 0
                rounds_without_progress = 0
                while kept < n and rounds_without_progress < self.max_rounds:
                    b = min(self.batch_size, max(1, n - kept))
                    seed = synthesis_batch_seed(self.random_state, c, counter)
                    counter += 1
                    rng = np.random.default_rng(seed)
                    if by_site:  # masks from every image; the class comes with the mask's source image
                        drawn = sampler.draw(b, None, rng)
                        lab = torch.as_tensor([int(ds.labels[self._id_index(ds)[d.parent_id]]) for d in drawn])
                        cond = torch.full((b,), c, dtype=torch.long)
                    else:
                        lab = torch.full((b,), c, dtype=torch.long)
                        pool_cls = c if self.pool_ == "same_class" else None
                        drawn = sampler.draw(b, pool_cls, rng) if (sampler and "mask" in needs) else None
                        cond = self._conditions(ds, drawn, b, rng) if "condition" in needs else None
                    m = torch.as_tensor(np.stack([d.mask for d in drawn])) if drawn else None
                    g = torch.Generator().manual_seed(seed)
                    g_lab = torch.zeros_like(lab) if self.per_class else lab
                    x = run.method.generate(
                        g_lab.to(device),
                        masks=None if m is None else m.to(device),
                        conditions=None if cond is None else cond.to(device),
                        generator=g,
                        G=getattr(run, "G", None),
                    ).float().cpu()
                    rec["generated"] += b
                    keep = torch.ones(b, dtype=torch.bool)
                    scores: list[dict[str, float]] = [{} for _ in range(b)]
                    ctx = FilterContext(labels=lab, masks=m, conditions=cond)
                    for f in self.filters:
                        k, s = f(x, ctx)
                        newly = keep & ~k
                        rec["rejected"][f.name] += int(newly.sum())
                        keep &= k
                        for i, v in enumerate(s.tolist()):
                            scores[i][f.name] = round(float(v), 6)
                    idx = torch.nonzero(keep).flatten()[: n - kept].tolist()
                    rounds_without_progress = 0 if idx else rounds_without_progress + 1
                    for i in idx:
                        images.append(x[i])
                        labels.append(int(lab[i]))
                        if m is not None:
                            masks.append(m[i])
                        if cond is not None:
                            conds.append(int(cond[i]))
                        d = drawn[i] if drawn else None
                        prov.append(
                            {
                                "class": ds.class_names[int(lab[i])],
                                "run": str(getattr(run, "run_dir", "")) if self.per_class else "",
                                "seed": seed,
                                "batch_position": i,
                                "condition": None if cond is None else _cond_name(ds, int(cond[i])),
                                "mask_source": d.describe() if d else "",
                                "parent_mask_id": d.parent_id if d else "",
                                "filter_scores": json.dumps(scores[i], sort_keys=True) if scores[i] else "",
                            }
                        )
                    kept += len(idx)
                    bar.advance(task, len(idx))
                rec["kept"] = kept
                report.per_class[cls_name] = rec
        self.report_ = report
        self.provenance_ = prov
        n = len(images)
        ids = [f"syn_{p['class']}_{k:06d}" for k, p in enumerate(prov)]
        for p, i in zip(prov, ids):
            p["id"] = i
        shape = (0, ds.channels, *ds.spatial_shape)
        self.synthetic_ = ImageDataset(
            images=torch.stack(images) if n else torch.zeros(shape),
            labels=torch.tensor(labels, dtype=torch.long),
            class_names=list(ds.class_names),
            ids=ids,
            masks=torch.stack(masks).long() if masks else (
                torch.zeros((0, *ds.spatial_shape), dtype=torch.long) if (sampler is not None and n == 0) else None
            ),
            mask_values=ds.mask_values if (masks or (sampler is not None and n == 0)) else None,
            conditions=torch.tensor(conds, dtype=torch.long) if conds else None,
            condition_names=ds.condition_names if conds else None,
            groups=list(ids),
            intensity=ds.intensity,
            meta={"source": "synthetic", "generator": getattr(self.method, "name", "?"), "target": self.target},
            synthetic=torch.ones(n, dtype=torch.bool),
        )
        return self.synthetic_

    def _conditions(self, ds: ImageDataset, drawn, b: int, rng: np.random.Generator) -> torch.Tensor:
        if ds.conditions is None:
            raise DataError(f"model {self.method.name!r} needs a global condition but the dataset has none")
        if drawn and all(d.parent_id in self._id_index(ds) for d in drawn):
            idx = [self._id_index(ds)[d.parent_id] for d in drawn]
            return ds.conditions[torch.tensor(idx)]
        return torch.as_tensor(rng.integers(0, ds.num_conditions, size=b), dtype=torch.long)

    def _id_index(self, ds: ImageDataset) -> dict[str, int]:
        if getattr(self, "_ids_cache", None) is None:
            self._ids_cache = {k: i for i, k in enumerate(ds.ids)}
        return self._ids_cache

    def fit_resample(self, dataset: ImageDataset) -> ImageDataset:
        """Real + synthetic samples (``synthetic`` flags which are which)."""
        self.fit(dataset)
        return dataset.concat(self.sample())


def _cond_name(ds: ImageDataset, c: int) -> str:
    return ds.condition_names[c] if ds.condition_names else str(c)
