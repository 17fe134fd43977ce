"""Manifest CSV source (the main format).

A CSV (``.tsv``: tab separated) with one row per image. Columns are configurable
(:class:`DataConfig`): ``image_column`` (required), ``label_column`` (required),
``mask_column`` (optional: column may be absent; empty cells are all-background masks),
``id_column`` (default ``id``; absent column or empty cell -> the image file's stem),
``condition_column`` and ``group_column`` (optional, e.g. site and patient).

Paths are relative to the manifest's folder (absolute paths are allowed if they lie inside
it); a path that resolves outside that folder (``..``) is an error. The check is lexical, so
symlinks placed inside the folder are followed.

Class order: ``cfg.classes`` if declared (an unknown label is an error, a declared class with
no samples an "empty class" error), else the sorted unique labels (numerically when every
label is an integer). Images are decoded on a thread pool.

Every bad row (missing/corrupt file, image/mask size mismatch, mask values outside the
declared set, unknown label, duplicate id, NaN in a float image, ...) raises a
:class:`DataError` naming the file and the problem; with ``cfg.skip_bad`` the row is skipped
instead and listed in ``meta["skipped"]``.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medbalance.data.config import DataConfig
from medbalance.data.dataset import ImageDataset
from medbalance.data.imageio import (
    LoadedImage,
    check_mask_values,
    mask_value_set,
    read_image,
    read_mask,
    validate_declared_mask_values,
)
from medbalance.data.sources import SOURCES
from medbalance.data.transforms import assemble_dataset
from medbalance.errors import DataError


# --------------------------------------------------------------------------- shared helpers
def natural_sorted(values: Sequence[str]) -> list[str]:
    """Sort labels numerically when all are integers ("2" < "10"), else as strings."""
    vals = list(dict.fromkeys(values))
    if vals and all(re.fullmatch(r"[+-]?\d+", v) for v in vals):
        return sorted(vals, key=int)
    return sorted(vals)


@dataclass
class Problem:
    """One bad input: the file (or manifest) and a one-line problem."""

    path: str
    problem: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.problem}

    def error(self) -> DataError:
        return DataError(self.problem, path=self.path)


@dataclass
class Item:
    """One sample to decode: image path, optional mask path, and where it came from."""

    image: Path
    mask: Path | None = None
    where: str = ""  # e.g. "row 5 of labels.csv" (appended to problems)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decoded:
    image: LoadedImage | None = None
    mask: np.ndarray | None = None
    mask_values: set[int] | None = None
    problem: Problem | None = None


def decode_item(item: Item, declared_mask_values: Sequence[int] | None) -> Decoded:
    """Read image (+ mask) of one item; convert expected errors into a :class:`Problem`."""
    suffix = f" ({item.where})" if item.where else ""
    try:
        img = read_image(item.image)
        if item.mask is None:
            return Decoded(image=img)
        mask = read_mask(item.mask)
        if mask.shape != img.hw:
            raise DataError(
                f"mask size {mask.shape[0]}x{mask.shape[1]} differs from image size "
                f"{img.hw[0]}x{img.hw[1]} ({item.image.name})",
                path=item.mask,
            )
        values = mask_value_set(mask)
        check_mask_values(values, declared_mask_values, item.mask)
        return Decoded(image=img, mask=mask, mask_values=values)
    except DataError as e:
        return Decoded(problem=Problem(e.path or str(item.image), e.problem + suffix))


def raise_or_skip(problems: list[Problem], cfg: DataConfig, meta: dict[str, Any]) -> None:
    """Without ``skip_bad``: raise the first problem (mentioning how many more). With it: record."""
    if not problems:
        return
    if not cfg.skip_bad:
        first = problems[0]
        more = len(problems) - 1
        msg = first.problem
        if more:
            msg += f" (and {more} more bad input{'s' if more != 1 else ''})"
        msg += "; set skip_bad=true to skip bad inputs"
        raise DataError(msg, path=first.path)
    meta.setdefault("skipped", []).extend(p.to_dict() for p in problems)


def inside(root: Path, cell: str) -> Path | None:
    """``root/cell`` normalised, or None when it resolves outside ``root`` (lexical check)."""
    p = Path(os.path.normpath(root / cell))
    try:
        if os.path.commonpath([str(root), str(p)]) != str(root):
            return None
    except ValueError:  # different drives (Windows)
        return None
    return p


SYNTHETIC_TRUE = ("1", "true", "yes", "y", "t")
SYNTHETIC_FALSE = ("0", "false", "no", "n", "f", "")


def parse_synthetic_flag(value: Any) -> bool:
    """A ``synthetic`` manifest cell as a bool, the one reading used everywhere the column is read.

    ``1 / true / yes / y / t`` -> True; ``0 / false / no / n / f`` or an empty cell -> False (any case,
    surrounding spaces ignored). Any other value raises :class:`DataError`.
    """
    flag = ("" if value is None else str(value)).strip().lower()
    if flag in SYNTHETIC_TRUE:
        return True
    if flag in SYNTHETIC_FALSE:
        return False
    raise DataError(f"'synthetic' cell {str(value).strip()!r} is not one of 1/true/yes or 0/false/no (or empty)")


# --------------------------------------------------------------------------- CSV
def read_manifest_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows (whitespace-stripped) of a CSV/TSV manifest."""
    if not path.exists():
        raise DataError("manifest file not found", path=path)
    if not path.is_file():
        raise DataError("manifest path is not a file", path=path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"manifest is not UTF-8 text ({e.reason} at byte {e.start})", path=path) from None
    except OSError as e:
        raise DataError(f"cannot read manifest ({e.strerror})", path=path) from None
    if not text.strip():
        raise DataError("empty manifest (no header, no rows)", path=path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        reader = csv.reader(text.splitlines(), delimiter=delimiter)
        all_rows = [r for r in reader if any(c.strip() for c in r)]
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", path=path) from None
    header = [h.strip() for h in all_rows[0]]
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"duplicate column name(s) {dup} in the header", path=path)
    rows = []
    for k, r in enumerate(all_rows[1:], start=2):
        if len(r) > len(header):
            raise DataError(f"line {k} has {len(r)} fields but the header has {len(header)}", path=path)
        rows.append({h: (r[i].strip() if i < len(r) else "") for i, h in enumerate(header)})
    return header, rows


def _require_column(header: list[str], name: str | None, option: str, path: Path) -> None:
    if name is not None and name not in header:
        raise DataError(
            f"missing column {name!r} (available columns: {', '.join(header)}); set {option} to the right column",
            path=path,
        )


@SOURCES.register("manifest", help="CSV manifest: image, label[, mask, id, condition, group] columns")
def load_manifest(cfg: DataConfig) -> ImageDataset:
    """Load a dataset described by a manifest CSV (see module docs)."""
    if cfg.path is None:
        raise DataError("no manifest path given (data.path)")
    path = Path(cfg.path)
    root = Path(os.path.normpath(path.absolute().parent))
    header, rows = read_manifest_rows(path)
    _require_column(header, cfg.image_column, "image_column", path)
    _require_column(header, cfg.label_column, "label_column", path)
    _require_column(header, cfg.condition_column, "condition_column", path)
    if cfg.group_column is not None and cfg.group_column != "group":  # the default column is optional
        _require_column(header, cfg.group_column, "group_column", path)
    group_column = cfg.group_column if cfg.group_column in header else None
    has_synthetic_col = "synthetic" in header
    if not rows:
        raise DataError("empty manifest: the header has no rows below it", path=path)
    if cfg.mask_values is not None:
        validate_declared_mask_values(cfg.mask_values)
    has_mask_col = cfg.mask_column is not None and cfg.mask_column in header
    has_id_col = cfg.id_column is not None and cfg.id_column in header
    declared = list(cfg.classes) if cfg.classes is not None else None
    if declared is not None and len(set(declared)) != len(declared):
        raise DataError(f"declared classes have duplicates: {declared}", path=path)

    meta: dict[str, Any] = {
        "source": "manifest",
        "path": str(path),
        "n_rows": len(rows),
        "skipped": [],
        "warnings": [],
        "conversions": [],
    }
    if cfg.mask_column is not None and not has_mask_col:
        meta["notes"] = [f"no {cfg.mask_column!r} column: dataset has no masks"]

    # ---- cheap per-row checks (no decoding)
    problems: list[Problem] = []
    items: list[Item] = []
    seen_ids: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        where = f"row {line} of {path.name}"

        def bad(problem: str, file: Path | str = path) -> None:
            problems.append(Problem(str(file), f"{problem} ({where})"))

        cell = row[cfg.image_column]
        if not cell:
            bad(f"empty {cfg.image_column!r} cell")
            continue
        img_path = inside(root, cell)
        if img_path is None:
            bad(f"image path {cell!r} resolves outside the manifest folder {root}")
            continue
        if not img_path.is_file():
            bad("image file not found", img_path)
            continue
        mask_path = None
        if has_mask_col:
            mcell = row[cfg.mask_column]
            if mcell:
                mask_path = inside(root, mcell)
                if mask_path is None:
                    bad(f"mask path {mcell!r} resolves outside the manifest folder {root}")
                    continue
                if not mask_path.is_file():
                    bad("mask file not found", mask_path)
                    continue
        label = row[cfg.label_column]
        if not label:
            bad(f"empty {cfg.label_column!r} cell")
            continue
        if declared is not None and label not in declared:
            bad(f"unknown label {label!r} (declared classes: {', '.join(declared)})")
            continue
        sid = (row[cfg.id_column] if has_id_col else "") or img_path.stem
        if sid in seen_ids:
            bad(f"duplicate id {sid!r} (first on row {seen_ids[sid]})")
            continue
        extra: dict[str, Any] = {"label": label, "id": sid}
        if cfg.condition_column is not None:
            extra["condition"] = row[cfg.condition_column]
            if not extra["condition"]:
                bad(f"empty {cfg.condition_column!r} cell")
                continue
        if group_column is not None:
            extra["group"] = row[group_column]
            if not extra["group"]:
                bad(f"empty {group_column!r} cell")
                continue
        if has_synthetic_col:
            try:
                extra["synthetic"] = parse_synthetic_flag(row["synthetic"])
            except DataError as e:
                bad(e.problem)
                continue
        seen_ids[sid] = line
        items.append(Item(image=img_path, mask=mask_path, where=where, extra=extra))
    raise_or_skip(problems, cfg, meta)

    # ---- decode in parallel (in memory, or streamed once into the on-disk pixel cache)
    from medbalance.data.diskset import assemble_disk_dataset, decode_items

    good = decode_items(cfg, items, path.name, meta, cfg.mask_values)
    on_disk = meta["storage"] == "disk"
    if meta["skipped"]:
        meta["warnings"].append(f"skipped {len(meta['skipped'])} bad row(s) (listed in meta['skipped'])")
    if not good:
        raise DataError(f"no usable rows: all {len(rows)} rows were bad", path=path)

    # ---- classes, conditions, groups
    labels_str = [it.extra["label"] for it, _ in good]
    class_names = declared if declared is not None else natural_sorted(labels_str)
    counts = {c: 0 for c in class_names}
    for lab in labels_str:
        counts[lab] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(
            f"empty class(es) {', '.join(repr(c) for c in empty)}: declared but no "
            f"{'usable ' if meta['skipped'] else ''}rows have this label",
            path=path,
        )
    cidx = {c: i for i, c in enumerate(class_names)}
    labels = [cidx[lab] for lab in labels_str]
    conditions = condition_names = None
    if cfg.condition_column is not None:
        conds = [it.extra["condition"] for it, _ in good]
        condition_names = natural_sorted(conds)
        cmap = {c: i for i, c in enumerate(condition_names)}
        conditions = [cmap[c] for c in conds]
    groups = [it.extra["group"] for it, _ in good] if group_column is not None else None

    # ---- masks: empty cells are all-background
    masks = sets = None
    n_with_mask = sum(1 for _, d in good if d.mask is not None)
    if on_disk:
        n_bg = len(good) - n_with_mask
        if n_with_mask and n_bg:
            meta["warnings"].append(f"{n_bg} row(s) have no mask: treated as all-background masks")
        elif has_mask_col and not n_with_mask:
            meta.setdefault("notes", []).append(f"column {cfg.mask_column!r} is empty in every row: no masks")
        ds = assemble_disk_dataset(
            cfg, rows=[d for _, d in good], labels=labels, class_names=list(class_names),
            ids=[it.extra["id"] for it, _ in good], meta=meta, with_masks=bool(n_with_mask), conditions=conditions,
            condition_names=condition_names, groups=groups)
    elif n_with_mask:
        masks, sets = [], []
        n_bg = 0
        for _, d in good:
            if d.mask is None:
                masks.append(np.zeros(d.image.hw, dtype=np.uint8))
                sets.append({0})
                n_bg += 1
            else:
                masks.append(d.mask)
                sets.append(d.mask_values)
        if n_bg:
            meta["warnings"].append(f"{n_bg} row(s) have no mask: treated as all-background masks")
    elif has_mask_col:
        meta.setdefault("notes", []).append(f"column {cfg.mask_column!r} is empty in every row: no masks")

    if not on_disk:
        ds = assemble_dataset(
            cfg,
            images=[d.image for _, d in good],
            labels=labels,
            class_names=list(class_names),
            ids=[it.extra["id"] for it, _ in good],
            meta=meta,
            masks=masks,
            mask_value_sets=sets,
            conditions=conditions,
            condition_names=condition_names,
            groups=groups,
        )
    if has_synthetic_col:
        ds.synthetic = torch.tensor([bool(it.extra["synthetic"]) for it, _ in good], dtype=torch.bool)
        ds.meta["n_synthetic"] = int(ds.synthetic.sum())
    return ds


__all__ = [
    "Item",
    "Problem",
    "decode_item",
    "inside",
    "load_manifest",
    "natural_sorted",
    "parse_synthetic_flag",
    "read_manifest_rows",
]
