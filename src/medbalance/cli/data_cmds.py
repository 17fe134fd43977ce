"""``medbalance inspect`` and ``medbalance datasets make phantom``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from medbalance.cli.app import _ErrorHandlingGroup, app, datasets_app
from medbalance.cli.options import (
    DataOptions,
    build_data_config,
    config_option,
    data_options,
    read_config,
    set_option,
)
from medbalance.errors import ConfigError

make_app = typer.Typer(cls=_ErrorHandlingGroup, help="Write a built-in dataset to disk.", no_args_is_help=True)
datasets_app.add_typer(make_app, name="make")


def _parse_shape(text: Optional[str]) -> Optional[list[int]]:
    """``"128,128,64"`` -> ``[128, 128, 64]`` (None stays None)."""
    if text is None:
        return None
    try:
        out = [int(x) for x in text.replace("x", ",").split(",")]
    except ValueError:
        out = []
    if len(out) != 3:
        raise ConfigError(f"--volume-shape must be three integers X,Y,Z (e.g. 128,128,64), got {text!r}")
    return out


@app.command("inspect")
@data_options
def inspect_cmd(
    data: str = typer.Argument(..., help="manifest CSV, class-folder root, NIfTI root, MedMNIST .npz, or 'phantom'"),
    data_opts: DataOptions = DataOptions(),
    config: Optional[Path] = config_option("a data: section, or a bare DataConfig"),
    sets: List[str] = set_option("data.phantom.n=24"),
    min_lesion_voxels: Optional[int] = typer.Option(None, "--min-lesion-voxels", min=0),
    nifti_mode: Optional[str] = typer.Option(
        None, "--nifti-mode", help="NIfTI: slices (2-D axial slices) | volume (one cropped, resampled volume per case)"
    ),
    volume_shape: Optional[str] = typer.Option(
        None, "--volume-shape", help="NIfTI volume mode: X,Y,Z after crop and resample (default 128,128,64)"
    ),
    split: Optional[str] = typer.Option(None, "--split", help="MedMNIST split"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip unreadable/inconsistent files (listed in the report)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="also write the JSON report to this file"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write class distribution + examples as PNG"),
) -> None:
    """Class balance, sizes, intensities, masks, groups and red flags of a dataset."""
    from medbalance.data.inspect import inspect_dataset, plot_dataset, render_inspection
    from medbalance.data.sources import load_dataset
    from medbalance.utils.io import atomic_write_json

    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError("--plot must be a .png file", path=plot)
    doc = read_config(config, sets, bare_section="data")
    cfg = build_data_config(
        data, data_opts, doc.get("data"), config,
        extra={"split": split, "skip_bad": True if skip_bad else None},
        nifti_extra={"min_lesion_voxels": min_lesion_voxels, "mode": nifti_mode,
                     "volume_shape": _parse_shape(volume_shape)},
    )
    ds = load_dataset(cfg)
    report = inspect_dataset(ds)
    if json_out is not None:
        atomic_write_json(json_out, report)
    if plot is not None:
        if ds.images.dim() == 5:  # volumes: plot the middle axial slice of each
            from dataclasses import replace

            mid = ds.images.shape[2] // 2
            ds = replace(ds, images=ds.images[:, :, mid], masks=None if ds.masks is None else ds.masks[:, mid])
        plot_dataset(ds, plot)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print(render_inspection(report))
    if json_out is not None:
        console.print(f"report written to {json_out}")
    if plot is not None:
        console.print(f"plot written to {plot}")


def _parse_imbalance(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--imbalance must be comma-separated numbers like 10,3,1, got {text!r}") from None
    if len(vals) < 2 or any(v <= 0 for v in vals):
        raise ConfigError(f"--imbalance needs at least two positive class sizes, got {text!r}")
    return vals


@make_app.command("phantom")
def make_phantom_cmd(
    out: Path = typer.Argument(..., help="output folder (images/, masks/, manifest.csv)"),
    n: Optional[int] = typer.Option(None, "--n", help="total number of slices"),
    imbalance: Optional[str] = typer.Option(None, "--imbalance", help="relative class sizes, e.g. 10,3,1"),
    size: Optional[int] = typer.Option(None, "--size", help="image side in pixels"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    anatomy: Optional[str] = typer.Option(None, "--anatomy", help="procedural|mni152"),
) -> None:
    """Write the built-in phantom brain-MRI dataset (PNG images, masks and a manifest CSV)."""
    from medbalance.data.config import PhantomConfig
    from medbalance.data.phantom import write_phantom_dataset

    opts: dict[str, Any] = {"n": n, "size": size, "seed": seed, "anatomy": anatomy}
    if imbalance is not None:
        opts["imbalance"] = _parse_imbalance(imbalance)
    cfg = PhantomConfig.from_dict({k: v for k, v in opts.items() if v is not None})
    manifest = write_phantom_dataset(out, cfg)
    typer.echo(f"wrote {manifest}")
