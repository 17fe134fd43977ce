"""``medbalance generate`` and ``medbalance rebalance``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import (
    DataOptions,
    data_options,
    device_option,
    overwrite_option,
    run_data_config,
    seed_option,
)
from medbalance.errors import ConfigError
from medbalance.utils.progress import console


def _load_run(run_dir: Path, checkpoint: str, device: str):
    from medbalance.training.run import load_run
    from medbalance.utils.device import select_device

    return load_run(run_dir, checkpoint=checkpoint, device=str(select_device(device)))


def _run_data(run, data_path: Optional[str], opts: DataOptions, all_classes: bool = False):
    """The run's data settings (size, columns, normalisation), optionally on another path, with the data options
    on top (:func:`~medbalance.cli.options.run_data_config`); ``all_classes`` drops the run's ``class_subset``
    (per-class runs rebalance the whole dataset)."""
    from medbalance.data import load_dataset

    return load_dataset(run_data_config(run, data_path, opts, all_classes=all_classes))


def _parse_runs(specs: list[str]) -> tuple[Optional[Path], dict[str, Path]]:
    """``--run RUN`` (one run) or ``--run CLASS=RUN`` repeated (one run per class, MelanoGANs' recipe)."""
    if not specs:
        raise ConfigError("--run is required: a run folder, or CLASS=RUN once per class")
    per: dict[str, Path] = {}
    plain = [s for s in specs if "=" not in s]
    if plain:
        if len(specs) > 1:
            raise ConfigError("pass either one --run RUN or --run CLASS=RUN for each class, not a mix or several plain runs")
        return Path(plain[0]), {}
    for spec in specs:
        c, _, path = spec.partition("=")
        c = c.strip()
        if not c or not path:
            raise ConfigError(f"--run {spec!r} is not CLASS=RUN")
        if c in per:
            raise ConfigError(f"--run given twice for class {c!r}")
        per[c] = Path(path)
    return None, per


def _load_per_class(per: dict[str, Path], checkpoint: str, device: str):
    """Load one run per class, check each was trained on its class only; also a merged run for export."""
    import dataclasses

    from medbalance.synthesis.oversampler import check_per_class_run

    runs = {}
    for c, path in per.items():
        runs[c] = _load_run(path, checkpoint, device)
        check_per_class_run(c, runs[c])
    first = next(iter(runs.values()))
    merged = dataclasses.replace(
        first,
        train_ids=sorted({i for r in runs.values() for i in r.train_ids}),
        heldout_ids=sorted({i for r in runs.values() for i in r.heldout_ids} - {i for r in runs.values() for i in r.train_ids}),
    )
    return runs, merged


def _runs_info(runs: dict) -> dict:
    return {c: {"run_dir": str(r.run_dir), "checkpoint_sha256": r.checkpoint_sha256, "step": int(r.step)}
            for c, r in runs.items()}


def _ids_subset(ds, ids):
    want = set(ids or [])
    return ds.subset([i for i, k in enumerate(ds.ids) if k in want])


def _build_filters(specs: list[str], run, data, min_confidence: float, percentile: float):
    from medbalance.synthesis.filters import (
        ClassifierFilter,
        DiscriminatorFilter,
        MemorizationGate,
    )

    out = []
    for spec in specs:
        name, _, arg = spec.partition(":")
        if name == "discriminator":
            out.append(DiscriminatorFilter(run.method, mode=arg or "auto"))
        elif name == "classifier":
            if not arg:
                raise ConfigError("--filter classifier:PATH needs the folder of a model saved by `medbalance train-task`")
            from medbalance.models.tasknets import load_task_model

            model, meta = load_task_model(arg)
            if list(meta.get("class_names", data.class_names)) != list(data.class_names):
                raise ConfigError(f"classifier {arg} was trained on classes {meta.get('class_names')}, data has {data.class_names}")
            out.append(ClassifierFilter(model, min_confidence=min_confidence))
        elif name == "memorization":
            train = _ids_subset(data, run.train_ids)
            held = _ids_subset(data, run.heldout_ids)
            if len(held) < 2:
                raise ConfigError(
                    "the memorization gate needs real images the generator did not see: train the generator with "
                    "train.val_fraction > 0 (held-out ids are recorded in the run) and pass the same data"
                )
            out.append(MemorizationGate(train.images, held.images, percentile=percentile))
        else:
            raise ConfigError(f"unknown filter {name!r}; allowed: classifier:PATH, discriminator[:class|realness], memorization")
    return out


def _synthesise(run, data, sampler_kwargs, filters, seed, batch_size):
    """``run``: one loaded run, or ``{class: run}`` (per-class runs)."""
    from medbalance.synthesis.oversampler import GenerativeOverSampler

    sampler = GenerativeOverSampler(run, filters=filters, random_state=seed, batch_size=batch_size, **sampler_kwargs)
    sampler.fit(data)
    t0 = time.perf_counter()
    syn = sampler.sample()
    dt = time.perf_counter() - t0
    return sampler, syn, dt


def _finish(out: Path, sampler, syn, run, dt, real, overwrite, options):
    from medbalance.synthesis.export import export_dataset, model_card

    rate = sampler.report_.generated / dt if dt > 0 else float("nan")
    info = {
        "plan": {str(k): int(v) for k, v in sampler.sampling_strategy_.items()},
        "report": sampler.report_.to_dict(),
        "options": options,
        "generation_images_per_s": round(rate, 2),
    }
    manifest = export_dataset(
        out, syn, sampler.provenance_, real=real, generator_name=run.method.name,
        checkpoint_sha256=run.checkpoint_sha256, model_card=model_card(run), synthesis_info=info, overwrite=overwrite,
        reference=getattr(sampler, "dataset_", None),  # places synthetic volumes (NIfTI affine of the mask's source)
        training_ids=run.train_ids,  # provenance for downstream's leakage guard
    )
    console.print(f"[bold]plan[/bold] (new samples per class): {info['plan']}")
    console.print(f"[bold]filters[/bold]: {sampler.report_.summary()}")
    console.print(f"generation speed: {rate:.1f} images/s")
    if sampler.report_.shortfall():
        console.print("[yellow]warning[/yellow]: the requested counts were not reached (see synthesis.json)")
    typer.echo(str(manifest))


@app.command("generate")
@data_options
def generate_cmd(
    run_dir: Path = typer.Argument(..., help="a run folder made by `medbalance train`"),
    n: int = typer.Option(..., "--n", min=1, help="how many samples"),
    cls: str = typer.Option(..., "--class", help="class name to generate"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default RUN_DIR/generated/<class>_n<N>_seed<S>)"),
    data: Optional[str] = typer.Option(None, "--data", help="where to draw label maps from (default: the run's data)"),
    data_opts: DataOptions = DataOptions(),
    mask_source: str = typer.Option("real", "--mask-source", help="real | elastic | edited | folder"),
    mask_folder: Optional[str] = typer.Option(None, "--mask-folder", help="folder of label-map PNGs for --mask-source folder"),
    mask_pool: str = typer.Option("auto", "--mask-pool", help="auto | same_class | any (masks of every class; auto: any for Red-GAN)"),
    target: str = typer.Option("label", "--target", help="label | condition (--class then names a site of the condition column)"),
    filters: list[str] = typer.Option([], "--filter", help="classifier:PATH | discriminator | memorization (repeatable)"),
    min_confidence: float = typer.Option(0.5, "--min-confidence", help="classifier filter threshold"),
    memorization_percentile: float = typer.Option(
        1.0, "--memorization-percentile", help="memorization gate: percentile of held-out NN distances"),
    seed: int = seed_option(0, "seed of the generation"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="latest | best | path to a checkpoint folder"),
    device: str = device_option(),
    overwrite: bool = overwrite_option(),
) -> None:
    """Generate N synthetic samples of one class (with masks for mask-conditioned models).

    A run trained on one class only (``data.class_subset``, one unconditional generator per class) generates
    that class."""
    from medbalance.synthesis.oversampler import check_per_class_run

    run = _load_run(run_dir, checkpoint, device)
    ds = _run_data(run, data, data_opts)
    train = _ids_subset(ds, run.train_ids) if run.train_ids else ds
    names = (ds.condition_names or []) if target == "condition" else ds.class_names
    if cls not in names:
        what = "sites (condition values)" if target == "condition" else "classes"
        raise ConfigError(f"unknown {'site' if target == 'condition' else 'class'} {cls!r}; the run's {what} are {', '.join(names)}")
    out = out or (run_dir / "generated" / f"{cls}_n{n}_seed{seed}")
    flt = _build_filters(filters, run, ds, min_confidence, memorization_percentile)
    kw = dict(inject=(cls, n), mask_source=mask_source, mask_pool=mask_pool, mask_folder=mask_folder, target=target)
    gen = run
    if target == "label" and len(run.info.class_names) == 1:  # a per-class run (MelanoGANs' recipe)
        check_per_class_run(cls, run)
        gen = {cls: run}
    sampler, syn, dt = _synthesise(gen, train, kw, flt, seed, batch_size)
    _finish(out, sampler, syn, run, dt, None, overwrite, {**kw, "inject": [cls, n], "seed": seed, "filters": filters})


@app.command("rebalance")
@data_options
def rebalance_cmd(
    data: str = typer.Argument(..., help="the dataset to rebalance (manifest CSV, folder, npz, nifti root, 'phantom')"),
    out: Path = typer.Argument(..., help="output folder (written atomically)"),
    data_opts: DataOptions = DataOptions(),
    run_specs: list[str] = typer.Option(
        [], "--run", help="a run folder made by `medbalance train`, or CLASS=RUN once per class (one run per class)"
    ),
    target: str = typer.Option("label", "--target", help="label | condition (plan by site: the condition column)"),
    strategy: str = typer.Option(
        "auto", "--strategy",
        help="auto | minority | 'not minority' | 'not majority' | all | a float (2 classes) | class=total,...",
    ),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="synthetic = ratio x real (overrides --strategy)"),
    ratio_mode: str = typer.Option("per_class", "--ratio-mode", help="per_class | overall"),
    inject: Optional[str] = typer.Option(None, "--inject", help="CLASS=N: add N samples of one class only"),
    mask_source: str = typer.Option("real", "--mask-source", help="real | elastic | edited | folder"),
    mask_folder: Optional[str] = typer.Option(None, "--mask-folder", help="folder of label-map PNGs for --mask-source folder"),
    mask_pool: str = typer.Option("auto", "--mask-pool", help="auto | same_class | any (masks of every class; auto: any for Red-GAN)"),
    filters: list[str] = typer.Option([], "--filter", help="classifier:PATH | discriminator | memorization (repeatable)"),
    min_confidence: float = typer.Option(0.5, "--min-confidence", help="classifier filter threshold"),
    memorization_percentile: float = typer.Option(
        1.0, "--memorization-percentile", help="memorization gate: percentile of held-out NN distances"),
    seed: int = seed_option(0, "seed of the generation"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    include_real: bool = typer.Option(True, "--include-real/--no-real", help="also write the real samples"),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="latest | best | path to a checkpoint folder"),
    device: str = device_option(),
    overwrite: bool = overwrite_option(),
) -> None:
    """Bring the classes of DATA to the requested distribution with a trained generator; write OUT/manifest.csv."""
    from medbalance.synthesis.strategy import parse_strategy

    run_dir, per = _parse_runs(run_specs)
    runs: dict = {}
    if per:
        if any(f.partition(":")[0] == "discriminator" for f in filters):
            raise ConfigError("--filter discriminator needs one generator; per-class runs (--run CLASS=RUN) have several")
        runs, run = _load_per_class(per, checkpoint, device)
    else:
        run = _load_run(run_dir, checkpoint, device)
    ds = _run_data(run, data, data_opts, all_classes=bool(per))
    kw: dict = dict(mask_source=mask_source, mask_pool=mask_pool, mask_folder=mask_folder, target=target)
    if inject:
        c, _, k = inject.partition("=")
        try:
            kw["inject"] = (c, int(k))
        except ValueError:
            raise ConfigError(f"--inject {inject!r} is not CLASS=N") from None
    elif ratio is not None:
        kw.update(ratio=ratio, ratio_mode=ratio_mode)
    else:
        kw["sampling_strategy"] = parse_strategy(strategy)
    flt = _build_filters(filters, run, ds, min_confidence, memorization_percentile)
    sampler, syn, dt = _synthesise(runs or run, ds, kw, flt, seed, batch_size)
    opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}
    if runs:
        opts["runs"] = _runs_info(runs)
    _finish(out, sampler, syn, run, dt, ds if include_real else None, overwrite, {**opts, "seed": seed, "filters": filters})
