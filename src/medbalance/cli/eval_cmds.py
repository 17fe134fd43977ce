"""``medbalance evaluate``: fidelity, diversity, image statistics and privacy of synthetic data.

Privacy splits (``--train-split`` / ``--holdout-split``) are each given as either
- a dataset (anything ``medbalance.data.load_dataset`` takes: manifest CSV, folder, npz, ...), or
- a generator run folder, or its ``train_ids.json`` (keys ``train`` / ``heldout``, or
  ``train_ids`` / ``heldout_ids``): the listed ids are picked from ``--real``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import (
    DataOptions,
    build_data_config,
    data_options,
    seed_option,
)
from medbalance.errors import ConfigError, DataError


def mark_synthetic_from_csv(ds, path: Path, id_column: str = "id"):
    """Set ``ds.synthetic`` from a manifest's ``synthetic`` column when the loader did not."""
    import torch

    from medbalance.data.manifest import parse_synthetic_flag, read_manifest_rows

    if ds.synthetic is not None or path.suffix.lower() not in (".csv", ".tsv"):
        return ds
    header, rows = read_manifest_rows(path)
    if "synthetic" not in header:
        return ds  # no column: every row is synthetic
    if id_column in header:
        flag = {r[id_column]: parse_synthetic_flag(r["synthetic"]) for r in rows if r.get(id_column)}
        missing = [i for i in ds.ids if i not in flag]
        if missing:
            raise DataError(f"cannot match loaded id {missing[0]!r} to a manifest row's synthetic flag", path=path)
        ds.synthetic = torch.tensor([flag[i] for i in ds.ids], dtype=torch.bool)
    elif len(rows) == len(ds):
        ds.synthetic = torch.tensor([parse_synthetic_flag(r["synthetic"]) for r in rows], dtype=torch.bool)
    else:
        raise DataError("manifest has a synthetic column but no id column and rows were skipped", path=path)
    return ds


def load_split(spec: str, real, key: str, load_kwargs: dict):
    """A privacy split: a dataset path, or ids (run folder / train_ids.json) picked from ``real``."""
    from medbalance.data.sources import load_dataset
    from medbalance.utils.io import read_json

    p = Path(spec)
    ids_file = p / "train_ids.json" if p.is_dir() and (p / "train_ids.json").is_file() else p
    if ids_file.suffix.lower() == ".json":
        data = read_json(ids_file)
        ids = data.get(key) if isinstance(data, dict) else None
        if ids is None and isinstance(data, dict):
            ids = data.get(f"{key}_ids")
        if not isinstance(ids, list):
            raise DataError(f"no {key!r} (or {key}_ids) list of ids in this file", path=ids_file)
        pos = {i: n for n, i in enumerate(real.ids)}
        missing = [i for i in ids if str(i) not in pos]
        if missing:
            raise DataError(
                f"{len(missing)} {key} ids are not in --real (e.g. {missing[0]!r}); pass the data the run was trained on",
                path=ids_file,
            )
        return real.subset([pos[str(i)] for i in ids])
    return load_dataset(spec, **load_kwargs)


@app.command("evaluate")
@data_options
def evaluate_cmd(
    real: str = typer.Option(..., "--real", help="real data (manifest CSV, folder, npz, 'phantom', ...)"),
    synthetic: str = typer.Option(..., "--synthetic", help="synthetic data, e.g. OUT/manifest.csv (only rows with synthetic=1)"),
    extractor: str = typer.Option("pixels", "--extractor", help="pixels | inception-v3 | domain | torchscript:PATH | registered name"),
    extractor_weights: Optional[str] = typer.Option(
        None, "--extractor-weights", help="inception-v3: FID weights .pth/.safetensors; domain: task-model folder"
    ),
    train_domain_encoder: bool = typer.Option(
        False, "--train-domain-encoder", help="domain extractor: train a classifier on the real (training) data first"
    ),
    domain_epochs: int = typer.Option(10, "--domain-epochs", min=1),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="metric to compute (repeat); default: all but privacy"),
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
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="feature cache (default ~/.cache/medbalance/features)"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    seed: int = seed_option(0, "seed of the subsets and pairs drawn"),
    as_json: bool = typer.Option(False, "--json", help="print all results as JSON on stdout (instead of the table)"),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="also write all results as JSON to this file"),
) -> None:
    """Does synthetic data look real (FD/KID/precision/recall/density/coverage), is it varied (MS-SSIM),
    do its image statistics match, and does it copy the training patients (--privacy)?

    The data options describe --real (and split datasets given as paths); the synthetic set is read as
    `medbalance generate` / `rebalance` write it, at --image-size when given."""
    from rich.console import Console
    from rich.table import Table

    from medbalance.data.sources import load_dataset
    from medbalance.evaluation.evaluate import evaluate_datasets, summary_rows
    from medbalance.utils.io import atomic_write_json

    if privacy and (train_split is None or holdout_split is None):
        raise ConfigError("--privacy needs --train-split and --holdout-split")
    if (train_split or holdout_split) and not privacy:
        raise ConfigError("--train-split/--holdout-split are only used with --privacy")
    if montage is not None and montage.suffix.lower() != ".png":
        raise ConfigError("--montage must be a .png file", path=montage)
    kw = data_opts.data_overrides()
    real_ds = load_dataset(build_data_config(real, data_opts))
    syn_kw = {"image_size": data_opts.image_size} if data_opts.image_size is not None else {}
    syn_ds = mark_synthetic_from_csv(load_dataset(synthetic, **syn_kw), Path(synthetic))
    tr = ho = None
    if privacy:
        tr = load_split(train_split, real_ds, "train", kw)
        ho = load_split(holdout_split, real_ds, "heldout", kw)
    res = evaluate_datasets(
        real=real_ds,
        synthetic=syn_ds,
        extractor=extractor,
        extractor_options={"weights": extractor_weights} if extractor_weights else None,
        metrics=metric or None,
        per_class=per_class,
        privacy_train=tr,
        privacy_holdout=ho,
        train_domain_encoder=train_domain_encoder,
        domain_encoder_epochs=domain_epochs,
        cache_dir=cache_dir,
        use_cache=not no_cache,
        montage_path=montage,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        ms_ssim_pairs=ms_ssim_pairs,
        seed=seed,
    )
    res["inputs"] = {"real": real, "synthetic": synthetic, "train_split": train_split, "holdout_split": holdout_split}
    if json_out is not None:
        atomic_write_json(json_out, res)
    if as_json:  # numpy / torch values as plain numbers and lists
        typer.echo(json.dumps(res, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
        return
    console = Console()
    ext = res.get("extractor", {})
    table = Table(
        title=f"real {res['n_real']} vs synthetic {res['n_synthetic']}"
        + (f" — features: {ext.get('name')} ({ext.get('dim')}-d)" if ext else "")
    )
    table.add_column("scope")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in summary_rows(res):
        table.add_row(*row)
    console.print(table)
    err = Console(stderr=True)
    for w in res["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if json_out is not None:
        console.print(f"results written to {json_out}")
