"""What a results folder contains, read through the toolkit's own loaders.

:func:`discover` looks in the folder and up to two levels below for the files of :data:`JSON_MARKERS`, a generator
run folder (``config.yaml`` + ``losses.csv`` or ``checkpoints/``) and a rebalanced export (``manifest.csv`` +
``synthesis.json`` or ``model_card.json``); :func:`load_results` reads them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbalance.data.manifest import parse_synthetic_flag, read_manifest_rows
from medbalance.errors import DataError
from medbalance.utils.io import read_json

JSON_MARKERS = {"demo": "demo.json", "downstream": "downstream.json", "feature": "feature_downstream.json",
                "benchmark": "benchmark.json", "evaluation": "evaluation.json"}
FOLDER_KINDS = {  # key -> test of a folder: a generator run, a rebalanced export
    "run": lambda p: (p / "config.yaml").is_file() and ((p / "losses.csv").is_file() or (p / "checkpoints").is_dir()),
    "export": lambda p: (p / "manifest.csv").is_file() and ((p / "synthesis.json").is_file()
                                                          or (p / "model_card.json").is_file())}


def dig(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, or None when a level is missing or not a dict."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _subdirs(p: Path) -> list[Path]:
    return sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))


def discover(root: Path) -> dict[str, Path]:
    """Paths of what the report uses under ``root`` (itself and up to two levels below; first match wins)."""
    level1 = _subdirs(root)
    found: dict[str, Path] = {}
    for d in [root, *level1, *(d for c in level1 for d in _subdirs(c))]:
        for key, name in JSON_MARKERS.items():
            if key not in found and (d / name).is_file():
                found[key] = d / name
        for key, is_kind in FOLDER_KINDS.items():
            if key not in found and is_kind(d):
                found[key] = d
    return found


@dataclass
class ExportManifest:
    """The rows of a rebalanced export's ``manifest.csv`` with the ``synthetic`` flag parsed."""

    folder: Path
    rows: list[dict[str, str]]
    synthetic: list[bool]

    def class_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(real, real + synthetic) images per class, in first-seen class order."""
        labels = [r.get("label", "") for r in self.rows]
        after = dict(Counter(labels))
        return {c: 0 for c in after} | Counter(c for c, syn in zip(labels, self.synthetic) if not syn), after


@dataclass
class Results:
    """Everything the report shows, loaded: ``json`` holds the files of :data:`JSON_MARKERS` and, where found, the run's
    ``train_ids.json`` and the export's ``synthesis.json`` / ``model_card.json`` (keys: file stems)."""

    root: Path
    found: dict[str, Path]
    json: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    run_config: dict[str, Any] | None = None  # the run's RunConfig (resolved), as JSON
    losses: list[dict[str, float]] | None = None
    export: ExportManifest | None = None

    def get(self, key: str) -> Any:
        return self.json.get(key)


def load_results(root: Path) -> Results:
    """Discover and read the results under ``root``; :class:`DataError` when there is nothing to report."""
    if not root.is_dir():
        raise DataError("report: folder not found", path=root)
    found = discover(root)
    if not found:
        raise DataError(f"no medbalance results found here (looked for {', '.join(JSON_MARKERS.values())}, a generator "
                        "run folder, a rebalanced export with manifest.csv + synthesis.json)", path=root)
    res = Results(root=root, found=found, json={k: read_json(found[k]) for k in JSON_MARKERS if k in found})
    run_dir, export = found.get("run"), found.get("export")
    extra: list[Path] = []  # further JSON files, read into res.json
    if run_dir is not None:
        from medbalance.training.config import read_saved_run_config
        from medbalance.training.logging import read_losses_csv

        res.run_dir, extra = run_dir, [run_dir / "train_ids.json"]
        res.run_config = read_saved_run_config(run_dir / "config.yaml").model_dump(mode="json")
        if (run_dir / "losses.csv").is_file():
            try:
                res.losses = read_losses_csv(run_dir / "losses.csv")
            except (OSError, ValueError, KeyError) as e:
                raise DataError(f"cannot read losses ({e})", path=run_dir / "losses.csv") from None
    if export is not None:
        _, rows = read_manifest_rows(export / "manifest.csv")
        try:
            flags = [parse_synthetic_flag(r.get("synthetic")) for r in rows]
        except DataError as e:
            raise DataError(e.problem, path=export / "manifest.csv") from None
        res.export = ExportManifest(folder=export, rows=rows, synthetic=flags)
        extra += [export / "synthesis.json", export / "model_card.json"]
    res.json.update({p.stem: read_json(p) for p in extra if p.is_file()})
    return res
