"""``medbalance inspect`` and ``medbalance datasets make phantom``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medbalance.cli.app import _ErrorHandlingGroup, app, datasets_app
from medbalance.cli.options import (
    DataOptions, build_data_config, config_option, data_options, emit_json, parse_numbers, read_config, set_option,
)
from medbalance.errors import ConfigError

make_app = typer.Typer(cls=_ErrorHandlingGroup, help="Write a built-in dataset to disk.", no_args_is_help=True)
datasets_app.add_typer(make_app, name="make")


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
    skip_bad: bool = typer.Option(False, "--skip-bad",
                                  help="skip unreadable/inconsistent files (listed in the report)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="also write the JSON report to this file"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write class distribution + examples as PNG"),
) -> None:
    """Class balance, sizes, intensities, masks, groups and red flags of a dataset."""
    from medbalance.data.inspect import inspect_dataset, plot_dataset, render_inspection
    from medbalance.data.sources import load_dataset

    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError("--plot must be a .png file", path=plot)
    shape = None if volume_shape is None else parse_numbers(
        volume_shape, "--volume-shape", "three integers X,Y,Z (e.g. 128,128,64)", int, ok=lambda v: len(v) == 3)
    doc = read_config(config, sets, bare_section="data")
    nifti = {"min_lesion_voxels": min_lesion_voxels, "mode": nifti_mode, "volume_shape": shape}
    cfg = build_data_config(data, data_opts, doc.get("data"), config, nifti_extra=nifti,
                            extra={"split": split, "skip_bad": True if skip_bad else None})
    ds = load_dataset(cfg)
    report = inspect_dataset(ds)
    if plot is not None:
        if ds.images.dim() == 5:  # volumes: plot the middle axial slice of each
            from dataclasses import replace

            mid = ds.images.shape[2] // 2
            ds = replace(ds, images=ds.images[:, :, mid], masks=None if ds.masks is None else ds.masks[:, mid])
        plot_dataset(ds, plot)
    if emit_json(report, as_json, json_out):
        return
    from rich.console import Console

    console = Console()
    console.print(render_inspection(report))
    for path, what in ((json_out, "report"), (plot, "plot")):
        if path is not None:
            console.print(f"{what} written to {path}")


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

    sizes = None
    if imbalance is not None:
        sizes = parse_numbers(imbalance, "--imbalance", "at least two positive class sizes (e.g. 10,3,1)",
                              ok=lambda v: len(v) >= 2 and min(v) > 0)
    opts = {"n": n, "size": size, "seed": seed, "anatomy": anatomy, "imbalance": sizes}
    cfg = PhantomConfig.from_dict({k: v for k, v in opts.items() if v is not None})
    typer.echo(f"wrote {write_phantom_dataset(out, cfg)}")
