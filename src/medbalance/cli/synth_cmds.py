"""``medbalance generate`` and ``medbalance rebalance``."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import DataOptions, data_options, load_run_data, opt, option_group, parse_pairs
from medbalance.errors import ConfigError
from medbalance.utils.progress import console


MASK_POOL_HELP = "auto | same_class | any (masks of every class; auto: any for Red-GAN)"


@dataclass(frozen=True)
class GenerationOptions:
    """The options of every command that generates with a trained run (generate, rebalance)."""

    mask_source: str = opt("real", "real | elastic | edited | folder")
    mask_folder: Optional[str] = opt(None, "folder of label-map PNGs for --mask-source folder")
    mask_pool: str = opt("auto", MASK_POOL_HELP)
    filters: List[str] = opt([], "classifier:PATH | discriminator | memorization (repeatable)", flag="--filter")
    min_confidence: float = opt(0.5, "classifier filter threshold")
    memorization_percentile: float = opt(1.0, "memorization gate: percentile of held-out NN distances")
    seed: int = opt(0, "seed of the generation")
    batch_size: int = opt(64, "images generated per batch", min=1)
    checkpoint: str = opt("latest", "latest | best | path to a checkpoint folder")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    overwrite: bool = opt(False, "replace an existing output folder")


generation_options = option_group(GenerationOptions, "gen", "Generation options")


def _load_run(path: Path, checkpoint: str, device: str):
    from medbalance.training.run import load_run
    from medbalance.utils.device import select_device

    return load_run(path, checkpoint=checkpoint, device=str(select_device(device)))


def load_runs(specs: list[str], checkpoint: str, device: str) -> tuple[dict, object]:
    """``--run RUN`` -> ({}, run); ``--run CLASS=RUN`` once per class (MelanoGANs' recipe) -> ({class: run}, a
    merged run for export), each run checked to be trained on its class only."""
    from medbalance.synthesis.oversampler import check_per_class_run

    if not specs:
        raise ConfigError("--run is required: a run folder, or CLASS=RUN once per class")
    if any("=" not in s for s in specs):
        if len(specs) > 1:
            raise ConfigError(
                "pass either one --run RUN or --run CLASS=RUN for each class, not a mix or several plain runs")
        return {}, _load_run(Path(specs[0]), checkpoint, device)
    runs = {}
    for c, path in parse_pairs(specs, "--run", "CLASS=RUN").items():
        runs[c] = _load_run(Path(path), checkpoint, device)
        check_per_class_run(c, runs[c])
    train = {i for r in runs.values() for i in r.train_ids}
    heldout = {i for r in runs.values() for i in r.heldout_ids} - train
    return runs, dataclasses.replace(next(iter(runs.values())), train_ids=sorted(train), heldout_ids=sorted(heldout))


def _ids_subset(ds, ids):
    want = set(ids or [])
    return ds.subset([i for i, k in enumerate(ds.ids) if k in want])


def _build_filters(gen: GenerationOptions, run, data):
    from medbalance.synthesis.filters import ClassifierFilter, DiscriminatorFilter, MemorizationGate

    out = []
    for spec in gen.filters:
        name, _, arg = spec.partition(":")
        if name == "discriminator":
            out.append(DiscriminatorFilter(run.method, mode=arg or "auto"))
        elif name == "classifier":
            if not arg:
                raise ConfigError(
                    "--filter classifier:PATH needs the folder of a model saved by `medbalance train-task`")
            from medbalance.models.tasknets import load_task_model

            model, meta = load_task_model(arg)
            if list(meta.get("class_names", data.class_names)) != list(data.class_names):
                raise ConfigError(
                    f"classifier {arg} was trained on classes {meta.get('class_names')}, data has {data.class_names}")
            out.append(ClassifierFilter(model, min_confidence=gen.min_confidence))
        elif name == "memorization":
            held = _ids_subset(data, run.heldout_ids)
            if len(held) < 2:
                raise ConfigError(
                    "the memorization gate needs real images the generator did not see: train the generator with "
                    "train.val_fraction > 0 (held-out ids are recorded in the run) and pass the same data"
                )
            out.append(MemorizationGate(_ids_subset(data, run.train_ids).images, held.images,
                                        percentile=gen.memorization_percentile))
        else:
            raise ConfigError(
                f"unknown filter {name!r}; allowed: classifier:PATH, discriminator[:class|realness], memorization")
    return out


def _generate_and_export(out: Path, gen: GenerationOptions, generator, run, data, kw: dict, real=None,
                         options: Optional[dict] = None, fit=None):
    """Fit the over-sampler on ``fit`` (default ``data``, from which the filters also draw), generate, write the
    export (with ``real`` when given), print the plan. ``generator``: one loaded run, or ``{class: run}`` (per-class
    runs); ``run`` names the export's generator."""
    from medbalance.synthesis.export import export_dataset, model_card
    from medbalance.synthesis.oversampler import GenerativeOverSampler

    filters = _build_filters(gen, run, data)
    sampler = GenerativeOverSampler(generator, filters=filters, random_state=gen.seed, batch_size=gen.batch_size,
                                    mask_source=gen.mask_source, mask_pool=gen.mask_pool, mask_folder=gen.mask_folder,
                                    **kw)
    sampler.fit(data if fit is None else fit)
    t0 = time.perf_counter()
    syn = sampler.sample()
    dt = time.perf_counter() - t0
    rate = sampler.report_.generated / dt if dt > 0 else float("nan")
    info = {
        "plan": {str(k): int(v) for k, v in sampler.sampling_strategy_.items()},
        "report": sampler.report_.to_dict(),
        "options": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}, **(options or {}),
                    "mask_source": gen.mask_source, "mask_pool": gen.mask_pool, "mask_folder": gen.mask_folder,
                    "seed": gen.seed, "filters": gen.filters},
        "generation_images_per_s": round(rate, 2),
    }
    manifest = export_dataset(
        out, syn, sampler.provenance_, real=real, generator_name=run.method.name,
        checkpoint_sha256=run.checkpoint_sha256, model_card=model_card(run), synthesis_info=info,
        overwrite=gen.overwrite,
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
@generation_options
def generate_cmd(
    run_dir: Path = typer.Argument(..., help="a run folder made by `medbalance train`"),
    n: int = typer.Option(..., "--n", min=1, help="how many samples"),
    cls: str = typer.Option(..., "--class", help="class name to generate"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="output folder (default RUN_DIR/generated/<class>_n<N>_seed<S>)"),
    data: Optional[str] = typer.Option(None, "--data", help="where to draw label maps from (default: the run's data)"),
    target: str = typer.Option(
        "label", "--target", help="label | condition (--class then names a site of the condition column)"),
    gen: GenerationOptions = GenerationOptions(),
    data_opts: DataOptions = DataOptions(),
) -> None:
    """Generate N synthetic samples of one class (with masks for mask-conditioned models).

    A run trained on one class only (``data.class_subset``, one unconditional generator per class) generates
    that class."""
    from medbalance.synthesis.oversampler import check_per_class_run

    run = _load_run(run_dir, gen.checkpoint, gen.device)
    ds = load_run_data(run, data, data_opts)
    site = target == "condition"
    names = (ds.condition_names or []) if site else ds.class_names
    if cls not in names:
        raise ConfigError(f"unknown {'site' if site else 'class'} {cls!r}; the run's "
                          f"{'sites (condition values)' if site else 'classes'} are {', '.join(names)}")
    generator = run
    if target == "label" and len(run.info.class_names) == 1:  # a per-class run (MelanoGANs' recipe)
        check_per_class_run(cls, run)
        generator = {cls: run}
    _generate_and_export(out or (run_dir / "generated" / f"{cls}_n{n}_seed{gen.seed}"), gen, generator, run, ds,
                         {"inject": (cls, n), "target": target},
                         fit=_ids_subset(ds, run.train_ids) if run.train_ids else ds)


@app.command("rebalance")
@data_options
@generation_options
def rebalance_cmd(
    data: str = typer.Argument(..., help="the dataset to rebalance (manifest CSV, folder, npz, nifti root, 'phantom')"),
    out: Path = typer.Argument(..., help="output folder (written atomically)"),
    run_specs: List[str] = typer.Option(
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
    include_real: bool = typer.Option(True, "--include-real/--no-real", help="also write the real samples"),
    gen: GenerationOptions = GenerationOptions(),
    data_opts: DataOptions = DataOptions(),
) -> None:
    """Bring the classes of DATA to the requested distribution with a trained generator; write OUT/manifest.csv."""
    from medbalance.synthesis.strategy import parse_strategy

    runs, run = load_runs(run_specs, gen.checkpoint, gen.device)
    if runs and any(f.partition(":")[0] == "discriminator" for f in gen.filters):
        raise ConfigError("--filter discriminator needs one generator; per-class runs (--run CLASS=RUN) have several")
    ds = load_run_data(run, data, data_opts, all_classes=bool(runs))
    kw: dict = {"target": target}
    if inject:
        kw["inject"] = next(iter(parse_pairs([inject], "--inject", "CLASS=N", int).items()))
    elif ratio is not None:
        kw.update(ratio=ratio, ratio_mode=ratio_mode)
    else:
        kw["sampling_strategy"] = parse_strategy(strategy)
    runs_info = {c: {"run_dir": str(r.run_dir), "checkpoint_sha256": r.checkpoint_sha256, "step": int(r.step)}
                 for c, r in runs.items()}
    _generate_and_export(out, gen, runs or run, run, ds, kw, ds if include_real else None,
                         {"runs": runs_info} if runs else {})
