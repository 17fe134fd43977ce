"""One typed configuration (pydantic + YAML) shared by the CLI and the Python API.

Each pipeline stage defines its section (``DataConfig`` in :mod:`medbalance.data.config`,
``ModelConfig`` in :mod:`medbalance.models.config`, ``TrainConfig`` in
:mod:`medbalance.training.config`, ...). This module holds the common base class, YAML
loading, ``key.sub=value`` command-line overrides and saving the resolved config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from medbalance.errors import ConfigError
from medbalance.utils.io import atomic_write_text

C = TypeVar("C", bound="BaseConfig")


class BaseConfig(BaseModel):
    """Strict base: unknown keys are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str | Path | None = None) -> C:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e), path=source) from None
        except ConfigError as e:  # from a validator that checks a nested part (a model's params against its preset)
            if source is None:
                raise
            raise ConfigError(str(e), path=source) from None

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, overrides: list[str] | None = None) -> C:
        data = read_yaml(path)
        data = apply_overrides(data, overrides or [])
        return cls.from_dict(data, source=path)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config (every default filled in) atomically."""
        return atomic_write_text(path, self.to_yaml())

    def with_overrides(self: C, overrides: list[str]) -> C:
        return type(self).from_dict(apply_overrides(self.model_dump(mode="json"), overrides))


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    return "invalid config: " + "; ".join(parts)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config file not found", path=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file ({e.strerror})", path=path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML ({str(e).splitlines()[0]})", path=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config must be a YAML mapping", path=path)
    return data


def parse_override_value(raw: str) -> Any:
    """Parse the right-hand side of ``key=value`` with YAML rules (numbers, bools, lists, null)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (returns a new dict)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        keys = [k for k in key.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r} has an empty key")
        node: Any = out
        for k in keys[:-1]:
            if isinstance(node, list):  # a list item by index: generators.0.steps=500
                node = node[_list_index(node, k, item)]
                continue
            nxt = node.get(k)
            if nxt is None:
                nxt = {}
                node[k] = nxt
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
            node = nxt
        if isinstance(node, list):
            node[_list_index(node, keys[-1], item)] = parse_override_value(raw)
        elif not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {keys[-2]!r} is not a section")
        else:
            node[keys[-1]] = parse_override_value(raw)
    return out


def _list_index(node: list, key: str, item: str) -> int:
    try:
        i = int(key)
    except ValueError:
        raise ConfigError(f"override {item!r}: {key!r} is not an index of a list of {len(node)}") from None
    if not -len(node) <= i < len(node):
        raise ConfigError(f"override {item!r}: index {i} is out of range (the list has {len(node)} items)")
    return i
