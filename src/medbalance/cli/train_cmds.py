"""``medbalance train [--config FILE] [--set key=value ...] [--model NAME] [--data DATA] [--steps N] [--out RUN]
[--resume] [--list-models]`` (the config file is optional)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import (
    DataOptions, build_data_config, config_option, data_options, device_option, read_config, seed_option, set_option,
)
from medbalance.errors import ConfigError


def _list_models() -> None:
    from medbalance.models import registry as r

    r.ensure_registered()
    width = max(len(n) for n in r.MODELS.names())
    for name in r.MODELS.names():
        spec = r.MODELS.get(name)
        presets = "; ".join(
            f"{k}: batch {r.preset_batch_size(name, k)}, {r.describe_train_length(name, k)}"
            + (", class-balanced" if r.preset_sampling(name, k) == "class_balanced" else "")
            + (", flip" if r.preset_flip(name, k) else "")
            for k in sorted(spec.presets)
        )
        help_ = (spec.description or spec.method.__doc__ or "").strip().split("\n")[0]
        typer.echo(f"{name:<{width}}  [{presets}]  {help_}" + (f" ({spec.paper})" if spec.paper else ""))


def run_config_doc(config: Optional[Path], sets: List[str], data: Optional[str], data_opts: DataOptions) -> dict:
    """A generator run's config document: ``--config FILE``, the ``--set`` overrides, then DATA and the data options."""
    doc = read_config(config, sets, sections=("out_dir", "data", "model", "train"), mappings=("model", "train"))
    dcfg = build_data_config(data, data_opts, doc.get("data"), config)
    doc["data"] = dcfg.model_dump(mode="json", exclude_unset=True)
    return doc


@app.command("train")
@data_options
def train_cmd(
    config: Optional[Path] = config_option("data:, model:, train: sections, out_dir"),
    sets: List[str] = set_option("train.steps=500"),
    model: Optional[str] = typer.Option(None, "--model", help="registered model name (see --list-models)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="paper | cpu (default cpu)"),
    data: Optional[str] = typer.Option(None, "--data", help="manifest CSV, folder, npz, NIfTI root, or 'phantom'"),
    data_opts: DataOptions = DataOptions(),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="training steps (default: the preset's length)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="training length in epochs instead of steps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="global batch size"),
    seed: Optional[int] = seed_option(None, "training seed (default 0)"),
    device: Optional[str] = device_option(None),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: out_dir of the config, runs/run)"),
    resume: bool = typer.Option(False, "--resume", help="continue from <out>/checkpoints/latest"),
    list_models: bool = typer.Option(False, "--list-models", help="list registered models and presets, then exit"),
) -> None:
    """Train a generative model; writes checkpoints, samples and logs into the run folder.

    The config file is optional: `medbalance train --model dcgan --data DATA --steps 500 --out RUN` trains with
    the model preset's defaults. Precedence: config file < --set < the options."""
    if list_models:
        return _list_models()
    from medbalance.models.registry import resolve_params
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import train

    doc = run_config_doc(config, sets, data, data_opts)
    if not doc["data"].get("path"):
        raise ConfigError("no dataset: give --data DATA (or data.path in --config)")
    given = {k: v for k, v in {"name": model, "preset": preset}.items() if v is not None}
    doc["model"] = {**(doc.get("model") or {}), **given}
    tr = {k: v for k, v in dict(steps=steps, epochs=epochs, batch_size=batch_size, seed=seed, device=device).items()
          if v is not None}
    doc["train"] = {**(doc.get("train") or {}), **tr}
    if (steps is None) != (epochs is None):  # --steps replaces a length in epochs from the config, and vice versa
        doc["train"]["epochs" if epochs is None else "steps"] = None
    if out is not None:
        doc["out_dir"] = str(out)
    cfg = RunConfig.from_dict(doc, source=config)
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
