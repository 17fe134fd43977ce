"""Options shared by several commands, defined once.

- :func:`data_options`: the data options of every command that reads a dataset (``--source``, ``--modality``,
  ``--label-pattern``, ``--brain-mask-pattern``, ``--image-size`` and the column options). The command receives
  them as one :class:`DataOptions` in its ``data_opts`` parameter.
- :func:`build_data_config`: a ``DataConfig`` from a dataset path, a config document's ``data:`` section and the
  data options (in that order of precedence, the options last); :func:`run_data_config` does the same on top of a
  trained run's data settings.
- :func:`read_config`: ``--config FILE`` + repeatable ``--set key=value`` as one document.
- The common spellings: ``--config``, ``--set``, ``--device``, ``--seed``, ``--seeds``, ``--overwrite``.
- Parsing of command-line values (one clear error line each).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from medbalance.errors import ConfigError

SOURCE_CHOICES = ("auto", "manifest", "folders", "nifti", "medmnist", "phantom")


@dataclass(frozen=True)
class DataOptions:
    """The shared data options as given on the command line (None = not given)."""

    source: Optional[str] = None
    modality: Optional[List[str]] = None
    label_pattern: Optional[str] = None
    brain_mask_pattern: Optional[str] = None
    image_size: Optional[int] = None
    image_column: Optional[str] = None
    mask_column: Optional[str] = None
    label_column: Optional[str] = None
    id_column: Optional[str] = None
    group_column: Optional[str] = None
    condition_column: Optional[str] = None

    def given(self) -> list[str]:
        """Option names (``--image-size`` ...) that were given."""
        return ["--" + k.replace("_", "-") for k, v in asdict(self).items() if v not in (None, [])]

    def data_overrides(self) -> dict[str, Any]:
        """DataConfig keys set by these options (``nifti`` a nested dict)."""
        top = {k: getattr(self, k) for k in ("source", "image_size", "image_column", "mask_column", "label_column",
                                             "id_column", "group_column", "condition_column")}
        if self.source is not None and self.source not in SOURCE_CHOICES:
            raise ConfigError(f"--source must be one of {', '.join(SOURCE_CHOICES)}, got {self.source!r}")
        nifti = {"modalities": list(self.modality) if self.modality else None, "label_pattern": self.label_pattern,
                 "brain_mask_pattern": self.brain_mask_pattern}
        out: dict[str, Any] = {k: v for k, v in top.items() if v is not None}
        nifti = {k: v for k, v in nifti.items() if v is not None}
        if nifti:
            out["nifti"] = nifti
        return out


def _data_option(flag: str, help: str, **kw: Any):
    return typer.Option(None, flag, rich_help_panel="Data options", help=help, **kw)


_DATA_OPTIONS: dict[str, tuple[Any, Any]] = {
    "source": (Optional[str], _data_option("--source", "|".join(SOURCE_CHOICES) + " (default auto)")),
    "modality": (Optional[List[str]], _data_option("--modality", "NIfTI modality glob (repeat, channel order)")),
    "label_pattern": (Optional[str], _data_option("--label-pattern", "NIfTI label volume glob")),
    "brain_mask_pattern": (Optional[str], _data_option("--brain-mask-pattern", "NIfTI brain mask glob")),
    "image_size": (Optional[int], _data_option("--image-size", "resize images to this square size", min=8)),
    "image_column": (Optional[str], _data_option("--image-column", "manifest: image path column")),
    "mask_column": (Optional[str], _data_option("--mask-column", "manifest: label-map path column")),
    "label_column": (Optional[str], _data_option("--label-column", "manifest: class column")),
    "id_column": (Optional[str], _data_option("--id-column", "manifest: sample id column")),
    "group_column": (Optional[str], _data_option("--group-column", "manifest: patient/case column")),
    "condition_column": (Optional[str], _data_option("--condition-column", "manifest: condition (site) column")),
}


def data_options(func: Callable) -> Callable:
    """Give a command the shared data options; it receives them as ``data_opts: DataOptions``."""
    sig = inspect.signature(func)
    if "data_opts" not in sig.parameters:
        raise TypeError(f"{func.__name__} needs a data_opts parameter")
    params = [p for p in sig.parameters.values() if p.name != "data_opts"]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
               for name, (ann, opt) in _DATA_OPTIONS.items()]

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        opts = DataOptions(**{name: kwargs.pop(name) for name in _DATA_OPTIONS})
        return func(*args, data_opts=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    annotations = {k: v for k, v in func.__annotations__.items() if k != "data_opts"}
    annotations.update({name: ann for name, (ann, _) in _DATA_OPTIONS.items()})
    wrapper.__annotations__ = annotations
    return wrapper


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


# ------------------------------------------------------------------ config documents
def read_config(
    config: Optional[Path], sets: Optional[list[str]], bare_section: Optional[str] = None
) -> dict[str, Any]:
    """``--config FILE`` (optional) with the ``--set key=value`` overrides applied. ``bare_section``: a file
    without that top-level key is read as that section alone (``inspect --config`` takes a bare DataConfig)."""
    from medbalance.config import apply_overrides, read_yaml

    raw: dict[str, Any] = read_yaml(config) if config is not None else {}
    if bare_section is not None and raw and bare_section not in raw:
        raw = {bare_section: raw}
    return apply_overrides(raw, list(sets or []))


def check_sections(doc: dict[str, Any], allowed: tuple[str, ...], config: Optional[Path]) -> None:
    """Refuse top-level keys other than ``allowed`` (a typo never passes silently)."""
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown top-level keys {unknown}; allowed: {', '.join(allowed)}", path=config)


def build_data_config(
    data: Optional[str],
    opts: DataOptions = DataOptions(),
    section: Optional[dict[str, Any]] = None,
    config: Optional[Path] = None,
    extra: Optional[dict[str, Any]] = None,
    nifti_extra: Optional[dict[str, Any]] = None,
):
    """DataConfig from a config's ``data:`` section, the dataset path and the data options (options win).
    ``extra`` / ``nifti_extra``: further command-specific keys (None values skipped)."""
    from medbalance.data.config import DataConfig

    if section is not None and not isinstance(section, dict):
        raise ConfigError("the data: section must be a mapping", path=config)
    base = dict(section or {})
    if data is not None:
        base["path"] = data
    over = {**opts.data_overrides(), **{k: v for k, v in (extra or {}).items() if v is not None}}
    nif = {**over.pop("nifti", {}), **{k: v for k, v in (nifti_extra or {}).items() if v is not None}}
    base.update(over)
    if nif:
        base["nifti"] = {**(base.get("nifti") or {}), **nif}
    return DataConfig.from_dict(base, source=config)


def run_data_config(run, data: Optional[str], opts: DataOptions = DataOptions(), all_classes: bool = False):
    """The data settings a generator run was trained with (size, columns, normalisation), on ``data`` when given
    (source auto-detected), with the data options on top. ``--image-size`` must be the run's image size (a
    generator makes images of the size it was trained on). ``all_classes`` drops the run's ``class_subset``."""
    from medbalance.data.config import DataConfig

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
    over = opts.data_overrides()
    nif = over.pop("nifti", {})
    base.update(over)
    if nif:
        base["nifti"] = {**(base.get("nifti") or {}), **nif}
    return DataConfig.from_dict(base, source=run.run_dir / "config.yaml")


# ------------------------------------------------------------------ values
def parse_fractions(text: str, option: str = "--fractions") -> tuple[float, float, float]:
    """``"0.6,0.2,0.2"`` -> (train, val, test) fractions."""
    try:
        fr = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not three comma-separated numbers") from None
    if len(fr) != 3:
        raise ConfigError(f"{option} needs three numbers (train,val,test), got {text!r}")
    return fr  # type: ignore[return-value]


def parse_class_fractions(items: list[str], option: str) -> dict[str, float]:
    """``["meningioma=0.1", ...]`` -> {class: fraction}."""
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        try:
            if not sep:
                raise ValueError
            out[k] = float(v)
        except ValueError:
            raise ConfigError(f"{option} {it!r} is not CLASS=FRACTION") from None
    return out


def parse_arms(text: str) -> list[str]:
    """``"real, oversample"`` -> ["real", "oversample"]."""
    return [a.strip() for a in text.split(",") if a.strip()]
