"""``GenerativeOverSampler``: scikit-learn / imbalanced-learn style rebalancing with a trained generator.

>>> from medbalance.training.run import load_run
>>> sampler = GenerativeOverSampler(generator=load_run("runs/spade"), sampling_strategy="auto", random_state=0)
>>> balanced = sampler.fit_resample(train_set)          # real + synthetic ImageDataset
>>> sampler.sampling_strategy_                          # new samples per class, imbalanced-learn semantics
>>> sampler.report_                                     # generated / rejected by filter / kept, per class

``MixedDataset`` is a ``torch.utils.data.Dataset`` view that mixes real samples with synthetic ones that are
generated on the fly (deterministically per index), for training loops that should not materialise them.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.synthesis.filters import FilterContext, SampleFilter
from medbalance.synthesis.masks import EDIT_OPS, MaskSampler
from medbalance.synthesis.strategy import Strategy, plan_ratio, plan_sampling, plan_single_class
from medbalance.utils.progress import make_progress


def _batch_seed(random_state: int, cls: int, counter: int) -> int:
    """A seed per generated batch: a pure function of (random_state, class, batch number)."""
    return int(np.random.SeedSequence([int(random_state), int(cls), int(counter)]).generate_state(1)[0])


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
        and ``info``.
    sampling_strategy: imbalanced-learn semantics (see :mod:`medbalance.synthesis.strategy`); ignored when
        ``ratio`` or ``inject`` is given.
    ratio, ratio_mode: synthetic = ratio x real, ``per_class`` or ``overall``.
    inject: ``(class_name, n)``: add n samples of one class only.
    mask_source, mask_pool, edit_ops, mask_folder, anatomy_values: see :class:`MaskSampler`.
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
        mask_pool: str = "same_class",
        edit_ops: Sequence[str] = EDIT_OPS,
        mask_folder: str | None = None,
        anatomy_values: Sequence[int] | None = None,
        filters: Sequence[SampleFilter] = (),
        max_rounds: int = 10,
        batch_size: int = 64,
        random_state: int = 0,
        progress: bool = True,
    ):
        self.generator = generator
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
    def method(self):
        return self.generator.method

    def _needs(self) -> tuple[str, ...]:
        return tuple(getattr(self.method, "needs", ()))

    def _check(self, dataset: ImageDataset) -> None:
        info = self.generator.info
        if list(dataset.class_names) != list(info.class_names):
            raise DataError(
                f"the dataset's classes {dataset.class_names} differ from the generator's {info.class_names}"
            )
        needs = self._needs()
        # A mask-conditioned model without a class input (SPADE, pix2pix) can still render class k when its
        # label maps come from class k (the class is carried by the lesion in the mask).
        if "label" not in needs and not ("mask" in needs and self.mask_pool == "same_class" and self.mask_source != "folder"):
            raise ConfigError(
                f"model {self.method.name!r} is not class-conditional, so it cannot rebalance classes "
                "(train a class-conditional model such as acgan, redgan or conditional dcgan; mask-conditioned "
                "models need mask_pool='same_class')"
            )
        if "mask" in self._needs() and self.mask_source != "folder" and dataset.masks is None:
            raise DataError(f"model {self.method.name!r} needs label maps but the dataset has no masks")

    def plan(self, dataset: ImageDataset) -> "OrderedDict[str, int]":
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
        if "mask" not in self._needs():
            return None
        return MaskSampler(
            dataset,
            source=self.mask_source,
            anatomy_values=self.anatomy_values,
            pool=self.mask_pool,
            edit_ops=self.edit_ops,
            folder=self.mask_folder,
        )

    def _device(self) -> torch.device:
        try:
            return next(self.generator.G.parameters()).device
        except (StopIteration, AttributeError):
            return torch.device("cpu")

    @torch.no_grad()
    def sample(self) -> ImageDataset:
        """Generate the planned samples (after :meth:`fit`). Sets ``synthetic_``, ``provenance_``, ``report_``."""
        ds = self.dataset_
        sampler = self._mask_sampler(ds)
        device = self._device()
        needs = self._needs()
        images, labels, masks, conds, prov = [], [], [], [], []
        report = SynthesisReport()
        total = sum(self.sampling_strategy_.values())
        with make_progress(enabled=self.progress) as bar:
            task = bar.add_task("generating", total=total)
            for cls_name, n in self.sampling_strategy_.items():
                c = ds.class_names.index(cls_name)
                rec = {"requested": int(n), "generated": 0, "rejected": {f.name: 0 for f in self.filters}, "kept": 0}
                kept = 0
                counter = 0
                rounds_without_progress = 0
                while kept < n and rounds_without_progress < self.max_rounds:
                    b = min(self.batch_size, max(1, n - kept))
                    seed = _batch_seed(self.random_state, c, counter)
                    counter += 1
                    rng = np.random.default_rng(seed)
                    lab = torch.full((b,), c, dtype=torch.long)
                    drawn = sampler.draw(b, c if self.mask_pool == "same_class" else None, rng) if sampler else None
                    m = torch.as_tensor(np.stack([d.mask for d in drawn])) if drawn else None
                    cond = self._conditions(ds, drawn, b, rng) if "condition" in needs else None
                    g = torch.Generator().manual_seed(seed)
                    x = self.method.generate(
                        lab.to(device),
                        masks=None if m is None else m.to(device),
                        conditions=None if cond is None else cond.to(device),
                        generator=g,
                        G=getattr(self.generator, "G", None),
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
                        labels.append(c)
                        if m is not None:
                            masks.append(m[i])
                        if cond is not None:
                            conds.append(int(cond[i]))
                        d = drawn[i] if drawn else None
                        prov.append(
                            {
                                "class": cls_name,
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
            meta={"source": "synthetic", "generator": getattr(self.method, "name", "?")},
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


class OnTheFlySynthetic(Dataset):
    """Synthetic samples generated when indexed (deterministic per index), for a planned class distribution."""

    def __init__(self, generator: Any, dataset: ImageDataset, plan: dict[Hashable, int], mask_source: str = "real",
                 random_state: int = 0):
        self.generator = generator
        self.dataset = dataset
        self.random_state = random_state
        self.classes = [dataset.class_names.index(c) for c, n in plan.items() for _ in range(int(n))]
        needs = tuple(getattr(generator.method, "needs", ()))
        self.sampler = MaskSampler(dataset, source=mask_source) if "mask" in needs else None
        self.needs = needs

    def __len__(self) -> int:
        return len(self.classes)

    @torch.no_grad()
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c = self.classes[i]
        seed = _batch_seed(self.random_state, c, 1_000_000 + i)
        rng = np.random.default_rng(seed)
        lab = torch.tensor([c])
        mask = None
        if self.sampler is not None:
            mask = torch.as_tensor(self.sampler.draw(1, c, rng)[0].mask)[None]
        cond = None
        if "condition" in self.needs and self.dataset.conditions is not None:
            cond = torch.as_tensor(rng.integers(0, self.dataset.num_conditions, size=1), dtype=torch.long)
        dev = next(self.generator.G.parameters()).device
        x = self.generator.method.generate(
            lab.to(dev), masks=None if mask is None else mask.to(dev),
            conditions=None if cond is None else cond.to(dev),
            generator=torch.Generator().manual_seed(seed), G=self.generator.G,
        )[0].float().cpu()
        item = {"image": x, "label": lab[0], "index": torch.tensor(-1 - i), "synthetic": torch.tensor(True)}
        if mask is not None:
            item["mask"] = mask[0]
        if cond is not None:
            item["condition"] = cond[0]
        return item


class MixedDataset(Dataset):
    """Real samples followed by synthetic ones (materialised or on the fly), with a ``synthetic`` flag."""

    def __init__(self, real: ImageDataset, synthetic: Dataset):
        self.real = real
        self.synthetic = synthetic

    def __len__(self) -> int:
        return len(self.real) + len(self.synthetic)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < 0:
            i += len(self)
        if i < len(self.real):
            item = dict(self.real[i])
            item["synthetic"] = torch.tensor(False)
            return item
        item = dict(self.synthetic[i - len(self.real)])
        item.setdefault("synthetic", torch.tensor(True))
        return item

    def class_counts(self) -> dict[str, int]:
        counts = self.real.class_counts()
        syn_labels = (
            self.synthetic.labels.tolist() if isinstance(self.synthetic, ImageDataset) else list(self.synthetic.classes)
        )
        for c in syn_labels:
            counts[self.real.class_names[c]] += 1
        return counts
