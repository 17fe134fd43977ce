"""``medbalance train CONFIG.yaml [key=value ...] [--resume] [--out DIR] [--list-models]``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from medbalance.cli.app import app
from medbalance.errors import ConfigError


def _list_models() -> None:
    from medbalance.models.registry import (
        MODELS,
        describe_train_length,
        ensure_registered,
        preset_batch_size,
        preset_flip,
        preset_sampling,
    )

    ensure_registered()
    if not len(MODELS):
        typer.echo("(no models registered)")
        return
    width = max(len(n) for n in MODELS.names())
    for name, help_ in MODELS.describe().items():
        spec = MODELS.get(name)
        presets = "; ".join(
            f"{k}: batch {preset_batch_size(name, k)}, {describe_train_length(name, k)}"
            + (", class-balanced" if preset_sampling(name, k) == "class_balanced" else "")
            + (", flip" if preset_flip(name, k) else "")
            for k in sorted(spec.presets)
        )
        if spec.description:
            help_ = spec.description.strip().split("\n")[0]
        elif help_.startswith("ModelSpec("):  # Registry fell back to the dataclass docstring
            help_ = (spec.method.__doc__ or "").strip().split("\n")[0]
        if spec.paper:
            help_ += f" ({spec.paper})"
        typer.echo(f"{name:<{width}}  [{presets}]  {help_}")


@app.command("train")
def train_cmd(
    config: Optional[Path] = typer.Argument(None, help="run config YAML (data:, model:, train: sections)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. train.steps=500"),
    resume: bool = typer.Option(False, "--resume", help="continue from <out>/checkpoints/latest"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (overrides out_dir)"),
    list_models: bool = typer.Option(False, "--list-models", help="list registered models and presets, then exit"),
) -> None:
    """Train a generative model; writes checkpoints, samples and logs into the run folder."""
    if list_models:
        _list_models()
        return
    if config is None:
        raise ConfigError("missing CONFIG.yaml (or use --list-models)")
    from medbalance.models.registry import resolve_params
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import train

    items = list(overrides or [])
    if out is not None:
        items.append(f"out_dir={out}")
    cfg = RunConfig.from_yaml(config, items)
    resolve_params(cfg.model.name, cfg.model.preset, dict(cfg.model.params))  # fail fast on model errors
    res = train(cfg, resume=resume)
    losses = "  ".join(f"{k}={v:.4g}" for k, v in res.losses.items())
    typer.echo(
        f"trained {cfg.model.name} for {res.step} steps ({res.images_per_s:.1f} images/s): {losses}\n"
        f"run folder: {res.run_dir}\nlatest checkpoint: {res.checkpoint}\nbest checkpoint: {res.best_checkpoint}"
    )
    if getattr(res.method, "reports_memorization", False) and os.environ.get("RANK", "0") == "0":
        # privacy first (diffusion models): near-copies of training images, written into the run folder
        from medbalance.evaluation.diffusion_memorization import REPORT_NAME, memorization_report, summary_line

        typer.echo(summary_line(memorization_report(res.run_dir)) + f" ({res.run_dir / REPORT_NAME})")
