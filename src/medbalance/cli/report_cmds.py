"""``medbalance report`` (one self-contained HTML file) and ``medbalance demo`` (the whole pipeline on the phantom)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import device_option, overwrite_option, seed_option
from medbalance.errors import ConfigError
from medbalance.utils.progress import console


@app.command("report")
def report_cmd(
    folder: Path = typer.Argument(
        ..., help="results folder: demo, downstream, feature-augment or benchmark output, a generator run, an "
        "evaluation (evaluation.json) or a rebalanced export; searched two levels deep"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: FOLDER/report.html)"),
) -> None:
    """Write one self-contained HTML report (images embedded, opens offline) and report.json with its numbers.

    Searched in FOLDER and up to two levels below:

    demo.json (medbalance demo)
    downstream.json (medbalance downstream)
    feature_downstream.json (medbalance feature-augment)
    benchmark.json (medbalance benchmark)
    evaluation.json (medbalance evaluate --json)
    a generator run folder (medbalance train)
    a rebalanced export: manifest.csv + synthesis.json (medbalance rebalance / generate)"""
    from medbalance.report import build_report

    if out is not None and out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError("--out must be an .html file", path=out)
    path = build_report(folder, out)
    console.print(f"numbers: {path.with_suffix('.json')}")
    typer.echo(str(path))


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("medbalance-demo"), "--out", help="demo folder (everything is written here)"),
    quick: bool = typer.Option(False, "--quick", help="smaller data, shorter training"),
    seed: int = seed_option(0, "seed of the data, split, generator and generation"),
    device: str = device_option(),
    overwrite: bool = overwrite_option("an existing demo folder"),
    n: Optional[int] = typer.Option(None, "--n", hidden=True, min=30, help="phantom images (testing)"),
    steps: Optional[int] = typer.Option(None, "--steps", hidden=True, min=1, help="generator steps (testing)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", hidden=True, min=1, help="classifier epochs (testing)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", hidden=True, min=1, help="downstream seeds (testing)"),
) -> None:
    """Run the whole pipeline on the built-in phantom (nothing to download) and write an HTML report.

    Phantom data (3 classes, imbalance 10:3:1) -> split -> train a class- and mask-conditioned generator on
    the training split -> rebalance -> fidelity & privacy -> downstream classification (real, oversample,
    real+synthetic; 3 seeds) -> report.
    """
    from medbalance.experiments.demo import DemoSettings, run_demo
    from medbalance.report import build_report, make_verdicts

    settings = DemoSettings(out=out, quick=quick, seed=seed, device=device, overwrite=overwrite,
                            n=n, steps=steps, epochs=epochs, seeds=seeds)
    result = run_demo(settings, build_report=build_report, make_verdicts=make_verdicts)
    typer.echo(str(result["report"]))
