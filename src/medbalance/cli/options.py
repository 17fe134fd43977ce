"""Options and helpers shared by several commands, defined once.

- :func:`option_group`: options declared once as the fields of a dataclass (:func:`opt`), given to every command
  that takes them; :data:`data_options` are those of every command that reads a dataset (``--source``,
  ``--modality``, ``--label-pattern``, ``--brain-mask-pattern``, ``--image-size`` and the column options).
- :func:`build_data_config` / :func:`load_run_data`: a dataset from a path, a config's ``data:`` section (or a
  trained run's data settings) and the data options, the options last.
- :func:`read_config`: ``--config FILE`` + repeatable ``--set key=value`` as one document.
- The common spellings (``--config``, ``--set``, ``--device``, ``--seed``, ``--seeds``, ``--overwrite``), parsing of
  command-line values and the printing of results (one clear error line each).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, List, Optional, get_type_hints

import typer

from medbalance.errors import ConfigError
from medbalance.utils.progress import console

SOURCE_CHOICES = ("auto", "manifest", "folders", "nifti", "medmnist", "phantom")
STORAGE_CHOICES = ("auto", "memory", "disk")
_NIFTI_KEYS = {"modality": "modalities", "label_pattern": "label_pattern", "brain_mask_pattern": "brain_mask_pattern"}


def opt(default: Any, help: str, flag: Optional[str] = None, **kw: Any) -> Any:
    """A dataclass field that is also a command-line option (``flag`` default: ``--field-name``)."""
    meta = {"help": help, "flag": flag, "kw": kw}
    return field(default_factory=list, metadata=meta) if default == [] else field(default=default, metadata=meta)


def option_group(cls: type, param: str, panel: str) -> Callable[[Callable], Callable]:
    """A decorator giving a command the options declared by the :func:`opt` fields of dataclass ``cls``; the command
    receives them as one ``cls`` in its parameter ``param``."""
    hints = get_type_hints(cls)
    group = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name], default=typer.Option(
            f.default if f.default is not MISSING else f.default_factory(),  # type: ignore[misc]
            f.metadata["flag"] or "--" + f.name.replace("_", "-"), help=f.metadata["help"], rich_help_panel=panel,
            **f.metadata["kw"]))
        for f in fields(cls)
    ]

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func)
        if param not in sig.parameters:
            raise TypeError(f"{func.__name__} needs a {param} parameter")

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return func(*args, **{param: cls(**{p.name: kwargs.pop(p.name) for p in group})}, **kwargs)

        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[p for p in sig.parameters.values() if p.name != param] + group)
        wrapper.__annotations__ = {**{k: v for k, v in func.__annotations__.items() if k != param},
                                   **{p.name: p.annotation for p in group}}
        return wrapper

    return decorate


@dataclass(frozen=True)
class DataOptions:
    """The shared data options as given on the command line (None = not given)."""

    source: Optional[str] = opt(None, "|".join(SOURCE_CHOICES) + " (default auto)")
    modality: Optional[List[str]] = opt(None, "NIfTI modality glob (repeat, channel order)")
    label_pattern: Optional[str] = opt(None, "NIfTI label volume glob")
    brain_mask_pattern: Optional[str] = opt(None, "NIfTI brain mask glob")
    image_size: Optional[int] = opt(None, "resize images to this square size", min=8)
    image_column: Optional[str] = opt(None, "manifest: image path column")
    mask_column: Optional[str] = opt(None, "manifest: label-map path column")
    label_column: Optional[str] = opt(None, "manifest: class column")
    id_column: Optional[str] = opt(None, "manifest: sample id column")
    group_column: Optional[str] = opt(None, "manifest: patient/case column")
    condition_column: Optional[str] = opt(None, "manifest: condition (site) column")
    storage: Optional[str] = opt(None, "auto | memory | disk: keep decoded images in memory, or in an on-disk cache "
                                       "read lazily (bounded memory; default auto: disk above the memory budget; cache folder: "
                                       "data.cache_dir or $MEDBALANCE_CACHE)")

    def data_overrides(self) -> dict[str, Any]:
        """DataConfig keys set by these options (the NIfTI ones in a nested ``nifti`` dict)."""
        if self.source is not None and self.source not in SOURCE_CHOICES:
            raise ConfigError(f"--source must be one of {', '.join(SOURCE_CHOICES)}, got {self.source!r}")
        if self.storage is not None and self.storage not in STORAGE_CHOICES:
            raise ConfigError(f"--storage must be one of {', '.join(STORAGE_CHOICES)}, got {self.storage!r}")
        out = {k: v for k, v in asdict(self).items() if v not in (None, [])}
        nifti = {_NIFTI_KEYS[k]: out.pop(k) for k in list(out) if k in _NIFTI_KEYS}
        return {**out, "nifti": nifti} if nifti else out


data_options = option_group(DataOptions, "data_opts", "Data options")


# ------------------------------------------------------------------ the common spellings
def config_option(sections: str):
    return typer.Option(None, "--config", help=f"YAML config ({sections}); optional")


def set_option(example: str):
    return typer.Option([], "--set", help=f"override a config key, e.g. {example} (repeatable)")


def device_option(default: Optional[str] = "auto"):
    return typer.Option(default, "--device", help="auto | cpu | cuda | cuda:N | mps")


def seed_option(default: Optional[int] = 0, help: str = "random seed"):
    return typer.Option(default, "--seed", help=help)


def seeds_option(default: int, help: str = "number of seeds (0..N-1)"):
    return typer.Option(default, "--seeds", min=1, help=help)


def overwrite_option(what: str = "an existing output folder"):
    return typer.Option(False, "--overwrite", help=f"replace {what}")


# ------------------------------------------------------------------ config documents and datasets
def read_config(config: Optional[Path], sets: Optional[list[str]], sections: Optional[tuple[str, ...]] = None,
                mappings: tuple[str, ...] = (), bare_section: Optional[str] = None) -> dict[str, Any]:
    """``--config FILE`` (optional) with the ``--set key=value`` overrides applied. ``sections``: the allowed
    top-level keys; ``mappings``: keys whose value must be a mapping; ``bare_section``: a file without that
    top-level key is read as that section alone (``inspect --config`` takes a bare DataConfig)."""
    from medbalance.config import apply_overrides, read_yaml

    raw: dict[str, Any] = read_yaml(config) if config is not None else {}
    if bare_section is not None and raw and bare_section not in raw:
        raw = {bare_section: raw}
    doc = apply_overrides(raw, list(sets or []))
    if sections is not None:
        check_sections(doc, sections, config)
    for key in mappings:
        if not isinstance(doc.get(key) or {}, dict):
            raise ConfigError(f"the {key}: section must be a mapping", path=config)
    return doc


def check_sections(doc: dict[str, Any], allowed: tuple[str, ...], config: Optional[Path]) -> None:
    """Refuse top-level keys other than ``allowed`` (a typo never passes silently)."""
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown top-level keys {unknown}; allowed: {', '.join(allowed)}", path=config)


def _data_config(base: dict[str, Any], opts: DataOptions, source: Any, extra: Optional[dict[str, Any]] = None,
                 nifti_extra: Optional[dict[str, Any]] = None):
    """DataConfig from ``base`` with the data options (and further non-None keys) on top."""
    from medbalance.data.config import DataConfig

    over = {**opts.data_overrides(), **{k: v for k, v in (extra or {}).items() if v is not None}}
    nif = {**over.pop("nifti", {}), **{k: v for k, v in (nifti_extra or {}).items() if v is not None}}
    base.update(over)
    if nif:
        base["nifti"] = {**(base.get("nifti") or {}), **nif}
    return DataConfig.from_dict(base, source=source)


def build_data_config(data: Optional[str], opts: DataOptions = DataOptions(), section: Optional[dict[str, Any]] = None,
                      config: Optional[Path] = None, extra: Optional[dict[str, Any]] = None,
                      nifti_extra: Optional[dict[str, Any]] = None):
    """DataConfig from a config's ``data:`` section, the dataset path and the data options (options win).
    ``extra`` / ``nifti_extra``: further command-specific keys (None values skipped)."""
    if section is not None and not isinstance(section, dict):
        raise ConfigError("the data: section must be a mapping", path=config)
    base = {**(section or {}), **({"path": data} if data is not None else {})}
    return _data_config(base, opts, config, extra, nifti_extra)


def load_run_data(run, data: Optional[str], opts: DataOptions = DataOptions(), all_classes: bool = False):
    """The dataset with the data settings a generator run was trained with (size, columns, normalisation), read from
    ``data`` when given (source auto-detected), with the data options on top. ``--image-size`` must be the run's
    image size (a generator makes images of the size it was trained on). ``all_classes`` drops the run's
    ``class_subset`` (per-class runs rebalance the whole dataset)."""
    from medbalance.data import load_dataset

    shape = tuple(run.info.spatial_shape)
    if opts.image_size is not None and shape != (opts.image_size,) * len(shape):
        raise ConfigError(
            f"--image-size {opts.image_size} differs from the run's image size {'x'.join(map(str, shape))}: "
            "the generator makes images of the size it was trained on (leave --image-size out)"
        )
    base = run.config.data.model_dump(mode="json")
    if data is not None:
        base.update(path=data, source="auto")
    if all_classes:
        base["class_subset"] = None
    return load_dataset(_data_config(base, opts, run.run_dir / "config.yaml"))


# ------------------------------------------------------------------ values
def parse_numbers(text: str, option: str, what: str, cast: Callable = float,
                  ok: Callable[[list], bool] = bool) -> list:
    """``"10,3,1"`` (or ``10x3x1``) -> [10.0, 3.0, 1.0]; one error line naming ``what`` when ``ok`` is false."""
    try:
        vals = [cast(x) for x in re.split(r"[,x]", text) if x.strip()]
    except ValueError:
        vals = []
    if not vals or not ok(vals):
        raise ConfigError(f"{option} must be {what}, got {text!r}")
    return vals


def parse_fractions(text: str, option: str = "--fractions") -> tuple[float, float, float]:
    """``"0.6,0.2,0.2"`` -> (train, val, test) fractions."""
    return tuple(parse_numbers(text, option, "three numbers train,val,test (e.g. 0.6,0.2,0.2)",
                               ok=lambda v: len(v) == 3))  # type: ignore[return-value]


def parse_pairs(items: list[str], option: str, what: str, cast: Callable = str) -> dict[str, Any]:
    """``["meningioma=0.1", ...]`` -> {"meningioma": 0.1}; ``what`` names the form (``CLASS=FRACTION``)."""
    out: dict[str, Any] = {}
    for it in items:
        k, sep, v = (s.strip() for s in it.partition("="))
        try:
            if not (sep and k and v):
                raise ValueError
            if k in out:
                raise ConfigError(f"{option} given twice for {k!r}")
            out[k] = cast(v)
        except ValueError:
            raise ConfigError(f"{option} {it!r} is not {what}") from None
    return out


def parse_class_fractions(items: list[str], option: str) -> dict[str, float]:
    """``["meningioma=0.1", ...]`` -> {class: fraction}."""
    return parse_pairs(items, option, "CLASS=FRACTION", float)


def parse_arms(text: str) -> list[str]:
    """``"real, oversample"`` -> ["real", "oversample"]."""
    return [a.strip() for a in text.split(",") if a.strip()]


# ------------------------------------------------------------------ printing results
def emit_json(result: dict[str, Any], as_json: bool, json_out: Optional[Path]) -> bool:
    """Write ``result`` to ``--json-out`` when given, print it on stdout with ``--json`` (True: printed)."""
    from medbalance.utils.io import atomic_write_json

    if json_out is not None:
        atomic_write_json(json_out, result)
    if as_json:  # numpy / torch values as plain numbers and lists
        typer.echo(json.dumps(result, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return as_json


def print_table(title: str, columns: list[str], rows: list, stderr: bool = False) -> None:
    """A rich table, the last column right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="right" if i == len(columns) - 1 else "left")
    for row in rows:
        table.add_row(*row)
    (console if stderr else Console()).print(table)


def print_summary(report: dict[str, Any], metrics: list[str], title: str, lines: tuple | list = (), **kw) -> None:
    """An experiment's arms x metrics table (mean [95% CI], p of the paired test vs real), ``lines``, warnings."""
    from medbalance.utils.tables import ci_table

    n = len(report["config"]["seeds"])
    console.print(ci_table(report["summary"], metrics, f"{title} ({n} seeds, mean [95% CI], Wilcoxon vs real)",
                           p=True, **kw))
    for line in (*lines, *(f"[yellow]warning[/yellow]: {w}" for w in report.get("warnings", []))):
        console.print(line)
