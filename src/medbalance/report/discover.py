"""What a results folder contains, read through the toolkit's own loaders.

:func:`discover` looks in the folder and up to two levels below for the files of :data:`JSON_MARKERS`, a generator
run folder (``config.yaml`` + ``losses.csv`` or ``checkpoints/``) and a rebalanced export (``manifest.csv`` +
``synthesis.json`` or ``model_card.json``); :func:`load_results` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbalance.data.manifest import parse_synthetic_flag, read_manifest_rows
from medbalance.errors import DataError
from medbalance.utils.io import read_json

JSON_MARKERS = {"demo": "demo.json", "downstream": "downstream.json", "feature": "feature_downstream.json",
                "benchmark": "benchmark.json", "evaluation": "evaluation.json"}


def is_run_dir(p: Path) -> bool:
    return (p / "config.yaml").is_file() and ((p / "losses.csv").is_file() or (p / "checkpoints").is_dir())


def is_export_dir(p: Path) -> bool:
    return (p / "manifest.csv").is_file() and ((p / "synthesis.json").is_file() or (p / "model_card.json").is_file())


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
        for key, is_kind in (("run", is_run_dir), ("export", is_export_dir)):
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
        real: dict[str, int] = {}
        after: dict[str, int] = {}
        for r, syn in zip(self.rows, self.synthetic):
            c = r.get("label", "")
            real[c], after[c] = real.get(c, 0) + (not syn), after.get(c, 0) + 1
        return real, after

    @property
    def conditioned_on_real_masks(self) -> bool:
        """True when synthetic rows name the training label map they were generated from."""
        return any(r.get("parent_mask_id") for r in self.rows)


@dataclass
class Results:
    """Everything the report shows, loaded; ``None`` where the folder has no such result."""

    root: Path
    found: dict[str, Path]
    json: dict[str, Any] = field(default_factory=dict)  # key of JSON_MARKERS -> parsed file
    run_dir: Path | None = None
    run_config: dict[str, Any] | None = None  # the run's RunConfig (resolved), as JSON
    train_ids: dict[str, Any] | None = None
    losses: list[dict[str, float]] | None = None
    export: ExportManifest | None = None
    synthesis: dict[str, Any] | None = None
    model_card: dict[str, Any] | None = None

    def get(self, key: str) -> dict[str, Any] | None:
        return self.json.get(key)


def _json_if_file(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def load_results(root: Path) -> Results:
    """Discover and read the results under ``root``; :class:`DataError` when there is nothing to report."""
    if not root.is_dir():
        raise DataError("report: folder not found", path=root)
    found = discover(root)
    if not found:
        raise DataError(f"no medbalance results found here (looked for {', '.join(JSON_MARKERS.values())}, a generator "
                        "run folder, a rebalanced export with manifest.csv + synthesis.json)", path=root)
    res = Results(root=root, found=found, json={k: read_json(found[k]) for k in JSON_MARKERS if k in found})
    run_dir = found.get("run")
    if run_dir is not None:
        from medbalance.training.config import read_saved_run_config
        from medbalance.training.logging import read_losses_csv

        res.run_dir = run_dir
        res.run_config = read_saved_run_config(run_dir / "config.yaml").model_dump(mode="json")
        res.train_ids = _json_if_file(run_dir / "train_ids.json")
        if (run_dir / "losses.csv").is_file():
            try:
                res.losses = read_losses_csv(run_dir / "losses.csv")
            except (OSError, ValueError, KeyError) as e:
                raise DataError(f"cannot read losses ({e})", path=run_dir / "losses.csv") from None
    export = found.get("export")
    if export is not None:
        _, rows = read_manifest_rows(export / "manifest.csv")
        try:
            flags = [parse_synthetic_flag(r.get("synthetic")) for r in rows]
        except DataError as e:
            raise DataError(e.problem, path=export / "manifest.csv") from None
        res.export = ExportManifest(folder=export, rows=rows, synthetic=flags)
        res.synthesis, res.model_card = _json_if_file(export / "synthesis.json"), _json_if_file(export / "model_card.json")
    return res


__all__ = ["JSON_MARKERS", "ExportManifest", "Results", "discover", "is_export_dir", "is_run_dir", "load_results"]
