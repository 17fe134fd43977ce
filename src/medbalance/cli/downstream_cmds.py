"""``medbalance downstream``: real vs real+synthetic vs baselines, several seeds, per-class metrics."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import (
    DataOptions, build_data_config, config_option, data_options, device_option, load_run_data, parse_arms,
    parse_class_fractions, parse_fractions, print_summary, seeds_option, set_option,
)
from medbalance.cli.synth_cmds import MASK_POOL_HELP, load_runs
from medbalance.errors import ConfigError
from medbalance.utils.progress import console


@app.command("downstream")
@data_options
def downstream_cmd(
    data: str = typer.Argument(..., help="real dataset (manifest CSV, folder, npz, nifti root, 'phantom')"),
    out: Path = typer.Argument(..., help="experiment folder (downstream.json, config, generator run if trained)"),
    data_opts: DataOptions = DataOptions(),
    task: str = typer.Option("classification", "--task", help="classification | segmentation"),
    arms: str = typer.Option(
        "real,oversample,class-weight,real+synthetic", "--arms",
        help="comma-separated: real, oversample, class-weight, augment, real+synthetic, real+synthetic@R, "
        "synthetic-only, synthetic-pretrain+finetune (train on synthetic only, then fine-tune on real)",
    ),
    seeds: int = seeds_option(5),
    run_specs: List[str] = typer.Option(
        [], "--run", help="trained generator run (must not have seen test ids), or CLASS=RUN once per class"
    ),
    config: Optional[Path] = config_option(
        "a generator run config, data:, model:, train:, as for `medbalance train`: trains that generator on the "
        "experiment's training split first"
    ),
    sets: List[str] = set_option("train.steps=500 (keys of the generator's run config)"),
    synthetic: Optional[str] = typer.Option(
        None, "--synthetic", help="a synthetic manifest (from rebalance/generate) instead of --run"),
    allow_unverified_synthetic: bool = typer.Option(
        False, "--allow-unverified-synthetic",
        help="accept a --synthetic set without training-ids provenance (stated as a warning in downstream.json)"),
    subsample: List[str] = typer.Option(
        [], "--subsample", help="CLASS=FRACTION of its training images kept, e.g. meningioma=0.1"),
    near_duplicates: bool = typer.Option(
        False, "--near-duplicates", help="also keep near-duplicate images (perceptual hash) on one side of the split"),
    epochs: int = typer.Option(15, "--epochs", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    split_seed: int = typer.Option(0, "--split-seed"),
    fractions: str = typer.Option("0.6,0.2,0.2", "--fractions", help="train,val,test fractions"),
    strategy: str = typer.Option("auto", "--strategy", help="balanced arm's sampling strategy"),
    mask_source: str = typer.Option("real", "--mask-source", help="real | elastic | edited"),
    mask_pool: str = typer.Option("auto", "--mask-pool", help=MASK_POOL_HELP),
    target: str = typer.Option(
        "label", "--target", help="label | condition: what the generator arms rebalance (condition = site)"),
    device: str = device_option(),
) -> None:
    """Train a task network on each arm for several seeds and compare with `real` on real test data.

    --device is used for the generator (training and generation) and the task networks."""
    from medbalance.data import load_dataset
    from medbalance.experiments.downstream import (
        DownstreamConfig, SyntheticSource, check_arms, make_split, run_downstream,
    )
    from medbalance.synthesis.strategy import parse_strategy

    cfg = DownstreamConfig.from_dict(dict(
        task=task, arms=parse_arms(arms), seeds=list(range(seeds)), split_seed=split_seed,
        fractions=parse_fractions(fractions), subsample=parse_class_fractions(subsample, "--subsample"),
        strategy=parse_strategy(strategy), mask_source=mask_source, mask_pool=mask_pool, target=target, epochs=epochs,
        batch_size=batch_size, lr=lr, device=device, near_duplicates=near_duplicates,
    ), source="downstream options")
    check_arms(cfg.arms)
    if sum([bool(run_specs), config is not None or bool(sets), synthetic is not None]) > 1:
        raise ConfigError("give one source of synthetic images: --run, --config (a generator to train) or --synthetic")
    source = split = None
    if run_specs:
        runs, run = load_runs(run_specs, "latest", device)
        ds = load_run_data(run, data, data_opts, all_classes=True)
        source = SyntheticSource(run=runs or run)
    elif config is not None or sets:
        from medbalance.cli.train_cmds import run_config_doc
        from medbalance.training.config import RunConfig
        from medbalance.training.engine import train
        from medbalance.training.run import load_run
        from medbalance.utils.device import select_device

        doc = {**run_config_doc(config, sets, data, data_opts), "out_dir": str(out / "generator")}
        doc["train"] = dict(doc.get("train") or {})
        if device != "auto" or "device" not in doc["train"]:
            doc["train"]["device"] = device
        gcfg = RunConfig.from_dict(doc, source=config)
        # the experiment's data: DATA with the data options, at the generator's image size (the generator is
        # trained on its training split, not on the config's data: section)
        ds = load_dataset(build_data_config(data, data_opts, extra={"image_size": gcfg.data.image_size}))
        split = make_split(ds, cfg)
        console.print(f"training the generator on the training split ({len(split.train)} images)")
        train(gcfg, dataset=split.train)
        source = SyntheticSource(run=load_run(out / "generator", device=str(select_device(device))))
    else:
        ds = load_dataset(build_data_config(data, data_opts))
    if synthetic is not None:
        from medbalance.evaluation.evaluate import synthetic_rows
        from medbalance.synthesis.export import read_provenance

        source = SyntheticSource(dataset=synthetic_rows(load_dataset(synthetic, image_size=ds.spatial_shape[-1])),
                                 provenance=read_provenance(synthetic), allow_unverified=allow_unverified_synthetic,
                                 path=synthetic)
    report = run_downstream(ds, cfg, out, source, split=split)
    keep = [m for m in report["summary"]["real"] if m in ("balanced_accuracy", "macro_f1", "auroc", "dice_foreground")
            or m.startswith(("recall/", "dice/", "balanced_accuracy@", "dice_foreground@"))]
    print_summary(report, keep, f"downstream {report['task']}")
    typer.echo(str(out / "downstream.json"))
