"""``medbalance benchmark``: every generator against every baseline, on one dataset, over paired seeds.

The question users ask first: *which generator, how much synthetic data, and does it beat the simple baselines
on my data?* One benchmark is a grid of **cells**, each saved as soon as it finishes (``OUT/cells/*.json``):

- per split seed: the baseline arms (``real``, ``oversample``, ``class-weight``, ``augment``) x classifier seeds;
- per split seed x generator x generator seed: training the generator on that split's training images only
  (Red-GAN: with a segmentor trained on the same training images), its fidelity / diversity / privacy on the
  synthetic images the arms use (seed 0's pool), and the synthetic arms (``real+synthetic``, ratios ``@Rx``,
  ``synthetic-only``, ``synthetic-pretrain+finetune``, ``+class-weight``, ``|filter=...``) x classifier seeds;
- the feature-level method (Mehra et al.) as its own row, against its own feature-level baselines.

A killed benchmark resumes at the first unfinished cell; finished cells are never recomputed (a cell's file is
written atomically after it completes; a generator resumes from its last checkpoint).

**Statistics.** A replicate is a (split seed, classifier seed) pair: every arm of a replicate uses the same split,
the same classifier initialisation and data order (the seed), so arms are compared *paired*. With several
generator seeds, a generator arm's value per replicate is its mean over generator seeds. For every leaderboard
row and primary metric: the mean paired difference against the **best baseline arm** (highest mean), its bootstrap
95 % CI, a paired t-test, and Holm's correction over every comparison of the leaderboard. Verdict: *helps* /
*hurts* when the Holm-adjusted p < alpha (sign of the difference), else *no evidence*.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, model_validator

from medbalance.config import BaseConfig, apply_overrides
from medbalance.data.config import DataConfig
from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.evaluation.stats import holm, paired_difference, summarize
from medbalance.experiments.downstream import (
    DownstreamConfig,
    Split,
    SyntheticSource,
    check_arms,
    evaluate_synthetic,
    leakage_guard,
    make_split,
    metric_table,
    parse_arm,
    pool_needs,
    train_arm,
)
from medbalance.utils.io import atomic_write_json, atomic_write_text, read_json
from medbalance.utils.progress import console, make_progress
from medbalance.utils.tables import finite, fmt_ci, fmt_num

BASELINE_ARMS = ("real", "oversample", "class-weight", "augment")
# grid axes: a finished benchmark can be extended along these (finished cells stay valid)
GRID_AXES = ("generators", "baselines", "arms", "seeds", "split_seeds", "generator_seeds", "primary_metrics", "alpha",
             "budget_minutes", "fidelity")
BUDGET_AXES = ("seeds", "arms", "generators")  # what --budget may shrink
FEATURE_MODEL = "feature-acgan"  # the feature-level method (Mehra et al.), run as its own pipeline
VERDICTS = ("helps", "no evidence", "hurts")


class GeneratorSpec(BaseConfig):
    """One generator of the grid: a registered model with its preset and a training budget (or a trained run)."""

    model: str = Field(..., description=f"a registered model name, or {FEATURE_MODEL!r} (feature-level method)")
    name: str | None = Field(None, description="row name in the leaderboard (default: the model name)")
    preset: str = "cpu"
    steps: int | None = Field(None, ge=1, description="training budget in optimiser steps")
    epochs: int | None = Field(None, ge=1, description="training budget in epochs of the training split")
    minutes: float | None = Field(None, gt=0, description="training budget in minutes (converted to steps by a "
                                  "short timed calibration on this machine, recorded; on a machine shared with other "
                                  "jobs the calibration is slowed too and gives fewer steps: prefer steps there)")
    overrides: list[str] = Field(default_factory=list, description="run-config key=value overrides, e.g. "
                                 "model.params.conditional=true or data.anatomy_label=1 (feature-acgan: its own "
                                 "keys, e.g. segmentor.epochs=4)")
    run: str | None = Field(None, description="use this trained run folder instead of training (leakage-checked)")
    segmentor_epochs: int = Field(8, ge=1, description="Red-GAN: epochs of the segmentor trained on the split")
    arms: list[str] | None = Field(None, description="this generator's synthetic arms (default: the grid's `arms`), "
                                   "e.g. only the best arm for a cheaper extra row")

    @model_validator(mode="after")
    def _one_budget(self) -> GeneratorSpec:
        given = [k for k in ("steps", "epochs", "minutes") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"generator {self.label}: give one budget of steps, epochs, minutes (got {given})")
        if self.run is not None and (given or self.model == FEATURE_MODEL):
            raise ConfigError(f"generator {self.label}: a trained run takes no training budget")
        return self

    @property
    def label(self) -> str:
        return self.name or self.model


class BenchmarkConfig(BaseConfig):
    """The whole grid. ``medbalance benchmark DATA OUT --config FILE`` reads this (YAML), the CLI options and
    ``--set key=value`` override it; the resolved config is saved as ``OUT/benchmark.yaml``."""

    data: DataConfig = Field(default_factory=DataConfig)
    task: Literal["classification", "segmentation"] = "classification"
    generators: list[GeneratorSpec] = Field(default_factory=list)
    baselines: list[str] = Field(default_factory=lambda: list(BASELINE_ARMS))
    arms: list[str] = Field(default_factory=lambda: ["real+synthetic", "real+synthetic@1x",
                                                     "real+synthetic+class-weight"],
                            description="synthetic arms (see experiments.downstream.parse_arm)")
    seeds: int = Field(5, ge=1, description="classifier seeds 0..N-1 per split (paired across arms)")
    split_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="repeated splits")
    generator_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    subsample: dict[str, float] = Field(default_factory=dict, description="class -> fraction of training images kept")
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    strategy: Any = "auto"
    mask_source: str = "real"
    mask_pool: Literal["auto", "same_class", "any"] = "auto"
    near_duplicates: bool = False
    epochs: int = Field(15, ge=1, description="task-network epochs per arm")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    arch: str | None = None
    primary_metrics: list[str] | None = Field(
        None, description="verdict metrics; default: recall of the rarest training class and balanced accuracy "
        "(classification), lesion Dice (segmentation)")
    alpha: float = Field(0.05, gt=0, lt=1)
    fidelity: bool = Field(True, description="fidelity, diversity and privacy of each generator's synthetic images")
    fidelity_extractor: Literal["domain", "pixels"] = Field(
        "domain", description="features for FD/KID/precision/recall: an encoder trained on the split's real "
        "training images (domain) or downsampled pixels")
    budget_minutes: float | None = Field(None, gt=0, description="plan the grid to fit (fewer seeds, then arms)")
    device: str = "auto"
    precision: str = "auto"

    @model_validator(mode="after")
    def _check(self) -> BenchmarkConfig:
        for a in self.baselines:
            if a not in BASELINE_ARMS:
                raise ConfigError(f"unknown baseline arm {a!r}; allowed: {', '.join(BASELINE_ARMS)}")
        if "real" not in self.baselines:
            raise ConfigError("the baselines must include 'real'")
        for a in [*self.arms, *(a for g in self.generators for a in (g.arms or []))]:
            if not parse_arm(a).synthetic:
                raise ConfigError(f"arm {a!r} is a baseline: list it under baselines")
        names = [g.label for g in self.generators]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"generator names must be unique (give `name:`), repeated: {', '.join(dup)}")
        for n in names:
            if not n.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise ConfigError(f"generator name {n!r}: use letters, digits, '-', '_', '.'")
        return self

    def arms_of(self, g: GeneratorSpec) -> list[str]:
        """The synthetic arms run for generator ``g``: its own list, or the grid's."""
        return list(g.arms) if g.arms is not None else list(self.arms)

    def downstream(self, split_seed: int, gen: GeneratorSpec | None = None) -> DownstreamConfig:
        """The downstream settings of one split (and generator: its arms size the synthetic pools)."""
        arms = self.arms_of(gen) if gen is not None else self.arms
        return DownstreamConfig(
            task=self.task, arms=list(self.baselines) + arms, seeds=list(range(self.seeds)),
            split_seed=split_seed, fractions=self.fractions, subsample=dict(self.subsample), strategy=self.strategy,
            mask_source=self.mask_source, mask_pool=self.mask_pool, allow_val_overlap=False,
            near_duplicates=self.near_duplicates, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            arch=self.arch, device=self.device, precision=self.precision, fidelity=False,
        )


def quick_profile(cfg: BenchmarkConfig) -> BenchmarkConfig:
    """``--quick``: the same grid (generators, arms, splits) with a tenth of the compute: 2 seeds, a quarter of
    the epochs, a tenth of each generator's budget, pixel features for fidelity."""
    gens = []
    for g in cfg.generators:
        upd: dict[str, Any] = {}
        if g.steps is not None:
            upd["steps"] = max(1, g.steps // 10)
        if g.epochs is not None:
            upd["epochs"] = max(1, g.epochs // 10)
        if g.minutes is not None:
            upd["minutes"] = g.minutes / 10
        upd["segmentor_epochs"] = max(1, g.segmentor_epochs // 4)
        gens.append(g.model_copy(update=upd))
    return cfg.model_copy(update={"seeds": min(cfg.seeds, 2), "epochs": max(2, cfg.epochs // 4), "generators": gens,
                                  "fidelity_extractor": "pixels"})


# ---------------------------------------------------------------------------------------------- cells
def needs_grid_segmentor(g: GeneratorSpec) -> bool:
    """Red-GAN without a segmentor of its own in ``overrides``: it gets one trained on the split (cached)."""
    return g.model == "redgan" and g.run is None and not any(
        o.startswith("model.params.segmentor=") for o in g.overrides)


class Cell:
    """One unit of work with a stable key; its result is ``OUT/cells/<key>.json`` once finished."""

    def __init__(self, kind: str, split: int, arm: str | None = None, seed: int | None = None,
                 gen: GeneratorSpec | None = None, gseed: int | None = None):
        self.kind, self.split, self.arm, self.seed, self.gen, self.gseed = kind, split, arm, seed, gen, gseed

    @property
    def gkey(self) -> str:
        return f"{self.gen.label}-g{self.gseed}" if self.gen is not None else "baseline"

    @property
    def key(self) -> str:
        if self.kind == "arm":
            return arm_key(self.split, self.gkey, self.arm, self.seed)
        return f"s{self.split}/{self.gkey}/{self.kind}"

    def describe(self) -> str:
        what = {"arm": f"{self.arm} seed {self.seed}", "train": "train generator", "fidelity": "fidelity+privacy",
                "feature": "feature-level experiment"}[self.kind]
        return f"split {self.split} · {self.gkey} · {what}"


def arm_key(split: int, gkey: str, arm: str, seed: int) -> str:
    """The cell key of one arm x classifier seed (``gkey``: ``baseline`` or ``NAME-gSEED``)."""
    return f"s{split}/{gkey}/arm/{_safe(arm)}/seed{seed}"


def _safe(arm: str) -> str:
    return arm.replace("|", "~").replace("+", "_").replace("@", "at").replace("=", "-")


def plan_cells(cfg: BenchmarkConfig) -> list[Cell]:
    cells: list[Cell] = []
    for s in cfg.split_seeds:
        for seed in range(cfg.seeds):
            cells += [Cell("arm", s, a, seed) for a in cfg.baselines]
        for g in cfg.generators:
            if g.model == FEATURE_MODEL:
                cells.append(Cell("feature", s, gen=g, gseed=cfg.generator_seeds[0]))
                continue
            for gs in cfg.generator_seeds:
                if g.run is None:
                    cells.append(Cell("train", s, gen=g, gseed=gs))
                if cfg.fidelity:
                    cells.append(Cell("fidelity", s, gen=g, gseed=gs))
                for seed in range(cfg.seeds):
                    cells += [Cell("arm", s, a, seed, g, gs) for a in cfg.arms_of(g)]
    return cells


@dataclass(frozen=True)
class StepSpeed:
    """Seconds per training step of a generator: ``seconds_per_step`` for the first ``phase_steps`` steps (all steps
    when 0), ``seconds_per_step_after`` for the rest."""

    seconds_per_step: float
    phase_steps: int = 0
    seconds_per_step_after: float | None = None

    def seconds_for(self, steps: int) -> float:
        if not self.phase_steps:
            return steps * self.seconds_per_step
        first = min(steps, self.phase_steps)
        return first * self.seconds_per_step + (steps - first) * self.seconds_per_step_after

    def steps_in(self, seconds: float) -> int:
        """The most steps that fit in ``seconds`` (at least 1)."""
        if not self.phase_steps or seconds <= self.phase_steps * self.seconds_per_step:
            return max(1, int(seconds / self.seconds_per_step))
        return self.phase_steps + int((seconds - self.phase_steps * self.seconds_per_step) / self.seconds_per_step_after)


def longest_arms(cfg: BenchmarkConfig) -> int | None:
    """Which arm list to shorten: -1 for the grid's (when a generator uses it), ``k`` for generator ``k``'s own
    list, None when every list in use has one arm left. The longest wins; ties go to the grid's list."""
    lists = [(-1, cfg.arms)] if any(g.arms is None for g in cfg.generators) or not cfg.generators else []
    lists += [(k, g.arms) for k, g in enumerate(cfg.generators) if g.arms is not None]
    k, arms = max(lists, key=lambda t: (len(t[1]), t[0] == -1), default=(None, []))
    return k if len(arms) > 1 else None


def plan_for_budget(cfg: BenchmarkConfig, minutes: float, estimate: Callable[[BenchmarkConfig], float]
                    ) -> tuple[BenchmarkConfig, list[str]]:
    """Shrink the grid until ``estimate(config)`` (seconds; :func:`estimate_grid` in a run) fits ``minutes``: fewer
    seeds (down to 3), then fewer synthetic arms (from the end of the longest arm list, the grid's or a generator's
    own, keeping the first of each), then fewer generators (from the end). Returns the new config and what was
    dropped."""
    notes: list[str] = []
    cur = cfg
    while estimate(cur) > minutes * 60:
        if cur.seeds > 3:
            cur = cur.model_copy(update={"seeds": cur.seeds - 1})
            notes.append(f"seeds -> {cur.seeds}")
        elif longest_arms(cur) is not None:
            k = longest_arms(cur)
            if k < 0:
                notes.append(f"dropped arm {cur.arms[-1]}")
                cur = cur.model_copy(update={"arms": cur.arms[:-1]})
            else:
                g = cur.generators[k]
                notes.append(f"dropped arm {g.arms[-1]} of generator {g.label}")
                gens = list(cur.generators)
                gens[k] = g.model_copy(update={"arms": g.arms[:-1]})
                cur = cur.model_copy(update={"generators": gens})
        elif len(cur.generators) > 1:
            notes.append(f"dropped generator {cur.generators[-1].label}")
            cur = cur.model_copy(update={"generators": cur.generators[:-1]})
        else:
            notes.append(f"the smallest grid still needs about {estimate(cur) / 60:.0f} min")
            break
    return cur, notes


def arm_train_images(arm: str, train: ImageDataset, strategy: Any) -> int:
    """Images one epoch of an arm's task network sees (synthetic-pretrain+finetune: both phases' sets)."""
    from medbalance.experiments.downstream import PRETRAIN_ARM, arm_plan

    spec = parse_arm(arm)
    _, dup, counts = arm_plan(spec, train.labels.numpy(), train.class_names, strategy, 0)
    syn = sum(counts.values())
    if spec.base == "synthetic-only":
        return syn
    return len(train) + len(dup) + syn if spec.base != PRETRAIN_ARM else len(train) + syn


def estimate_grid(cfg: BenchmarkConfig, train: ImageDataset, cell_seconds: float, gen_seconds: dict[str, float],
                  done: set[str] | None = None) -> dict[str, Any]:
    """How long the grid of ``cfg`` takes, from one measured ``real``-arm cell (``cell_seconds``) and each
    generator's training time (``gen_seconds``, by label).

    - an arm cell: ``cell_seconds`` x (images per epoch of the arm / real training images);
    - a generator: its ``gen_seconds`` (Red-GAN: + its segmentor, ``segmentor_epochs / epochs`` x a real cell);
    - a fidelity cell: half a real cell (pool, features, privacy pass; measured 0.1-1.4x on brain-tumor-mri);
    - once per split: the domain encoder (``fidelity_extractor: domain``), 10 epochs;
    - not counted: loading the dataset, generating each seed's synthetic pool.

    ``done``: cell keys already finished in a resumed folder, and ``s<N>/segmentor`` / ``s<N>/domain_encoder`` for
    the shared models already trained there; ``remaining_seconds`` leaves them out."""
    done = done or set()
    n_real = max(1, len(train))
    per_arm: dict[str, float] = {}
    rows: dict[str, dict[str, float]] = {}

    def add(what: str, seconds: float, finished: bool) -> None:
        r = rows.setdefault(what, {"cells": 0, "seconds": 0.0, "remaining_seconds": 0.0})
        r["cells"] += 1
        r["seconds"] += seconds
        if not finished:
            r["remaining_seconds"] += seconds

    red = next((g for g in cfg.generators if needs_grid_segmentor(g)), None)  # it trains the split's segmentor
    for c in plan_cells(cfg):
        fin = c.key in done
        if c.kind == "arm":
            if c.arm not in per_arm:
                per_arm[c.arm] = cell_seconds * arm_train_images(c.arm, train, cfg.strategy) / n_real
            add("arm cells", per_arm[c.arm], fin)
        elif c.kind == "train":
            sec = gen_seconds.get(c.gen.label, 0.0)
            add("generator training", sec, fin)
        elif c.kind == "fidelity":
            add("fidelity cells", 0.5 * cell_seconds, fin)
        elif c.kind == "feature":
            add("feature-level experiment", gen_seconds.get(c.gen.label, 0.0), fin)
    for s in cfg.split_seeds:  # per split, shared by the generators (cached in OUT/splits/s<N>/<name>)
        if red is not None:
            add("Red-GAN segmentor", cell_seconds * red.segmentor_epochs / cfg.epochs, f"s{s}/segmentor" in done)
        if cfg.fidelity and cfg.fidelity_extractor == "domain" and any(g.model != FEATURE_MODEL for g in cfg.generators):
            add("domain encoder", cell_seconds * 10 / cfg.epochs, f"s{s}/domain_encoder" in done)
    total = sum(r["seconds"] for r in rows.values())
    remaining = sum(r["remaining_seconds"] for r in rows.values())
    return {"cell_seconds": round(cell_seconds, 1), "real_train_images": n_real,
            "arm_seconds": {a: round(v, 1) for a, v in per_arm.items()},
            "generator_seconds": {k: round(v, 1) for k, v in gen_seconds.items()},
            "rows": {k: {"cells": v["cells"], "seconds": round(v["seconds"], 1),
                         "remaining_seconds": round(v["remaining_seconds"], 1)} for k, v in rows.items()},
            "total_seconds": round(total, 1), "remaining_seconds": round(remaining, 1),
            "cells": len(plan_cells(cfg)), "cells_done": len(done & {c.key for c in plan_cells(cfg)})}


# ---------------------------------------------------------------------------------------------- the runner
class Benchmark:
    def __init__(self, cfg: BenchmarkConfig, out: str | Path, data: ImageDataset | None = None, command: str = "",
                 jobs: int = 1):
        self.cfg = cfg
        self.out = Path(out)
        self.command = command
        self.jobs = max(1, int(jobs))
        self._data = data
        self._splits: dict[int, Split] = {}
        self._runs: dict[str, Any] = {}
        self._sources: dict[str, SyntheticSource] = {}
        self.warnings: list[str] = []
        self.budget_notes: list[str] = []

    # ---------------------------------------------------------------- data
    @property
    def data(self) -> ImageDataset:
        if self._data is None:
            from medbalance.data.sources import load_dataset

            self._data = load_dataset(self.cfg.data)
        return self._data

    def _duplicate_splits(self) -> list[tuple[int, int]]:
        """Pairs of split seeds whose validation and test sets are identical (likely with few patient groups)."""
        seen: dict[tuple[frozenset, frozenset], int] = {}
        pairs = []
        for s in self.cfg.split_seeds:
            sp = self.split(s)
            key = (frozenset(sp.val.ids), frozenset(sp.test.ids))
            if key in seen:
                pairs.append((seen[key], s))
            else:
                seen[key] = s
        return pairs

    def split(self, s: int) -> Split:
        if s not in self._splits:
            self._splits[s] = make_split(self.data, self.cfg.downstream(s))
        return self._splits[s]

    def cell_path(self, cell: Cell) -> Path:
        return self.out / "cells" / f"{cell.key}.json"

    # ---------------------------------------------------------------- cells
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        if cell.kind == "train":
            return self._train(cell)
        if cell.kind == "fidelity":
            return self._fidelity(cell)
        if cell.kind == "feature":
            return self._feature(cell)
        split = self.split(cell.split)
        source = self._source(cell) if cell.gen is not None else None
        m, comp = train_arm(cell.arm, split, self.cfg.downstream(cell.split, cell.gen), cell.seed, source, self.data)
        m["composition"] = comp
        return m

    def run_and_save(self, cell: Cell) -> tuple[dict[str, Any], float]:
        """Run ``cell``, write its result (with ``cell_seconds``) atomically; returns (result, seconds)."""
        t0 = time.perf_counter()
        res = self.run_cell(cell)
        dt = time.perf_counter() - t0
        res["cell_seconds"] = round(dt, 2)
        atomic_write_json(self.cell_path(cell), res)
        return res, dt

    def _gen_dir(self, cell: Cell) -> Path:
        return self.out / "generators" / f"s{cell.split}" / cell.gkey

    def _train(self, cell: Cell) -> dict[str, Any]:
        from medbalance.training.engine import train

        g, split = cell.gen, self.split(cell.split)
        gdir = self._gen_dir(cell)
        overrides = list(g.overrides)
        extra: dict[str, Any] = {}
        if needs_grid_segmentor(g):
            seg = self._segmentor(cell.split, g.segmentor_epochs)
            overrides.append(f"model.params.segmentor={seg}")
            extra["segmentor"] = str(seg)
        train_sec: dict[str, Any] = {"seed": cell.gseed, "device": self.cfg.device, "tensorboard": False}
        if g.steps is not None:
            train_sec["steps"] = g.steps
        elif g.epochs is not None:
            train_sec["epochs"] = g.epochs
        elif g.minutes is not None:  # calibrated once; a resumed run keeps the same number of steps
            cal_path = gdir.parent / f"{cell.gkey}.calibration.json"
            if cal_path.is_file():
                extra["calibration"] = read_json(cal_path)
            else:
                speed = self._step_speed(g, cell, overrides)
                extra["calibration"] = {"minutes": g.minutes, "seconds_per_step": speed.seconds_per_step,
                                        "steps": speed.steps_in(g.minutes * 60)}
                if speed.phase_steps:  # two training phases, timed separately
                    extra["calibration"].update(phase_steps=speed.phase_steps,
                                                seconds_per_step_after=speed.seconds_per_step_after)
                atomic_write_json(cal_path, extra["calibration"])
            train_sec["steps"] = int(extra["calibration"]["steps"])
        rcfg = self._run_config(g, gdir, train_sec, overrides)
        total = rcfg.train.steps
        if total is not None:
            rcfg.train.checkpoint_every = max(1, min(rcfg.train.checkpoint_every or total, max(1, total // 5)))
        resume = (gdir / "checkpoints").is_dir() and any((gdir / "checkpoints").iterdir())
        if not resume and gdir.exists():
            shutil.rmtree(gdir)
        t0 = time.perf_counter()
        res = train(rcfg, dataset=split.train, resume=resume)
        return {"steps": rcfg.train.steps, "epochs": rcfg.train.epochs, "seconds": round(time.perf_counter() - t0, 1),
                "images_per_s": round(float(res.images_per_s), 2), "run_dir": str(gdir), "resumed": resume, **extra}

    def _run_config(self, g: GeneratorSpec, out_dir: Path, train_sec: dict[str, Any], overrides: list[str]) -> Any:
        """The RunConfig of generator ``g`` on the benchmark's data (its ``overrides`` applied last)."""
        from medbalance.training.config import RunConfig

        raw = {"out_dir": str(out_dir), "data": self.cfg.data.model_dump(mode="json"),
               "model": {"name": g.model, "preset": g.preset}, "train": train_sec}
        return RunConfig.from_dict(apply_overrides(raw, overrides), source=f"generator {g.label}")

    def _calibrate(self, g: GeneratorSpec, cell: Cell, overrides: list[str]) -> float:
        """Seconds per step of this generator here: runs of 3 and 13 steps in a scratch folder after a 3-step warm-up
        run (first-use costs: imports, kernel selection), timed as the difference / 10."""
        from medbalance.training.engine import train

        tmp = self.out / "generators" / f"s{cell.split}" / f".calibrate-{cell.gkey}"
        shutil.rmtree(tmp, ignore_errors=True)
        times = []
        for steps in (3, 3, 13):
            sec = {"steps": steps, "seed": cell.gseed, "device": self.cfg.device, "tensorboard": False,
                   "checkpoint_every": steps, "sample_every": steps}
            rcfg = self._run_config(g, tmp / f"{len(times)}-{steps}", sec, overrides)
            t0 = time.perf_counter()
            train(rcfg, dataset=self.split(cell.split).train)
            times.append(time.perf_counter() - t0)
        shutil.rmtree(tmp, ignore_errors=True)
        return round(max((times[2] - times[1]) / 10, 1e-3), 4)

    def _step_speed(self, g: GeneratorSpec, cell: Cell, overrides: list[str]) -> "StepSpeed":
        """:meth:`_calibrate`, in each training phase of a model that declares two (``GANMethod.phase_param``;
        latent diffusion: ``ae_steps`` autoencoder steps, then U-Net steps, which are 2x faster at 64 px here)."""
        from medbalance.models.registry import MODELS, ensure_registered

        sps = self._calibrate(g, cell, overrides)
        ensure_registered()
        key = MODELS.get(g.model).method.phase_param
        phase = int(self._run_config(g, self.out, {}, overrides).model.params.get(key) or 0) if key else 0
        if not phase:
            return StepSpeed(sps)
        return StepSpeed(sps, phase, self._calibrate(g, cell, [*overrides, f"model.params.{key}=0"]))

    def _segmentor(self, s: int, epochs: int) -> Path:
        """A segmentor trained on split ``s``'s training images (Red-GAN's frozen third player), cached."""
        from medbalance.training.task import TaskConfig, train_task_model

        folder = self.out / "splits" / f"s{s}" / "segmentor"
        if (folder / "model.json").is_file():
            return folder
        split = self.split(s)
        if split.train.masks is None:
            raise DataError("Red-GAN needs label maps to train its segmentor; the dataset has none")
        tcfg = TaskConfig(task="segmentation", epochs=epochs, seed=s, device=self.cfg.device, progress=False)
        train_task_model(split.train, split.val, tcfg, out_dir=folder)
        return folder

    def _run(self, cell: Cell) -> Any:
        from medbalance.training.run import load_run
        from medbalance.utils.device import select_device

        key = f"s{cell.split}/{cell.gkey}"
        if key not in self._runs:
            folder = Path(cell.gen.run) if cell.gen.run is not None else self._gen_dir(cell)
            run = load_run(folder, device=select_device(self.cfg.device))
            self.warnings += leakage_guard(run, self.split(cell.split), allow_val_overlap=False)
            self._runs[key] = run
        return self._runs[key]

    def _source(self, cell: Cell) -> SyntheticSource:
        key = f"s{cell.split}/{cell.gkey}"
        if key not in self._sources:
            self._sources[key] = SyntheticSource(run=self._run(cell), mask_pool=self.cfg.mask_pool,
                                                 strategy=self.cfg.strategy,
                                                 cache_dir=self._gen_dir(cell) / "synthetic")
        return self._sources[key]

    def _fidelity(self, cell: Cell) -> dict[str, Any]:
        """Fidelity, diversity and privacy of the images the arms of classifier seed 0 use (its pool), through the
        downstream experiment's :func:`evaluate_synthetic`."""
        split = self.split(cell.split)
        src = self._source(cell)
        need = pool_needs(self.cfg.arms_of(cell.gen), split.train, self.cfg.strategy)
        flt = None if None in need else next(iter(need), None)
        want = need.get(flt)
        if not want or not sum(want.values()):
            return {"skipped": "no synthetic images to evaluate"}
        src.pool(split, want, 0, self.cfg.mask_source, flt)
        opts = ({"weights": str(self._domain_encoder(cell.split))} if self.cfg.fidelity_extractor == "domain"
                else None)
        ev = evaluate_synthetic(src, split, self.cfg.downstream(cell.split, cell.gen), self.cfg.fidelity_extractor, opts)
        return {"pool": f"seed0/{flt or 'none'}", "n": ev["n_synthetic"], "evaluation": ev}

    def _domain_encoder(self, s: int) -> Path:
        from medbalance.training.task import train_domain_encoder

        folder = self.out / "splits" / f"s{s}" / "domain_encoder"
        if not (folder / "model.json").is_file():
            split = self.split(s)
            train_domain_encoder(split.train, folder, epochs=10, seed=s, device=self.cfg.device, progress=False)
        return folder

    def _feature(self, cell: Cell) -> dict[str, Any]:
        from medbalance.experiments.feature_downstream import FeatureAugmentConfig, run_feature_augment

        g = cell.gen
        base = {"preset": g.preset, "seeds": list(range(self.cfg.seeds)), "split_seed": cell.split,
                "fractions": list(self.cfg.fractions), "subsample": dict(self.cfg.subsample),
                "strategy": self.cfg.strategy, "device": self.cfg.device, "progress": False,
                **({"acgan": {"epochs": g.epochs}} if g.epochs is not None else {})}
        # overrides of a feature-level row are FeatureAugmentConfig keys, e.g. segmentor.epochs=4
        fcfg = FeatureAugmentConfig.from_dict(apply_overrides(base, g.overrides), source=f"generator {g.label}")
        folder = self._gen_dir(cell)
        t0 = time.perf_counter()
        rep = run_feature_augment(self.data, fcfg, folder)
        return {"results": rep["results"], "seconds": round(time.perf_counter() - t0, 1), "folder": str(folder)}

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        from medbalance.utils.io import folder_lock

        self.out.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.out):
            return self._run_all()

    def summarize(self) -> dict[str, Any]:
        """benchmark.json and leaderboard.md from the cells finished so far, running nothing (works while the
        benchmark runs in another process); rows of unfinished generators are left out, ``cells`` says how many
        are done."""
        saved = self.out / "benchmark.yaml"
        if not saved.is_file():
            raise ConfigError("no benchmark here (benchmark.yaml is missing)", path=self.out)
        from medbalance.config import read_yaml

        doc = read_yaml(saved)
        planned = doc.pop("planned", None)
        if planned is not None:
            doc.update(planned["used"])
            self.budget_notes = planned["notes"]
        self.cfg = BenchmarkConfig.from_dict(doc, source=saved)
        report = self.collect()
        report["partial"] = report["cells"]["done"] < report["cells"]["total"]
        atomic_write_json(self.out / "benchmark.json", report)
        atomic_write_text(self.out / "leaderboard.md", leaderboard_markdown(report))
        return report

    def _run_all(self) -> dict[str, Any]:
        saved = self.out / "benchmark.yaml"
        asked = json.loads(json.dumps(self.cfg.model_dump(mode="json")))
        doc: dict[str, Any] | None = dict(asked)
        if saved.is_file():
            from medbalance.config import read_yaml

            old = read_yaml(saved)
            planned = old.pop("planned", None)  # what --budget changed (seeds, arms, generators)
            old_asked = {**old, **(planned["asked"] if planned else {})}
            try:  # keys added to the config since the folder was written take their defaults (same behaviour)
                old_asked = json.loads(json.dumps(BenchmarkConfig.from_dict(old_asked).model_dump(mode="json")))
            except ConfigError:
                pass  # compared as written: the difference is reported below
            if old_asked == asked:  # a plain resume
                doc = None
                if planned is not None:
                    used = BenchmarkConfig.from_dict({**asked, **planned["used"]})
                    self.cfg = self.cfg.model_copy(update={k: getattr(used, k) for k in planned["used"]})
                    self.budget_notes = planned["notes"]
            else:
                self._check_extension(old_asked, asked, saved)
                console.print("extending the benchmark: cells already finished are kept, new ones are added")
        elif self.cfg.budget_minutes is not None:
            self.cfg, self.budget_notes = self._plan_budget()
            used = json.loads(json.dumps(self.cfg.model_dump(mode="json")))
            doc["planned"] = {"asked": {k: asked[k] for k in BUDGET_AXES}, "used": {k: used[k] for k in BUDGET_AXES},
                              "notes": self.budget_notes}
        same = self._duplicate_splits()
        if same:
            a, b = same[0]
            raise ConfigError(
                f"split seeds {a} and {b} give the same split (same validation and test "
                f"{'groups' if self.data.groups is not None else 'images'}), so repeated splits would count one split "
                "twice; use other split_seeds (with few patients, check which seeds give distinct test patients)")
        if doc is not None:
            import yaml

            atomic_write_text(saved, yaml.safe_dump(doc, sort_keys=False))
        check_arms([*self.cfg.baselines, *self.cfg.arms, *(a for g in self.cfg.generators for a in g.arms or [])])
        if self.cfg.task == "segmentation" and self.data.masks is None:
            raise DataError("segmentation needs label maps, the dataset has none", path=self.data.meta.get("path"))
        for s in self.cfg.split_seeds:  # leakage of given runs is refused before any work
            for g in self.cfg.generators:
                if g.run is not None:
                    for gs in self.cfg.generator_seeds:
                        self._run(Cell("arm", s, gen=g, gseed=gs))
        cells = plan_cells(self.cfg)
        todo = [c for c in cells if not self.cell_path(c).is_file()]
        if len(todo) < len(cells):
            console.print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells done, {len(todo)} to go")
        t_start = time.perf_counter()
        durations: dict[str, list[float]] = {}
        with make_progress() as bar:
            task = bar.add_task("benchmark", total=len(cells), completed=len(cells) - len(todo))
            if self.jobs > 1 and len(todo) > 1:
                self._run_parallel(cells, todo, bar, task, durations)
                todo = []
            for cell in todo:
                est = durations.get(cell.kind)
                eta = f" (~{np.mean(est):.0f} s)" if est else ""
                bar.update(task, description=f"{cell.describe()}{eta}")
                _, dt = self.run_and_save(cell)
                durations.setdefault(cell.kind, []).append(dt)
                bar.advance(task)
                if not console.is_terminal:  # batch jobs (log files): one line per finished cell
                    done_n = int(bar.tasks[0].completed)
                    console.print(f"[{done_n}/{len(cells)}] {cell.describe()}: {dt:.0f} s")
        report = self.collect(seconds=time.perf_counter() - t_start)
        atomic_write_json(self.out / "benchmark.json", report)
        atomic_write_text(self.out / "leaderboard.md", leaderboard_markdown(report))
        return report

    def _measure(self, keep: bool) -> tuple[float, dict[str, float]]:
        """Seconds of one ``real``-arm cell (classifier seed 0; saved as a cell of the grid when ``keep``) and of
        each generator's training (its step count x the calibrated seconds per step)."""
        split = self.split(self.cfg.split_seeds[0])
        cell = Cell("arm", self.cfg.split_seeds[0], "real", 0)
        if keep:  # a real cell of the grid: kept
            _, cell_s = self.run_and_save(cell)
        else:
            t0 = time.perf_counter()
            self.run_cell(cell)
            cell_s = time.perf_counter() - t0
        gen_s: dict[str, float] = {}
        for g in self.cfg.generators:
            if g.run is not None:
                continue
            if g.minutes is not None:
                gen_s[g.label] = g.minutes * 60
            elif g.model == FEATURE_MODEL:
                gen_s[g.label] = 6 * cell_s * self.cfg.seeds  # segmentor + ACGAN + small classifiers, roughly
            else:
                c = Cell("train", self.cfg.split_seeds[0], gen=g, gseed=self.cfg.generator_seeds[0])
                overrides = list(g.overrides)
                if needs_grid_segmentor(g):
                    # the grid's segmentor when kept; for a scratch estimate only its speed matters (1 epoch)
                    seg = self._segmentor(c.split, g.segmentor_epochs if keep else 1)
                    overrides.append(f"model.params.segmentor={seg}")
                speed = self._step_speed(g, c, overrides)
                steps = g.steps if g.steps is not None else (g.epochs or 1) * math.ceil(len(split.train) / 32)
                gen_s[g.label] = speed.seconds_for(steps)
        return cell_s, gen_s

    def _run_parallel(self, cells: list[Cell], todo: list[Cell], bar: Any, task: Any,
                      durations: dict[str, list[float]]) -> None:
        """Run ``todo`` in ``self.jobs`` worker processes (``--jobs``). Each worker writes its cells' files itself,
        so a failure or an interruption keeps every finished cell. A generator's arm and fidelity cells wait for its
        training cell; cells that share a synthetic pool (same generator and classifier seed) never run at the same
        time, so a pool is generated once. What every worker would build on first use (Red-GAN's segmentor, the
        domain encoder) is built here first. Generator training is started first: it is the longest work."""
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from multiprocessing import get_context

        import torch

        for s in sorted({c.split for c in todo}):
            red = next((c.gen for c in todo if c.kind == "train" and c.split == s and needs_grid_segmentor(c.gen)), None)
            if red is not None:  # as in a serial run: the first Red-GAN of the plan trains the split's segmentor
                self._segmentor(s, red.segmentor_epochs)
            if self.cfg.fidelity_extractor == "domain" and any(c.kind == "fidelity" and c.split == s for c in todo):
                self._domain_encoder(s)
        finished = {c.key for c in cells} - {c.key for c in todo}
        pending = sorted(todo, key=lambda c: c.kind != "train")  # stable: otherwise the plan's order
        running: dict[Any, Cell] = {}
        cuda = self.cfg.device not in ("cpu",) and torch.cuda.is_available()
        threads = None if cuda else max(1, (torch.get_num_threads() or 1) // self.jobs)
        doc = json.loads(json.dumps(self.cfg.model_dump(mode="json")))
        n_total = len(cells)
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(doc, str(self.out), threads, self._data)) as ex:
            try:
                while pending or running:
                    pools = {_pool_key(c) for c in running.values()} - {None}
                    for c in list(pending):
                        if len(running) >= self.jobs:
                            break
                        dep, pk = _train_key(c), _pool_key(c)
                        if (dep is not None and dep not in finished) or (pk is not None and pk in pools):
                            continue
                        running[ex.submit(_worker_cell, c)] = c
                        pending.remove(c)
                        pools.add(pk)
                    bar.update(task, description=" | ".join(c.describe() for c in running.values()))
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        c = running.pop(f)
                        key, dt, warns = f.result()
                        finished.add(key)
                        self.warnings += [w for w in warns if w not in self.warnings]
                        durations.setdefault(c.kind, []).append(dt)
                        bar.advance(task)
                        if not console.is_terminal:
                            console.print(f"[{int(bar.tasks[0].completed)}/{n_total}] {c.describe()}: {dt:.0f} s")
            except BaseException:
                ex.shutdown(wait=True, cancel_futures=True)  # running cells finish and are kept; queued ones are not
                raise

    def _plan_budget(self) -> tuple[BenchmarkConfig, list[str]]:
        """Measure one classifier cell and each generator's speed, then shrink the grid to ``budget_minutes`` by
        :func:`estimate_grid` (the estimate ``--estimate`` prints)."""
        train = self.split(self.cfg.split_seeds[0]).train
        cell_s, gen_s = self._measure(keep=True)

        def estimate(c: BenchmarkConfig) -> float:
            return estimate_grid(c, train, cell_s, gen_s)["total_seconds"]

        cfg, notes = plan_for_budget(self.cfg, self.cfg.budget_minutes, estimate)
        notes.insert(0, f"measured: {cell_s:.0f} s per real-arm cell; generators "
                     + ", ".join(f"{k} ~{v / 60:.1f} min" for k, v in gen_s.items()))
        notes.append(f"planned grid: about {estimate(cfg) / 60:.0f} min")
        for n in notes:
            console.print(f"[dim]budget: {n}[/dim]")
        return cfg, notes

    def estimate(self) -> dict[str, Any]:
        """How long this grid takes here, without running it: one ``real``-arm cell and a short calibration of
        each generator are measured in a scratch folder (``OUT`` is only read, for the cells already done), then
        :func:`estimate_grid` scales them to every cell."""
        import tempfile

        done = {c.key for c in plan_cells(self.cfg) if self.cell_path(c).is_file()}
        done |= {f"s{s}/{name}" for s in self.cfg.split_seeds for name in ("segmentor", "domain_encoder")
                 if (self.out / "splits" / f"s{s}" / name / "model.json").is_file()}
        with tempfile.TemporaryDirectory(prefix="medbalance-estimate-") as tmp:
            seg = self.out / "splits" / f"s{self.cfg.split_seeds[0]}" / "segmentor"
            if (seg / "model.json").is_file():  # Red-GAN's segmentor of this folder: timed, not retrained
                shutil.copytree(seg, Path(tmp) / "splits" / f"s{self.cfg.split_seeds[0]}" / "segmentor")
            scratch = Benchmark(self.cfg, tmp, data=self.data)
            scratch._splits = self._splits
            t0 = time.perf_counter()
            cell_s, gen_s = scratch._measure(keep=False)
            measured = time.perf_counter() - t0
        est = estimate_grid(self.cfg, self.split(self.cfg.split_seeds[0]).train, cell_s, gen_s, done)
        est["measurement_seconds"] = round(measured, 1)
        return est

    @staticmethod
    def _check_extension(old: dict[str, Any], new: dict[str, Any], saved: Path) -> None:
        """A benchmark folder can be extended (more generators, arms, baselines, seeds, splits) but every setting a
        finished cell depends on must stay the same, and so must each generator kept under the same name."""
        diff = sorted(k for k in set(old) | set(new) if k not in GRID_AXES and old.get(k) != new.get(k))
        def gens(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:  # unset keys (None) compare equal to absent ones
            return {g.get("name") or g["model"]: {k: v for k, v in g.items() if v is not None}
                    for g in cfg.get("generators") or []}

        old_g, new_g = gens(old), gens(new)
        changed = [n for n, g in new_g.items() if n in old_g and old_g[n] != g]
        if diff or changed:
            what = ", ".join(diff + [f"generator {n}" for n in changed])
            raise ConfigError(f"this folder holds a benchmark with another configuration ({what} differ); resume it "
                              "with the same settings (its benchmark.yaml), extend it only with more generators, arms, "
                              "baselines or seeds, or choose another output folder", path=saved)

    # ---------------------------------------------------------------- results
    def collect(self, seconds: float | None = None) -> dict[str, Any]:
        cfg = self.cfg
        cells = plan_cells(cfg)
        done = {c.key: read_json(self.cell_path(c)) for c in cells if self.cell_path(c).is_file()}
        split0 = self.split(cfg.split_seeds[0])
        counts = split0.train.class_counts()
        minority = min(counts, key=lambda c: counts[c])
        class_names = list(self.data.class_names)
        primary = cfg.primary_metrics or (
            [f"recall/{minority}", "balanced_accuracy"] if cfg.task == "classification" else ["dice_foreground"])
        table = metric_table(cfg.task, class_names)
        for m in primary:
            if m not in table:
                raise ConfigError(f"unknown primary metric {m!r}; allowed: {', '.join(table)}")
        reps = [(s, seed) for s in cfg.split_seeds for seed in range(cfg.seeds)]

        def values(gkey: str, arm: str, metric: str, gseeds: list[int] | None = None) -> list[float]:
            out = []
            for s, seed in reps:
                vs = []
                for gs in (gseeds if gseeds is not None else [None]):
                    gk = gkey if gs is None else f"{gkey}-g{gs}"
                    r = done.get(arm_key(s, gk, arm, seed))
                    if r is not None:
                        vs.append(float(table[metric](r)))
                out.append(float(np.mean(vs)) if vs else float("nan"))
            return out

        baselines: dict[str, Any] = {}
        base_vals: dict[str, dict[str, list[float]]] = {}
        for a in cfg.baselines:
            base_vals[a] = {m: values("baseline", a, m) for m in table}
            baselines[a] = {m: _summary(v) for m, v in base_vals[a].items() if not all(math.isnan(x) for x in v)}
        best = {m: max(cfg.baselines, key=lambda a: _nanmean(base_vals[a][m])) for m in primary}

        rows: list[dict[str, Any]] = []
        generators: dict[str, Any] = {}
        for g in cfg.generators:
            if g.model == FEATURE_MODEL:
                rows += self._feature_rows(g, done, reps, primary, table, baselines, generators)
                continue
            generators[g.label] = self._generator_info(g, done)
            for arm in cfg.arms_of(g):
                mvals = {m: values(g.label, arm, m, list(cfg.generator_seeds)) for m in table}
                if all(math.isnan(x) for x in mvals[primary[0]]):
                    continue
                row = {"generator": g.label, "arm": arm, "kind": "image",
                       "metrics": {m: _summary(v) for m, v in mvals.items() if not all(math.isnan(x) for x in v)},
                       "vs_best_baseline": {m: {"baseline": best[m], **paired_difference(mvals[m], base_vals[best[m]][m])}
                                            for m in primary},
                       "vs_real": {m: {"baseline": "real", **paired_difference(mvals[m], base_vals["real"][m])}
                                   for m in primary}}
                rows.append(row)
        _holm_verdicts(rows, primary, cfg.alpha)
        rows.sort(key=lambda r: -_nan0(r["vs_best_baseline"][primary[0]]["diff"]))
        variance = ["classifier seed (initialisation, data order, which synthetic images)"]
        if len(cfg.split_seeds) > 1:
            variance.append(f"split ({len(cfg.split_seeds)} split seeds)")
        else:
            variance.append("NOT the split (one split: every number is conditional on it)")
        if len(cfg.generator_seeds) > 1:
            variance.append(f"generator training seed ({len(cfg.generator_seeds)}, averaged per replicate)")
        else:
            variance.append("NOT the generator's training seed (one generator per split)")
        return {
            "kind": "medbalance-benchmark", "version": 1, "task": cfg.task,
            "dataset": str(cfg.data.path), "class_names": class_names,
            "minority": minority if cfg.task == "classification" else None,  # slice classes: no segmentation target
            "train_class_counts": counts, "split_sizes": {k: len(getattr(split0, k)) for k in ("train", "val", "test")},
            "primary_metrics": primary, "variance_sources": variance, "n_replicates": len(reps),
            "baselines": baselines, "best_baseline": best, "generators": generators, "leaderboard": rows,
            "tests": {"method": "paired t-test across replicates (split x classifier seed) on the difference to the "
                      "baseline; Holm over every leaderboard comparison of each family (vs best baseline, vs real)",
                      "alpha": cfg.alpha, "n_comparisons": len(rows) * len(primary)},
            "cells": {"done": len(done), "total": len(cells)},
            "seconds": None if seconds is None else round(seconds, 1),
            "cell_seconds_total": round(sum(float(r.get("cell_seconds", 0)) for r in done.values()), 1),
            "command": self.command, "budget_notes": self.budget_notes,
            "warnings": self.warnings + [f"split seeds {a} and {b} give the same split: its replicates count twice"
                                         for a, b in self._duplicate_splits()],
            "config": cfg.model_dump(mode="json"),
        }

    def _generator_info(self, g: GeneratorSpec, done: dict[str, Any]) -> dict[str, Any]:
        s, gs = self.cfg.split_seeds[0], self.cfg.generator_seeds[0]
        tr = done.get(Cell("train", s, gen=g, gseed=gs).key) or {}
        fid = done.get(Cell("fidelity", s, gen=g, gseed=gs).key) or {}
        ev = fid.get("evaluation") or {}
        fo = (ev.get("fidelity") or {}).get("overall") or {}
        div = ev.get("diversity") or {}
        priv = ev.get("privacy") or {}
        pv = priv.get("pixels") or {} if isinstance(priv, dict) else {}
        return {
            "model": g.model, "preset": g.preset, "steps": tr.get("steps"), "train_seconds": tr.get("seconds"),
            "kind": "image", "run": g.run,
            "fidelity": {k: fo.get(k) for k in ("fd", "kid", "precision", "recall", "density", "coverage")}
            | {"extractor": self.cfg.fidelity_extractor} if fo else None,
            "diversity": _diversity(div),
            "privacy": _privacy(pv) if pv else None,
            "synthetic_evaluated": fid.get("n"),
        }

    def _feature_rows(self, g, done, reps, primary, table, baselines, generators) -> list[dict[str, Any]]:
        """The feature-level method: its arms against its own feature-level baselines."""
        res_by_split = {s: (done.get(Cell("feature", s, gen=g, gseed=self.cfg.generator_seeds[0]).key) or {})
                        .get("results") for s in self.cfg.split_seeds}
        if not all(res_by_split.values()):
            return []

        def vals(arm: str, metric: str) -> list[float]:
            out = []
            for s, seed in reps:
                runs = [r for r in res_by_split[s].get(arm, []) if r.get("seed") == seed]
                out.append(float(table[metric](runs[0])) if runs else float("nan"))
            return out

        arms = list(next(iter(res_by_split.values())).keys())
        fb = [a for a in arms if a in ("real", "oversample")]
        fvals = {a: {m: vals(a, m) for m in table} for a in arms}
        for a in fb:
            baselines[f"feature:{a}"] = {m: _summary(v) for m, v in fvals[a].items()
                                         if not all(math.isnan(x) for x in v)}
        best = {m: max(fb, key=lambda a: _nanmean(fvals[a][m])) for m in primary}
        generators[g.label] = {"model": FEATURE_MODEL, "preset": g.preset, "kind": "feature", "steps": None,
                               "train_seconds": None, "fidelity": None, "diversity": None, "privacy": None}
        rows = []
        for a in arms:
            if a in fb:
                continue
            rows.append({"generator": g.label, "arm": a, "kind": "feature",
                         "metrics": {m: _summary(v) for m, v in fvals[a].items() if not all(math.isnan(x) for x in v)},
                         "vs_best_baseline": {m: {"baseline": f"feature:{best[m]}",
                                                  **paired_difference(fvals[a][m], fvals[best[m]][m])} for m in primary},
                         "vs_real": {m: {"baseline": "feature:real", **paired_difference(fvals[a][m], fvals["real"][m])}
                                     for m in primary}})
        return rows


def _diversity(div: dict[str, Any]) -> dict[str, Any] | None:
    """MS-SSIM between random same-class pairs (lower = more diverse), synthetic and real."""
    if not div:
        return None
    return {"ms_ssim": _num(div.get("synthetic")), "ms_ssim_real": _num(div.get("real"))}


def _privacy(pv: dict[str, Any]) -> dict[str, Any]:
    """Pixel-space distances to the closest training image: synthetic vs real held-out (validation) images."""
    return {"nn_distance_median": _num(pv.get("synthetic_dcr_median")),
            "real_nn_distance_median": _num(pv.get("holdout_dcr_median")),
            "memorization_rate": _num(pv.get("memorization_rate")), "exact_duplicates": pv.get("exact_duplicates"),
            "near_copies": pv.get("exact_duplicates"),
            "dcr_share": _num(pv.get("dcr_share")), "n": pv.get("n_synthetic")}


def _num(x: Any) -> float | None:
    if isinstance(x, dict):
        x = x.get("mean", x.get("value"))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _summary(v: list[float]) -> dict[str, Any]:
    d = summarize(v).to_dict()
    d.pop("std", None)
    return d


def _nanmean(v: list[float]) -> float:
    x = np.asarray(v, dtype=np.float64)
    return float(np.nanmean(x)) if np.any(~np.isnan(x)) else -math.inf


def _nan0(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x


def _holm_verdicts(rows: list[dict[str, Any]], primary: list[str], alpha: float) -> None:
    """Holm over every (row, primary metric) comparison of a family; a verdict per comparison and per row."""
    for fam in ("vs_best_baseline", "vs_real"):
        entries = [r[fam][m] for r in rows for m in primary]
        for e, p in zip(entries, holm([e["p"] for e in entries])):
            e["p_holm"] = p
            if p is not None and not math.isnan(p) and p < alpha and not math.isnan(e["diff"]) and e["diff"] != 0:
                e["verdict"] = "helps" if e["diff"] > 0 else "hurts"
            else:
                e["verdict"] = "no evidence"
    for r in rows:
        r["verdict"] = r["vs_best_baseline"][primary[0]]["verdict"]


# ---------------------------------------------------------------------------------------------- markdown
def _diff(v: dict[str, Any]) -> str:
    """``+0.012 [-0.030, +0.050] vs BASELINE, p=…`` of a paired comparison (``n/a`` without pairs)."""
    if not finite(v.get("diff")):
        return "n/a"
    return (f"{v['diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] vs {v['baseline']}, "
            f"p={fmt_num(v.get('p_holm'))} ({v.get('verdict', 'n/a')})")


def leaderboard_markdown(rep: dict[str, Any]) -> str:
    """The leaderboard as markdown tables (docs/results.md, OUT/leaderboard.md)."""
    prim = rep["primary_metrics"]
    lines = [f"**Partial: {rep['cells']['done']} of {rep['cells']['total']} cells finished.** "
             if rep.get("partial") else ""]
    minority = f"minority (rarest training class): {rep['minority']}; " if rep.get("minority") else ""
    lines[0] += (f"Task: {rep['task']}; {minority}"
                 f"{rep['n_replicates']} paired replicates; intervals cover: {'; '.join(rep['variance_sources'])}. "
                 f"Test: {rep['tests']['method']}, alpha {rep['tests']['alpha']}.")
    lines.append("")
    lines += ["| baseline | " + " | ".join(prim) + " |", "|---|" + "---|" * len(prim)]
    for a, ms in rep["baselines"].items():
        cells = []
        for m in prim:
            e = ms.get(m)
            star = " (best)" if rep["best_baseline"].get(m) == a else ""
            cells.append(fmt_ci(e) + star)
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "| generator | arm | " + " | ".join(f"{m} | Δ vs best baseline [CI], p_Holm (verdict)" for m in prim)
              + f" | verdict ({prim[0]}) |", "|---|---|" + "---|---|" * len(prim) + "---|"]
    for r in rep["leaderboard"]:
        cells = []
        for m in prim:
            e, v = r["metrics"].get(m), r["vs_best_baseline"][m]
            cells += [fmt_ci(e), _diff(v)]
        lines.append(f"| {r['generator']} | {r['arm']} | " + " | ".join(cells) + f" | **{r['verdict']}** |")
    gens = rep.get("generators") or {}
    if any(g.get("fidelity") or g.get("privacy") for g in gens.values()):
        lines += ["", "| generator | steps | train s | FD | KID | precision | recall | MS-SSIM (real) | "
                  "NN dist. syn->train (real held-out) |", "|---|---|---|---|---|---|---|---|---|"]
        for name, g in gens.items():
            f, d, p = g.get("fidelity") or {}, g.get("diversity") or {}, g.get("privacy") or {}
            lines.append(f"| {name} | {fmt_num(g.get('steps'))} | {fmt_num(g.get('train_seconds'), 0)} | "
                         f"{fmt_num(f.get('fd'))} | {fmt_num(f.get('kid'), 4)} | {fmt_num(f.get('precision'))} | "
                         f"{fmt_num(f.get('recall'))} | {fmt_num(d.get('ms_ssim'))} ({fmt_num(d.get('ms_ssim_real'))}) | "
                         f"{fmt_num(p.get('nn_distance_median'))} ({fmt_num(p.get('real_nn_distance_median'))}) |")
    return "\n".join(lines) + "\n"


def run_benchmark(cfg: BenchmarkConfig, out: str | Path, data: ImageDataset | None = None, command: str = "",
                  jobs: int = 1) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out``; returns the report written to ``out/benchmark.json``.
    ``jobs`` > 1 runs that many cells at once in worker processes (CPU threads split between them)."""
    return Benchmark(cfg, out, data, command, jobs=jobs).run()


# ---------------------------------------------------------------------------------------------- worker processes
_WORKER: dict[str, Any] = {}


def _worker_init(doc: dict[str, Any], out: str, threads: int | None, data: ImageDataset | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    _WORKER["bench"] = Benchmark(BenchmarkConfig.from_dict(doc), out, data=data)


def _worker_cell(cell: Cell) -> tuple[str, float, list[str]]:
    """Run one cell in a worker and write its file; returns (key, seconds, new warnings)."""
    b: Benchmark = _WORKER["bench"]
    n0 = len(b.warnings)
    _, dt = b.run_and_save(cell)
    return cell.key, dt, b.warnings[n0:]


def _train_key(c: Cell) -> str | None:
    """The training cell a generator's arm or fidelity cell waits for."""
    if c.kind in ("arm", "fidelity") and c.gen is not None and c.gen.run is None:
        return Cell("train", c.split, gen=c.gen, gseed=c.gseed).key
    return None


def _pool_key(c: Cell) -> tuple[int, str, int] | None:
    """Cells with the same key draw the same synthetic pool (fidelity: classifier seed 0's)."""
    if c.gen is None or c.kind not in ("arm", "fidelity"):
        return None
    return (c.split, c.gkey, 0 if c.kind == "fidelity" else int(c.seed))
