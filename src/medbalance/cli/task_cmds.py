"""``medbalance train-task``: train a downstream classifier or segmentation U-Net on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import (
    DataOptions, build_data_config, config_option, data_options, device_option, overwrite_option, print_table,
    read_config, seed_option, set_option,
)
from medbalance.errors import ConfigError

TASKS = ("classification", "segmentation")


def _metric_rows(prefix: str, v) -> list[tuple[str, str]]:
    """Nested metric dicts flattened to (name, value) rows; per-case lists and the confusion matrix left out."""
    from rich.markup import escape

    if isinstance(v, dict):
        return [row for k, vv in v.items() for row in _metric_rows(f"{prefix}[{k}]" if prefix else k, vv)]
    if v is None or isinstance(v, (int, float)):
        return [(escape(prefix), "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.4f}"))]
    return []


@app.command("train-task")
@data_options
def train_task_cmd(
    task: str = typer.Argument(..., help="classification | segmentation"),
    data: str = typer.Argument(..., help="manifest CSV, class-folder root, NIfTI root, MedMNIST .npz, or 'phantom'"),
    out_dir: Path = typer.Argument(..., help="output folder (model.safetensors, model.json, config, metrics)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
    data_opts: DataOptions = DataOptions(),
    arch: Optional[str] = typer.Option(
        None, "--arch", help="small_cnn|densenet121|resnet18|resnet34 (classification), unet|basic_unet (segmentation)"
    ),
    seg_mode: Optional[str] = typer.Option(
        None, "--seg-mode", help="softmax (exclusive labels) | sigmoid (independent)"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    class_weights: Optional[bool] = typer.Option(None, "--class-weights/--no-class-weights"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment"),
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", help="held-out validation fraction (default 0.15)"),
    seed: Optional[int] = seed_option(None, "seed of the split and the training (default 0)"),
    device: Optional[str] = device_option(None),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | auto"),
    config: Optional[Path] = config_option("data: and task: sections, val_fraction"),
    set_: List[str] = set_option("task.lr=3e-4"),
    overwrite: bool = overwrite_option("a non-empty OUT_DIR"),
) -> None:
    """Train a classifier or segmentation U-Net; select the best epoch on a stratified validation split."""
    import yaml

    from medbalance.data.sources import load_dataset
    from medbalance.data.splits import split_train_val
    from medbalance.models.tasknets import save_task_model
    from medbalance.training.task import TaskConfig, task_model_meta, train_task_model
    from medbalance.utils.device import resolve_precision, select_device
    from medbalance.utils.io import atomic_directory, atomic_write_json, atomic_write_text
    from medbalance.utils.progress import console

    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if out_dir.exists() and not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError("output folder exists and is not empty (use --overwrite)", path=out_dir)
    # an optional YAML with data: / task: sections (+ top-level val_fraction), the --set overrides, then the options
    raw = read_config(config, set_, sections=("data", "task", "val_fraction"), mappings=("task",))
    cli = dict(epochs=epochs, batch_size=batch_size, arch=arch, seg_mode=seg_mode, lr=lr, class_weights=class_weights,
               augment=augment, seed=seed, device=device, precision=precision)
    t = {**(raw.get("task") or {}), "task": task, **{k: v for k, v in cli.items() if v is not None}}
    vf = val_fraction if val_fraction is not None else raw.get("val_fraction", 0.15)
    try:
        vf = float(vf)
    except (TypeError, ValueError):
        raise ConfigError(f"val_fraction must be a number, got {vf!r}", path=config) from None
    if not 0 <= vf < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {vf}")
    dcfg, tcfg = build_data_config(data, data_opts, raw.get("data"), config), TaskConfig.from_dict(t, source=config)
    resolve_precision(tcfg.precision, select_device(tcfg.device))  # fail before loading data
    ds = load_dataset(dcfg)
    train, val = split_train_val(ds, vf, tcfg.seed)
    console.print(f"[bold]{task}[/bold] on {len(ds)} samples ({dcfg.path}): train {len(train)}, "
                  f"val {0 if val is None else len(val)}; classes {train.class_counts()}")
    result = train_task_model(train, val, tcfg)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        meta = task_model_meta(train, val, tcfg, result)
        meta["data"] = dcfg.model_dump(mode="json")
        save_task_model(tmp, result.model, meta)
        atomic_write_text(tmp / "config.yaml", yaml.safe_dump(
            {"data": dcfg.model_dump(mode="json"), "task": tcfg.model_dump(mode="json"), "val_fraction": vf},
            sort_keys=False))
        atomic_write_json(tmp / "metrics.json", {"task": task, "best_epoch": result.best_epoch,
                                                 "val_metrics": result.val_metrics, "n_train": len(train),
                                                 "n_val": 0 if val is None else len(val)})
        atomic_write_json(tmp / "history.json", result.history)
        atomic_write_json(tmp / "split.json", {"train": list(train.ids), "val": None if val is None else list(val.ids)})
    print_table(f"train-task {task}: best epoch {result.best_epoch}/{len(result.history)}", ["metric", "value"],
                _metric_rows("", result.val_metrics) or [("(no validation set)", "-")])
    typer.echo(f"saved {out_dir}")
