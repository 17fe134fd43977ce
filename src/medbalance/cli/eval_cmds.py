"""``medbalance evaluate``: fidelity, diversity, image statistics and privacy of synthetic data.

Privacy splits (``--train-split`` / ``--holdout-split``) are each given as either
- a dataset (anything ``medbalance.data.load_dataset`` takes: manifest CSV, folder, npz, ...), or
- a generator run folder, or its ``train_ids.json`` (keys ``train`` / ``heldout``, or
  ``train_ids`` / ``heldout_ids``): the listed ids are picked from ``--real``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import DataOptions, build_data_config, data_options, emit_json, print_table, seed_option
from medbalance.errors import ConfigError, DataError


def load_split(spec: str, real, key: str, data_opts: DataOptions):
    """A privacy split: a dataset path, or ids (run folder / train_ids.json) picked from ``real``."""
    from medbalance.data.sources import load_dataset
    from medbalance.utils.io import read_json

    ids_file = Path(spec) / "train_ids.json" if (Path(spec) / "train_ids.json").is_file() else Path(spec)
    if ids_file.suffix.lower() != ".json":
        return load_dataset(build_data_config(spec, data_opts))
    doc = read_json(ids_file)
    ids = next((doc[k] for k in (key, f"{key}_ids") if doc.get(k) is not None), None) if isinstance(doc, dict) else None
    if not isinstance(ids, list):
        raise DataError(f"no {key!r} (or {key}_ids) list of ids in this file", path=ids_file)
    pos = {i: n for n, i in enumerate(real.ids)}
    missing = [i for i in ids if str(i) not in pos]
    if missing:
        raise DataError(f"{len(missing)} {key} ids are not in --real (e.g. {missing[0]!r}); pass the data the run was "
                        "trained on", path=ids_file)
    return real.subset([pos[str(i)] for i in ids])


@app.command("evaluate")
@data_options
def evaluate_cmd(
    real: str = typer.Option(..., "--real", help="real data (manifest CSV, folder, npz, 'phantom', ...)"),
    synthetic: str = typer.Option(
        ..., "--synthetic", help="synthetic data, e.g. OUT/manifest.csv (only rows with synthetic=1)"),
    extractor: str = typer.Option(
        "pixels", "--extractor", help="pixels | inception-v3 | domain | torchscript:PATH | registered name"),
    extractor_weights: Optional[str] = typer.Option(
        None, "--extractor-weights", help="inception-v3: FID weights .pth/.safetensors; domain: task-model folder"
    ),
    train_domain_encoder: bool = typer.Option(
        False, "--train-domain-encoder", help="domain extractor: train a classifier on the real (training) data first"
    ),
    domain_epochs: int = typer.Option(10, "--domain-epochs", min=1),
    metric: Optional[List[str]] = typer.Option(
        None, "--metric", help="metric to compute (repeat); default: all but privacy"),
    per_class: bool = typer.Option(False, "--per-class", help="also intra-class fidelity metrics"),
    privacy: bool = typer.Option(False, "--privacy", help="DCR / memorisation / membership inference"),
    train_split: Optional[str] = typer.Option(
        None, "--train-split", help="generator's training images: dataset path, run folder or train_ids.json"
    ),
    holdout_split: Optional[str] = typer.Option(
        None, "--holdout-split", help="held-out real images: dataset path, run folder or train_ids.json"
    ),
    montage: Optional[Path] = typer.Option(None, "--montage", help="PNG of the closest synthetic/training pairs"),
    data_opts: DataOptions = DataOptions(),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", min=2),
    kid_subsets: int = typer.Option(100, "--kid-subsets", min=1),
    ms_ssim_pairs: int = typer.Option(200, "--ms-ssim-pairs", min=1),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="feature cache (default ~/.cache/medbalance/features)"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    seed: int = seed_option(0, "seed of the subsets and pairs drawn"),
    as_json: bool = typer.Option(False, "--json", help="print all results as JSON on stdout (instead of the table)"),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="also write all results as JSON to this file"),
) -> None:
    """Does synthetic data look real (FD/KID/precision/recall/density/coverage), is it varied (MS-SSIM),
    do its image statistics match, and does it copy the training patients (--privacy)?

    The data options describe --real (and split datasets given as paths); the synthetic set is read as
    `medbalance generate` / `rebalance` write it, at --image-size when given."""
    from medbalance.data.sources import load_dataset
    from medbalance.evaluation.evaluate import evaluate_datasets, summary_rows
    from medbalance.utils.progress import console

    if privacy and (train_split is None or holdout_split is None):
        raise ConfigError("--privacy needs --train-split and --holdout-split")
    if (train_split or holdout_split) and not privacy:
        raise ConfigError("--train-split/--holdout-split are only used with --privacy")
    if montage is not None and montage.suffix.lower() != ".png":
        raise ConfigError("--montage must be a .png file", path=montage)
    real_ds = load_dataset(build_data_config(real, data_opts))
    syn_ds = load_dataset(synthetic, **({"image_size": data_opts.image_size} if data_opts.image_size else {}))
    res = evaluate_datasets(
        real=real_ds, synthetic=syn_ds, extractor=extractor,
        extractor_options={"weights": extractor_weights} if extractor_weights else None,
        metrics=metric or None, per_class=per_class,
        privacy_train=load_split(train_split, real_ds, "train", data_opts) if privacy else None,
        privacy_holdout=load_split(holdout_split, real_ds, "heldout", data_opts) if privacy else None,
        train_domain_encoder=train_domain_encoder, domain_encoder_epochs=domain_epochs,
        cache_dir=cache_dir, use_cache=not no_cache, montage_path=montage,
        kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, ms_ssim_pairs=ms_ssim_pairs, seed=seed,
    )
    res["inputs"] = {"real": real, "synthetic": synthetic, "train_split": train_split, "holdout_split": holdout_split}
    if emit_json(res, as_json, json_out):
        return
    ext = res.get("extractor", {})
    print_table(f"real {res['n_real']} vs synthetic {res['n_synthetic']}"
                + (f" — features: {ext.get('name')} ({ext.get('dim')}-d)" if ext else ""),
                ["scope", "metric", "value"], summary_rows(res))
    for w in res["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if json_out is not None:
        typer.echo(f"results written to {json_out}")
