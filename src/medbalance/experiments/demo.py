"""``medbalance demo``: the whole pipeline on the built-in phantom, nothing to download.

Stages (each timed): 1. data: the procedural brain-MRI phantom, 3 lesion classes with imbalance 10:3:1, 64x64,
with label maps; 2. split: the downstream experiment's split; 3. generator: a class- and label-map-conditioned
generator trained on the **training split only**; 4. rebalance: downstream seed 0's synthetic pool brings every
class of the training split to the majority count, exported with provenance (``rebalanced/``); 5. evaluate:
:func:`~medbalance.experiments.downstream.evaluate_synthetic` on those same images (fidelity, diversity, privacy
against the held-out validation images); 6. downstream: ``real``, ``oversample`` and ``real+synthetic`` classifiers,
3 seeds, tested on real test data; 7. report: ``report.html`` + ``report.json``.

Every number in the report comes from this run; the resolved configs are saved in ``configs/``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from medbalance.errors import ConfigError
from medbalance.utils.io import atomic_write_json, sha256_bytes
from medbalance.utils.progress import console

# Generator used by the demo, chosen by measurement on this 2-core CPU: pix2pix (cpu preset, ngf 32) with a class
# embedding costs ~0.19 CPU-s per step at batch 16, 64x64 (bf16), and renders recognisable phantom slices with
# the class's lesion after a few hundred steps. SPADE is not class-conditional (the oversampler needs classes) and
# measured ~1.7x slower per step; Red-GAN (SPADE + class) would also need a segmentor trained first.
GENERATOR = {"name": "pix2pix", "preset": "cpu", "params": {"class_conditional": True}}

# Label maps for generation: the training masks of the same class, lesions elastically deformed (Red-GAN's
# augmentation) so that synthetic lesions are not copies of the training lesions; position (class-informative,
# e.g. extra-axial) is kept.
MASK_SOURCE = "elastic"

FULL = {"n": 600, "steps": 1200, "batch_size": 16, "epochs": 10, "seeds": 3}
QUICK = {"n": 300, "steps": 250, "batch_size": 16, "epochs": 5, "seeds": 3}


@dataclass
class DemoSettings:
    out: Path = Path("medbalance-demo")
    quick: bool = False
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False
    n: int | None = None  # overrides of QUICK / FULL (tests, experiments)
    steps: int | None = None
    epochs: int | None = None
    seeds: int | None = None


def demo_configs(settings: DemoSettings) -> dict[str, Any]:
    """The resolved data, generator-run and downstream configs of a demo."""
    from medbalance.data.config import DataConfig, PhantomConfig
    from medbalance.experiments.downstream import DownstreamConfig
    from medbalance.models.config import ModelConfig
    from medbalance.training.config import RunConfig, TrainConfig

    given = {k: getattr(settings, k) for k in ("n", "steps", "epochs", "seeds")}
    r = {**(QUICK if settings.quick else FULL), **{k: int(v) for k, v in given.items() if v is not None}}
    data = DataConfig(path="phantom", source="phantom",
                      phantom=PhantomConfig(n=r["n"], imbalance=[10.0, 3.0, 1.0], size=64, seed=settings.seed))
    steps = r["steps"]
    run = RunConfig(
        out_dir=str(Path(settings.out) / "generator"), data=data, model=ModelConfig(**GENERATOR),
        train=TrainConfig(
            steps=steps, batch_size=r["batch_size"], seed=settings.seed, device=settings.device,
            checkpoint_every=steps, sample_every=max(1, steps // 4), log_every=max(1, min(10, steps // 10)),
            tensorboard=False, val_fraction=0.0, keep_last=1,
        ),
    )
    downstream = DownstreamConfig(
        task="classification", arms=["real", "oversample", "real+synthetic"], seeds=list(range(r["seeds"])),
        split_seed=settings.seed, fractions=(0.6, 0.2, 0.2), strategy="auto", mask_source=MASK_SOURCE,
        allow_val_overlap=False, epochs=r["epochs"], batch_size=32, device=settings.device,
        fidelity=False,  # the demo's own evaluate stage measures these same images (seed 0's pool)
    )
    return {"settings": r, "data": data, "generator": run, "downstream": downstream}


class _Stages:
    """Numbered stage headers; the wall time of each stage in ``seconds``."""

    def __init__(self, total: int):
        self.total, self.seconds, self._name, self._t = total, {}, "", 0.0

    def start(self, name: str, what: str) -> dict[str, float]:
        """End the current stage (its time into ``seconds``, returned) and start ``name``."""
        if self._name:
            self.seconds[self._name] = round(time.perf_counter() - self._t, 1)
            console.print(f"[dim]{self._name}: {self.seconds[self._name]:.1f} s[/dim]")
        console.rule(f"[bold][{len(self.seconds) + 1}/{self.total}] {what}")
        self._name, self._t = name, time.perf_counter()
        return self.seconds


def _prepare_out(out: Path, overwrite: bool) -> None:
    """An empty demo folder: refused when it holds anything but a previous demo (replaced with ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise ConfigError("demo output exists and is not a folder", path=out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError("demo folder exists and is not empty (use --overwrite or another --out)", path=out)
        if not ((out / "demo.json").is_file() or (out / "configs" / "generator.yaml").is_file()):
            raise ConfigError("--overwrite only replaces a previous demo folder; this one is not (choose another "
                              "--out)", path=out)
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_demo(settings: DemoSettings, build_report: Callable[[Path], Path],
             make_verdicts: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> dict[str, Any]:
    """Run the demo into ``settings.out``; return a summary dict (``report`` = the HTML path). The report is a
    later layer (:mod:`medbalance.report`): ``medbalance demo`` passes its ``build_report`` and ``make_verdicts``."""
    from medbalance.data.sources import load_dataset
    from medbalance.experiments import downstream as D
    from medbalance.synthesis.export import export_dataset, model_card
    from medbalance.training.engine import train
    from medbalance.training.run import load_run
    from medbalance.utils.device import select_device

    t_all = time.perf_counter()
    out = Path(settings.out)
    select_device(settings.device)  # clear error for an unavailable device before any work
    _prepare_out(out, settings.overwrite)
    cfgs = demo_configs(settings)
    for name in ("data", "generator", "downstream"):
        cfgs[name].save(out / "configs" / f"{name}.yaml")
    st = _Stages(7)

    st.start("data", "phantom dataset (procedural brain MRI, 3 lesion classes, imbalance 10:3:1)")
    ds = load_dataset(cfgs["data"])
    # the phantom's label 1 is the intracranial space (anatomy): mask edits deform lesions only, never the brain
    ds.meta.setdefault("anatomy_values", [1])
    console.print(f"{len(ds)} images {ds.spatial_shape}, label maps {ds.mask_values}; per class {ds.class_counts()}")

    st.start("split", "train / validation / test split (stratified, grouped by subject)")
    dcfg, gcfg = cfgs["downstream"], cfgs["generator"]
    split = D.make_split(ds, dcfg)
    for part in ("train", "val", "test"):
        console.print(f"{part:5s} {len(getattr(split, part)):4d} images  {getattr(split, part).class_counts()}")

    st.start("generator", f"train {gcfg.model.name} (class + label-map conditioned) on the training split, "
             f"{gcfg.train.steps} steps")
    res = train(gcfg, dataset=split.train)
    console.print(f"{res.images_per_s:.1f} images/s; last losses "
                  + ", ".join(f"{k} {v:.3g}" for k, v in res.losses.items()))
    run = load_run(gcfg.out_dir, device=select_device(settings.device))

    st.start("rebalance", "rebalance the training split (strategy auto: every class to the majority count)")
    seed0, source = dcfg.seeds[0], D.SyntheticSource(run=run)
    D.prepare_source(source, split, dcfg, out / "downstream")  # the leakage guard (warnings: downstream.json)
    need = D.pool_needs(dcfg.arms, split.train, dcfg.strategy)[None]
    t0 = time.perf_counter()
    # the synthetic images of downstream seed 0: generated once, exported, evaluated, and used by the arms
    syn = source.pool(split, need, seed0, dcfg.mask_source, None)
    gen_s = time.perf_counter() - t0
    provenance, synth_report = source.sampler_info[f"seed{seed0}/none"]
    info = {"plan": {c: int(n) for c, n in need.items() if n > 0}, "report": synth_report.to_dict(),
            "options": {"sampling_strategy": "auto", "mask_source": MASK_SOURCE, "random_state": seed0},
            "generation_images_per_s": round(len(syn) / gen_s, 2) if gen_s > 0 else None}
    export_dataset(out / "rebalanced", syn, provenance, real=split.train, generator_name=run.method.name,
                   checkpoint_sha256=run.checkpoint_sha256, model_card=model_card(run), synthesis_info=info)
    console.print(f"plan (new images per class): {info['plan']}; {synth_report.summary()}")

    st.start("evaluate", "fidelity, diversity, image statistics and privacy (held-out = validation split)")
    ev = D.evaluate_synthetic(source, split, dcfg, montage_path=out / "evaluation" / "privacy_montage.png",
                              seed=settings.seed, ms_ssim_pairs=100 if settings.quick else 200)
    atomic_write_json(out / "evaluation" / "evaluation.json", ev)
    fo = (ev.get("fidelity") or {}).get("overall", {})
    console.print("FD {} · precision {} · recall {} · DCR share {}".format(
        *(f"{v:.3g}" if isinstance(v, float) else "n/a" for v in
          (fo.get("fd"), fo.get("precision"), fo.get("recall"), ev["privacy"]["pixels"].get("dcr_share")))))

    st.start("downstream", f"classification: {', '.join(dcfg.arms)} x {len(dcfg.seeds)} seeds, "
             f"{dcfg.epochs} epochs each, tested on real test data")
    report = D.run_downstream(ds, dcfg, out / "downstream", source, split=split)
    used = report["arm_training_sets"].get("real+synthetic", {}).get("synthetic")
    same_set = {
        **ev["synthetic_set"], "file": str(Path("downstream") / "synthetic" / source.pool_files[f"seed{seed0}/none"]),
        "images_sha256": sha256_bytes(syn.images.contiguous().numpy().tobytes()), "n_exported": len(syn),
        "n_evaluated": ev["n_synthetic"], "n_in_real_synthetic_arm_seed0": used,
        "same": bool(ev["n_synthetic"] == len(syn) == used),
        "statement": f"{ev['synthetic_set']['statement']}, exported as rebalanced/; seeds "
                     f"{', '.join(map(str, dcfg.seeds[1:]))} generated their own images from the same generator",
    }

    seconds = st.start("report", "HTML report")
    seconds_total = round(time.perf_counter() - t_all, 1)
    import medbalance

    atomic_write_json(out / "demo.json", {
        "settings": {**cfgs["settings"], "quick": settings.quick, "seed": settings.seed, "device": settings.device},
        "dataset": {
            "description": f"built-in phantom: {len(ds)} axial 64x64 slices, classes {ds.class_names} "
            f"(imbalance 10:3:1), label maps {ds.mask_values} (0 outside, 1 intracranial, 2 oedema, "
            "3 enhancing lesion, 4 necrosis)",
            "class_counts": ds.class_counts(),
        },
        "generator": {"model": gcfg.model.model_dump(mode="json"), "steps": gcfg.train.steps,
                      "images_per_s": round(res.images_per_s, 2), "checkpoint_sha256": run.checkpoint_sha256},
        "stage_seconds": seconds, "seconds_total": seconds_total, "same_synthetic_set": same_set,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine()},
        "medbalance_version": medbalance.__version__,
    })
    html_path = build_report(out)
    _print_summary(report, make_verdicts(report), seconds, time.perf_counter() - t_all - seconds_total)
    console.print(f"[dim]{same_set['statement']}[/dim]")
    console.print(f"[bold green]report:[/bold green] {html_path}")
    return {"report": html_path, "downstream": report, "evaluation": ev, "stage_seconds": seconds,
            "seconds_total": round(time.perf_counter() - t_all, 1)}


def _print_summary(report: dict[str, Any], verdicts: list[dict[str, Any]], seconds: dict[str, float],
                   report_seconds: float) -> None:
    from medbalance.utils.tables import ci_table

    metrics = ["balanced_accuracy", "macro_f1"] + [f"recall/{c}" for c in report["class_names"]]
    console.print(ci_table(report["summary"], metrics, "downstream classification, real test set "
                           f"({len(report['config']['seeds'])} seeds, mean [95% CI])"))
    for v in verdicts:
        if v["arm"].startswith("real+synthetic"):
            colour = {"better": "green", "worse": "red"}.get(v.get("direction"), "white")
            console.print(f"[{colour}]• [{v.get('direction', '')}] {v['text']}[/{colour}]")
    times = ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
    console.print(f"[dim]stage times: {times}; report {report_seconds:.0f}s[/dim]")
