"""Imports point one way: data -> models -> training -> synthesis -> evaluation -> experiments -> report -> cli.

Every module under ``src/medbalance`` is parsed with :mod:`ast` (imports inside functions and ``TYPE_CHECKING``
blocks included, relative imports resolved). A module may import its own layer and the layers before it; the
shared modules (``utils``, ``errors``, ``config``, ``registry``, the package ``__init__`` / ``__main__``) may be
imported from anywhere and import no layer themselves.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "medbalance"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE
LAYERS = ("data", "models", "training", "synthesis", "evaluation", "experiments", "report", "cli")
SHARED = ("utils", "errors", "config", "registry", "__init__", "__main__")


def layer_of(module: str) -> int | None:
    """Layer index of a dotted module name inside the package; None for shared modules. ValueError when unmapped."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        raise ValueError(f"{module} is not in {PACKAGE}")
    if len(parts) == 1:
        return None  # the package itself (its __init__)
    top = parts[1]
    if top in SHARED:
        return None
    if top in LAYERS:
        return LAYERS.index(top)
    raise ValueError(f"{module}: {top!r} is neither a layer ({', '.join(LAYERS)}) nor shared ({', '.join(SHARED)})")


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``medbalance`` import in ``tree``, wherever it occurs.

    ``from medbalance import x`` names ``medbalance.x``, so a subpackage imported by name maps to its own layer.
    """
    out: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == PACKAGE:
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return [(line, m) for line, m in out if m == PACKAGE or m.startswith(PACKAGE + ".")]


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        own = layer_of(module) if path.name != "__main__.py" or path.parent != root else None
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(root.parent)
        for line, target in imported_modules(tree, module, path.name == "__init__.py"):
            try:
                dep = layer_of(target)
            except ValueError:  # ``from medbalance import ConfigError``: a name of the package's __init__
                dep = None
            if dep is None:
                continue
            if own is None:
                found.append(f"{where}:{line}: shared module imports {target} (layer {LAYERS[dep]})")
            elif dep > own:
                found.append(f"{where}:{line}: {LAYERS[own]} imports {target} ({LAYERS[dep]}, a later layer)")
    return sorted(set(found))


def test_every_module_maps_to_a_layer():
    for path in ROOT.rglob("*.py"):
        if path.name == "__main__.py" and path.parent == ROOT:
            continue
        layer_of(module_name(path))  # raises for a top-level name that is neither a layer nor shared


def test_imports_point_one_way():
    bad = violations()
    assert not bad, "imports pointing backwards:\n" + "\n".join(bad)


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_checker_finds_backward_imports(tmp_path):
    root = tmp_path / PACKAGE
    _write(root, "__init__.py", "")
    _write(root, "data/__init__.py", "")
    _write(root, "data/a.py", "import os\n\n\ndef f():\n    from medbalance.training import engine\n")
    _write(root, "training/__init__.py", "from . import engine\n")
    _write(root, "training/engine.py", "from ..data import a\nfrom ..evaluation.stats import x\n")
    _write(root, "evaluation/__init__.py", "")
    _write(root, "evaluation/stats.py", "from medbalance import training\nfrom medbalance.utils.io import y\n")
    _write(root, "utils/io.py", "from medbalance.data.a import f\n")
    _write(root, "cli/main.py", "import medbalance.evaluation.stats\nfrom medbalance import ConfigError, data\n")
    assert violations(root) == [
        "medbalance/data/a.py:5: data imports medbalance.training (training, a later layer)",
        "medbalance/training/engine.py:2: training imports medbalance.evaluation.stats (evaluation, a later layer)",
        "medbalance/utils/io.py:1: shared module imports medbalance.data.a (layer data)",
    ]


def test_unknown_top_level_name_is_refused(tmp_path):
    root = tmp_path / PACKAGE
    _write(root, "__init__.py", "")
    _write(root, "plugins/x.py", "")
    with pytest.raises(ValueError, match="neither a layer"):
        for path in root.rglob("*.py"):
            layer_of(module_name(path, root))
