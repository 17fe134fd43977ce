"""Parsing of command-line values shared by several commands (one clear error line each)."""

from __future__ import annotations

from medbalance.errors import ConfigError


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
