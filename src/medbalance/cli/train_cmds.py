"""``medbalance train [--config FILE] [--set key=value ...] [--model NAME] [--data DATA] [--steps N] [--out RUN]
[--resume] [--list-models]`` (the config file is optional)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import (
    DataOptions,
    build_data_config,
    check_sections,
    config_option,
    data_options,
    device_option,
    read_config,
    seed_option,
    set_option,
)
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
@data_options
def train_cmd(
    config_arg: Optional[Path] = typer.Argument(None, hidden=True, help="deprecated spelling of --config"),
    overrides: Optional[List[str]] = typer.Argument(None, hidden=True, help="deprecated spelling of --set"),
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
        _list_models()
        return
    if config_arg is not None and config is not None:
        raise ConfigError("give the config once: --config FILE")
    config = config if config is not None else config_arg
    from medbalance.models.registry import resolve_params
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import train

    doc = read_config(config, list(sets) + list(overrides or []))
    check_sections(doc, ("out_dir", "data", "model", "train"), config)
    for key in ("data", "model", "train"):
        if not isinstance(doc.get(key) or {}, dict):
            raise ConfigError(f"the {key}: section must be a mapping", path=config)
    if model is not None or preset is not None:
        given = {k: v for k, v in {"name": model, "preset": preset}.items() if v is not None}
        doc["model"] = {**(doc.get("model") or {}), **given}
    dcfg = build_data_config(data, data_opts, doc.get("data"), config)
    doc["data"] = dcfg.model_dump(mode="json", exclude_unset=True)
    if not doc["data"].get("path"):
        raise ConfigError("no dataset: give --data DATA (or data.path in --config)")
    tr = {k: v for k, v in dict(steps=steps, epochs=epochs, batch_size=batch_size, seed=seed, device=device).items()
          if v is not None}
    if tr:
        doc["train"] = {**(doc.get("train") or {}), **tr}
        if steps is not None and epochs is None:
            doc["train"]["epochs"] = None  # --steps replaces a length in epochs from the config
        elif epochs is not None and steps is None:
            doc["train"]["steps"] = None
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
        from medbalance.evaluation.diffusion_memorization import (
            REPORT_NAME,
            memorization_report,
            summary_line,
        )

        typer.echo(summary_line(memorization_report(res.run_dir)) + f" ({res.run_dir / REPORT_NAME})")
