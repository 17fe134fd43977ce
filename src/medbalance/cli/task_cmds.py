"""``medbalance train-task``: train a downstream classifier or segmentation U-Net on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from medbalance.cli.app import app
from medbalance.cli.options import (
    DataOptions,
    build_data_config,
    check_sections,
    config_option,
    data_options,
    device_option,
    overwrite_option,
    read_config,
    seed_option,
    set_option,
)
from medbalance.errors import ConfigError

TASKS = ("classification", "segmentation")


def build_task_configs(
    task: str,
    data: str,
    config: Optional[Path],
    overrides: list[str],
    cli: dict[str, Any],
    data_opts: DataOptions = DataOptions(),
):
    """(DataConfig, TaskConfig, val_fraction) from an optional YAML with ``data:`` / ``task:`` sections
    (+ top-level ``val_fraction``), ``--set section.key=value`` overrides and the CLI options."""
    from medbalance.training.task import TaskConfig

    raw = read_config(config, overrides)
    check_sections(raw, ("data", "task", "val_fraction"), config)
    if not isinstance(raw.get("data") or {}, dict) or not isinstance(raw.get("task") or {}, dict):
        raise ConfigError("data: and task: must be mappings", path=config)
    t = dict(raw.get("task") or {})
    t["task"] = task
    t.update({k: v for k, v in cli.items() if v is not None and k != "val_fraction"})
    vf = cli.get("val_fraction")
    if vf is None:
        vf = raw.get("val_fraction", 0.15)
    try:
        vf = float(vf)
    except (TypeError, ValueError):
        raise ConfigError(f"val_fraction must be a number, got {vf!r}", path=config) from None
    if not 0 <= vf < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {vf}")
    dcfg = build_data_config(data, data_opts, raw.get("data"), config)
    return dcfg, TaskConfig.from_dict(t, source=config), vf


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
    seg_mode: Optional[str] = typer.Option(None, "--seg-mode", help="softmax (exclusive labels) | sigmoid (independent)"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    class_weights: Optional[bool] = typer.Option(None, "--class-weights/--no-class-weights"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment"),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="held-out validation fraction (default 0.15)"),
    seed: Optional[int] = seed_option(None, "seed of the split and the training (default 0)"),
    device: Optional[str] = device_option(None),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | auto"),
    config: Optional[Path] = config_option("data: and task: sections, val_fraction"),
    set_: List[str] = set_option("task.lr=3e-4"),
    overwrite: bool = overwrite_option("a non-empty OUT_DIR"),
) -> None:
    """Train a classifier or segmentation U-Net; select the best epoch on a stratified validation split."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from medbalance.data.sources import load_dataset
    from medbalance.data.splits import split_train_val
    from medbalance.training.task import task_model_meta, train_task_model
    from medbalance.models.tasknets import save_task_model
    import yaml

    from medbalance.utils.io import atomic_directory, atomic_write_json, atomic_write_text

    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if out_dir.exists() and not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError("output folder exists and is not empty (use --overwrite)", path=out_dir)
    dcfg, tcfg, vf = build_task_configs(
        task,
        data,
        config,
        list(set_ or []),
        dict(epochs=epochs, batch_size=batch_size, arch=arch, seg_mode=seg_mode, lr=lr, class_weights=class_weights,
             augment=augment, seed=seed, device=device, precision=precision, val_fraction=val_fraction),
        data_opts,
    )
    from medbalance.utils.device import resolve_precision, select_device

    resolve_precision(tcfg.precision, select_device(tcfg.device))  # fail before loading data
    ds = load_dataset(dcfg)
    train, val = split_train_val(ds, vf, tcfg.seed)
    console = Console(stderr=True)
    console.print(
        f"[bold]{task}[/bold] on {len(ds)} samples ({dcfg.path}): train {len(train)}, "
        f"val {0 if val is None else len(val)}; classes {train.class_counts()}"
    )
    result = train_task_model(train, val, tcfg)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        meta = task_model_meta(train, val, tcfg, result)
        meta["data"] = dcfg.model_dump(mode="json")
        save_task_model(tmp, result.model, meta)
        atomic_write_text(
            tmp / "config.yaml",
            yaml.safe_dump(
                {"data": dcfg.model_dump(mode="json"), "task": tcfg.model_dump(mode="json"), "val_fraction": vf},
                sort_keys=False,
            ),
        )
        atomic_write_json(
            tmp / "metrics.json",
            {"task": task, "best_epoch": result.best_epoch, "val_metrics": result.val_metrics,
             "n_train": len(train), "n_val": 0 if val is None else len(val)},
        )
        atomic_write_json(tmp / "history.json", result.history)
        atomic_write_json(tmp / "split.json", {"train": list(train.ids), "val": None if val is None else list(val.ids)})

    table = Table(title=f"train-task {task}: best epoch {result.best_epoch}/{len(result.history)}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    def rows(prefix: str, v) -> None:  # nested dicts flattened; per-case lists and the confusion matrix left out
        if isinstance(v, dict):
            for kk, vv in v.items():
                rows(f"{prefix}[{kk}]" if prefix else kk, vv)
        elif v is None or isinstance(v, (int, float)):
            table.add_row(escape(prefix), "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.4f}"))

    rows("", result.val_metrics)
    if not result.val_metrics:
        table.add_row("(no validation set)", "-")
    Console().print(table)
    typer.echo(f"saved {out_dir}")
