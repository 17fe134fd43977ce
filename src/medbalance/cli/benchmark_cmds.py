"""``medbalance benchmark``: every generator against every baseline arm, paired seeds, resumable, one leaderboard."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import (
    DataOptions,
    build_data_config,
    check_sections,
    config_option,
    data_options,
    device_option,
    parse_arms,
    parse_class_fractions,
    parse_fractions,
    parse_numbers,
    read_config,
    set_option,
)
from medbalance.errors import ConfigError
from medbalance.utils.progress import console

GEN_HELP = ("MODEL[:KEY=VALUE,...] (repeatable), e.g. dcgan:steps=6500, acgan:minutes=10, "
            "redgan:steps=3000,name=redgan-a, feature-acgan; keys: name, preset, steps, epochs, minutes, run")


def parse_generator(text: str) -> dict:
    """``dcgan:steps=6500,preset=cpu`` -> a GeneratorSpec document."""
    model, _, rest = text.partition(":")
    doc: dict = {"model": model.strip()}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        k, sep, v = item.partition("=")
        if not sep or k not in ("name", "preset", "steps", "epochs", "minutes", "run", "segmentor_epochs"):
            raise ConfigError(f"--generator {text!r}: {item!r} is not KEY=VALUE with KEY one of name, preset, steps, "
                              "epochs, minutes, run, segmentor_epochs")
        try:
            doc[k] = int(v) if k in ("steps", "epochs", "segmentor_epochs") else float(v) if k == "minutes" else v
        except ValueError:
            raise ConfigError(f"--generator {text!r}: {k} must be a number") from None
    if not doc["model"]:
        raise ConfigError(f"--generator {text!r}: no model name")
    return doc


@app.command("benchmark")
@data_options
def benchmark_cmd(
    data: str = typer.Argument(..., help="real dataset (manifest CSV, folder, npz, NIfTI root, 'phantom')"),
    out: Path = typer.Argument(..., help="benchmark folder (cells/, generators/, benchmark.json, leaderboard.md)"),
    config: Optional[Path] = config_option("a BenchmarkConfig: data, task, generators, baselines, arms, seeds, ..."),
    sets: list[str] = set_option("seeds=3 or generators.0.steps=500"),
    generators: list[str] = typer.Option([], "--generator", help=GEN_HELP),
    task: Optional[str] = typer.Option(None, help="classification | segmentation"),
    baselines: Optional[str] = typer.Option(None, help="comma-separated: real, oversample, class-weight, augment"),
    arms: Optional[str] = typer.Option(
        None, help="comma-separated synthetic arms: real+synthetic, real+synthetic@R (every class), "
        "real+synthetic@Rx (R x the minority's real count), synthetic-only, synthetic-pretrain+finetune, each with "
        "optional +class-weight and |filter=discriminator|memorization"),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="classifier seeds per split (default 5)"),
    split_seeds: Optional[str] = typer.Option(None, help="comma-separated split seeds (repeated splits), e.g. 0,1,2"),
    generator_seeds: Optional[str] = typer.Option(None, help="comma-separated generator training seeds"),
    subsample: list[str] = typer.Option([], help="CLASS=FRACTION of its training images kept, e.g. meningioma=0.1"),
    fractions: Optional[str] = typer.Option(None, help="train,val,test fractions (default 0.6,0.2,0.2)"),
    epochs: Optional[int] = typer.Option(None, min=1, help="task-network epochs per arm (default 15)"),
    budget: Optional[float] = typer.Option(None, "--budget", min=0.1, help="minutes: plan the grid to fit"),
    quick: bool = typer.Option(False, "--quick", help="the same grid with a tenth of the compute (2 seeds, ...)"),
    summarize: bool = typer.Option(False, "--summarize", help="only write benchmark.json / leaderboard.md from the "
                                   "cells finished so far (runs nothing; safe while the benchmark runs)"),
    estimate: bool = typer.Option(False, "--estimate", help="print how long the grid takes here, from one measured "
                                  "classifier cell and each generator's calibrated speed; runs and writes no cell"),
    jobs: int = typer.Option(1, "--jobs", min=1, help="cells run at once, in worker processes (CPU threads are "
                             "split between them; on a GPU they share it); same cells, same numbers at equal threads "
                             "per cell"),
    device: Optional[str] = device_option(None),
    data_opts: DataOptions = DataOptions(),
) -> None:
    """Train each generator on the training split, run every arm for every seed, compare with the best baseline."""
    from medbalance.experiments.benchmark import (
        Benchmark,
        BenchmarkConfig,
        leaderboard_markdown,
        quick_profile,
        run_benchmark,
    )

    if summarize:  # the folder's own benchmark.yaml decides the grid; DATA is only used to read the dataset
        rep = Benchmark(BenchmarkConfig(), out).summarize()
        console.print(leaderboard_markdown(rep))
        typer.echo(str(out / "benchmark.json"))
        return

    doc = read_config(config, sets)
    check_sections(doc, tuple(BenchmarkConfig.model_fields), config)
    doc["data"] = build_data_config(data, data_opts, doc.get("data"), config).model_dump(mode="json")
    if generators:
        doc["generators"] = [parse_generator(g) for g in generators]
    cli = {"task": task, "baselines": parse_arms(baselines) if baselines else None,
           "arms": parse_arms(arms) if arms else None, "seeds": seeds,
           "split_seeds": parse_numbers(split_seeds, "--split-seeds", "integers", int) if split_seeds else None,
           "generator_seeds": (parse_numbers(generator_seeds, "--generator-seeds", "integers", int)
                               if generator_seeds else None),
           "subsample": parse_class_fractions(subsample, "--subsample") if subsample else None,
           "fractions": parse_fractions(fractions) if fractions else None, "epochs": epochs,
           "budget_minutes": budget, "device": device}
    doc.update({k: v for k, v in cli.items() if v is not None})
    cfg = BenchmarkConfig.from_dict(doc, source=config)
    if quick:
        cfg = quick_profile(cfg)
    if not cfg.generators:
        console.print("[yellow]warning[/yellow]: no generator given (--generator or generators: in --config): "
                      "only the baselines are compared")
    if estimate:
        print_estimate(Benchmark(cfg, out).estimate())
        if jobs > 1:
            console.print(f"the estimate is for one cell at a time; with --jobs {jobs} the wall time is shorter by "
                          "however much the cells gain from running side by side here (measure with a short run)")
        return
    command = "medbalance " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rep = run_benchmark(cfg, out, command=command, jobs=jobs)
    console.print(leaderboard_markdown(rep))
    typer.echo(str(out / "benchmark.json"))


def print_estimate(est: dict) -> None:
    """The estimate as a table: one row per kind of work, then the total and what is left."""
    from rich.table import Table

    t = Table(title="estimated time of the grid on this machine", title_justify="left")
    for col in ("work", "cells", "minutes", "left to run (min)"):
        t.add_column(col, justify="left" if col == "work" else "right")
    for what, r in est["rows"].items():
        t.add_row(what, str(r["cells"]), f"{r['seconds'] / 60:.1f}", f"{r['remaining_seconds'] / 60:.1f}")
    t.add_row("total", str(est["cells"]), f"{est['total_seconds'] / 60:.1f}", f"{est['remaining_seconds'] / 60:.1f}")
    console.print(t)
    gens = ", ".join(f"{k} {v / 60:.1f} min" for k, v in est["generator_seconds"].items())
    console.print(f"measured: a real-arm cell {est['cell_seconds']:.0f} s on {est['real_train_images']} images"
                  + (f"; generators {gens}" if gens else "") + f" (measuring took {est['measurement_seconds']:.0f} s); "
                  f"{est['cells_done']} of {est['cells']} cells already done. Not counted: loading the data, "
                  "sampling each seed's synthetic pool.")
