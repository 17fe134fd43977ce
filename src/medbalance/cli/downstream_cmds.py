"""``medbalance downstream``: real vs real+synthetic vs baselines, several seeds, per-class metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import parse_class_fractions, parse_fractions
from medbalance.errors import ConfigError
from medbalance.utils.progress import console


@app.command("downstream")
def downstream_cmd(
    data: str = typer.Argument(..., help="real dataset (manifest CSV, folder, npz, nifti root, 'phantom')"),
    out: Path = typer.Argument(..., help="experiment folder (downstream.json, config, generator run if trained)"),
    task: str = typer.Option("classification", help="classification | segmentation"),
    arms: str = typer.Option(
        "real,oversample,class-weight,real+synthetic",
        help="comma-separated: real, oversample, class-weight, augment, real+synthetic, real+synthetic@R, "
        "synthetic-only, synthetic-pretrain+finetune (train on synthetic only, then fine-tune on real)",
    ),
    seeds: int = typer.Option(5, min=1, help="number of seeds (0..N-1)"),
    run_specs: list[str] = typer.Option(
        [], "--run", help="trained generator run (must not have seen test ids), or CLASS=RUN once per class"
    ),
    generator_config: Optional[Path] = typer.Option(
        None, "--generator-config", help="train a generator on the experiment's training split first (run config YAML)"
    ),
    generator_overrides: list[str] = typer.Option([], "--generator-set", help="key=value overrides of --generator-config"),
    synthetic: Optional[str] = typer.Option(None, help="a synthetic manifest (from rebalance/generate) instead of --run"),
    allow_unverified_synthetic: bool = typer.Option(
        False, "--allow-unverified-synthetic",
        help="accept a --synthetic set without training-ids provenance (stated as a warning in downstream.json)"),
    subsample: list[str] = typer.Option([], help="CLASS=FRACTION of its training images kept, e.g. meningioma=0.1"),
    near_duplicates: bool = typer.Option(
        False, "--near-duplicates", help="also keep near-duplicate images (perceptual hash) on one side of the split"),
    image_size: Optional[int] = typer.Option(None, help="resize images (default: the run's size, else as stored)"),
    epochs: int = typer.Option(15, min=1),
    batch_size: int = typer.Option(32, min=1),
    lr: float = typer.Option(1e-3),
    split_seed: int = typer.Option(0),
    fractions: str = typer.Option("0.6,0.2,0.2", help="train,val,test fractions"),
    strategy: str = typer.Option("auto", help="balanced arm's sampling strategy"),
    mask_source: str = typer.Option("real"),
    mask_pool: str = typer.Option("auto", help="auto | same_class | any (masks of every class; auto: any for Red-GAN)"),
    target: str = typer.Option("label", help="label | condition: what the generator arms rebalance (condition = site)"),
    device: str = typer.Option("auto"),
) -> None:
    """Train a task network on each arm for several seeds and compare with `real` on real test data."""
    from medbalance.data import load_dataset
    from medbalance.experiments.downstream import DownstreamConfig, SyntheticSource, check_arms, make_split, run_downstream
    from medbalance.synthesis.strategy import parse_strategy

    fr = parse_fractions(fractions)
    from medbalance.synthesis.oversampler import MASK_POOLS, TARGETS

    if mask_pool not in MASK_POOLS:
        raise ConfigError(f"unknown --mask-pool {mask_pool!r}; allowed: {', '.join(MASK_POOLS)}")
    if target not in TARGETS:
        raise ConfigError(f"unknown --target {target!r}; allowed: {', '.join(TARGETS)}")
    cfg = DownstreamConfig(
        task=task, arms=[a.strip() for a in arms.split(",") if a.strip()], seeds=list(range(seeds)),
        split_seed=split_seed, fractions=fr, subsample=parse_class_fractions(subsample, "--subsample"),
        strategy=parse_strategy(strategy), mask_source=mask_source, mask_pool=mask_pool, target=target, epochs=epochs, batch_size=batch_size, lr=lr,
        device=device, near_duplicates=near_duplicates,
    )
    check_arms(cfg.arms)
    if run_specs and generator_config is not None:
        raise ConfigError("give either --run or --generator-config, not both")
    run = None
    if run_specs:
        from medbalance.cli.synth_cmds import _load_per_class, _parse_runs
        from medbalance.training.run import load_run

        run_dir, per = _parse_runs(run_specs)
        first = load_run(run_dir) if per == {} else None
        if per:
            runs, first = _load_per_class(per, "latest", "cpu")
        ds = load_dataset(first.config.data.model_copy(update={"path": data, "source": "auto", "class_subset": None}))
        run = runs if per else first
    else:
        ds = load_dataset(data, image_size=image_size) if image_size else load_dataset(data)
    if generator_config is not None:
        from medbalance.training.config import RunConfig
        from medbalance.training.engine import train
        from medbalance.training.run import load_run

        gcfg = RunConfig.from_yaml(generator_config, list(generator_overrides) + [f"out_dir={out / 'generator'}"])
        if gcfg.data.image_size is not None and ds.spatial_shape[-1] != gcfg.data.image_size:
            ds = load_dataset(data, image_size=gcfg.data.image_size)
        split = make_split(ds, cfg)
        console.print(f"training the generator on the training split ({len(split.train)} images)")
        train(gcfg, dataset=split.train)
        run = load_run(out / "generator")
    source = None
    if run is not None:
        source = SyntheticSource(run=run)
    elif synthetic is not None:
        syn = load_dataset(synthetic, image_size=ds.spatial_shape[-1])
        if syn.synthetic is not None:
            syn = syn.subset([i for i, f in enumerate(syn.synthetic.tolist()) if f])
        from medbalance.synthesis.export import read_provenance

        source = SyntheticSource(dataset=syn, provenance=read_provenance(synthetic),
                                 allow_unverified=allow_unverified_synthetic, path=synthetic)
    report = run_downstream(ds, cfg, out, source)
    _print_summary(report)
    typer.echo(str(out / "downstream.json"))


def _print_summary(report: dict) -> None:
    from rich.table import Table

    summ = report["summary"]
    arms = [a for a in summ if not a.startswith("_")]
    metrics = [m for m in summ["real"] if not m.startswith("_")]
    keep = [m for m in metrics if m in ("balanced_accuracy", "macro_f1", "auroc", "dice_foreground")
            or m.startswith(("recall/", "dice/", "balanced_accuracy@", "dice_foreground@"))]
    t = Table(title=f"downstream {report['task']} ({len(report['config']['seeds'])} seeds, mean [95% CI])")
    t.add_column("metric")
    for a in arms:
        t.add_column(a)
    for m in keep:
        row = [m]
        for a in arms:
            e = summ[a].get(m)
            if e is None:
                row.append("")
                continue
            cell = f"{e['mean']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
            if "vs_real_seeds" in e:
                cell += f" p={e['vs_real_seeds']['p']:.3g}"
            row.append(cell)
        t.add_row(*row)
    console.print(t)
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning[/yellow]: {w}")
