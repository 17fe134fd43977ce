"""``medbalance feature-augment``: U-Net bottleneck features, ACGAN on features, feature classifier."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import (
    DataOptions, build_data_config, config_option, data_options, device_option, parse_arms, parse_class_fractions,
    parse_fractions, print_summary, read_config, seeds_option, set_option,
)


@app.command("feature-augment")
@data_options
def feature_augment_cmd(
    data: str = typer.Argument(..., help="dataset with lesion masks (manifest CSV, NIfTI root, ...)"),
    out: Path = typer.Argument(..., help="output folder: segmentor/, features/, acgan/, feature_downstream.json"),
    segmentor: Optional[Path] = typer.Option(
        None, "--segmentor", help="trained segmentation U-Net folder (else trained here)"),
    subsample: List[str] = typer.Option([], "--subsample", help="CLASS=FRACTION of its training slices kept"),
    seeds: int = seeds_option(5, "classifier seeds 0..N-1"),
    strategy: str = typer.Option("auto", "--strategy", help="sampling strategy of the synthetic features"),
    preset: str = typer.Option("cpu", "--preset", help="cpu | paper"),
    arms: str = typer.Option(
        "real,oversample,real+synthetic", "--arms",
        help="comma-separated: real, oversample, class-weight, real+synthetic, real+synthetic@R, real+synthetic@Rx, "
        "+class-weight on a synthetic arm (as for downstream)"),
    split_seed: int = typer.Option(0, "--split-seed"),
    fractions: str = typer.Option("0.6,0.2,0.2", "--fractions", help="train,val,test fractions"),
    no_filter: bool = typer.Option(False, "--no-filter", help="keep every generated feature (no D class filter)"),
    data_opts: DataOptions = DataOptions(),
    config: Optional[Path] = config_option(
        "a data: section and feature-augment keys: acgan:, segmentor:, classifier:, ..."),
    sets: List[str] = set_option("acgan.epochs=10, segmentor.epochs=3, data.image_size=64"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)"),
    device: str = device_option(),
) -> None:
    """Feature-level augmentation (Mehra et al., arXiv 2209.14097): real vs real+synthetic *features*."""
    from medbalance.data import load_dataset
    from medbalance.experiments.feature_downstream import FeatureAugmentConfig, run_feature_augment
    from medbalance.synthesis.strategy import parse_strategy
    from medbalance.utils.io import atomic_write_text

    base = {
        "preset": preset, "arms": parse_arms(arms), "seeds": list(range(seeds)), "split_seed": split_seed,
        "fractions": list(parse_fractions(fractions)), "subsample": parse_class_fractions(subsample, "--subsample"),
        "strategy": parse_strategy(strategy), "filter_generated": not no_filter, "device": device, "threads": threads,
    }
    doc = read_config(config, sets)
    section = doc.pop("data", None)
    cfg = FeatureAugmentConfig.from_dict({**base, **doc}, source=config or "feature-augment options")
    dcfg = build_data_config(data, data_opts, section, config)
    ds = load_dataset(dcfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "data_config.yaml", dcfg.to_yaml())
    cfg.save(out / "feature_augment_config.yaml")
    report = run_feature_augment(ds, cfg, out, segmentor=segmentor)
    fa, syn = report["feature_augment"], report["arm_training_sets"].get("real+synthetic")
    seg, ac = fa["segmentor"], fa["acgan"]
    lines = [f"features {fa['feature_shape']} (non-negative: {fa['features_nonnegative']}); segmentor test Dice "
             f"{seg.get('test_dice_whole_lesion', float('nan')):.3f}; D class accuracy on generated features "
             f"{ac['d_class_accuracy_generated']['accuracy']:.3f} {ac['d_class_accuracy_generated']['per_class']}; "
             f"on real test features {ac['d_class_accuracy_real']['test']:.3f}"]
    if syn:
        lines.append(f"real+synthetic training set: {syn['class_counts']} ({syn['synthetic']} synthetic)")
    lines.append(f"timings (s): {fa['timings_seconds']}, total {report['seconds']}")
    metrics = ["balanced_accuracy", "macro_f1", "auroc"] + [f"recall/{c}" for c in report["class_names"]]
    print_summary(report, metrics, "feature classifier", lines, metric_header="metric (recall = per-class accuracy)")
    typer.echo(str(out / "feature_downstream.json"))
