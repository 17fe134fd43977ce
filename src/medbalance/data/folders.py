"""Class-folder source (ImageFolder style): ``root/<class>/**/*.{png,jpg,jpeg,bmp,tif,tiff}``.

Classes are the sub-folder names, sorted (numerically when all are integers), or
``cfg.classes`` when declared (folder per declared class required; other folders ignored
with a warning). Hidden files and folders (``.name``) are ignored; other non-image files are
ignored with a warning. An empty class folder is an error, or with ``cfg.skip_bad`` the
class is dropped (with a warning). Ids are ``<class>/<path inside the class folder without
extension>``. No masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medbalance.data.config import DataConfig
from medbalance.data.dataset import ImageDataset
from medbalance.data.diskset import assemble_disk_dataset, decode_items
from medbalance.data.imageio import IMAGE_EXTENSIONS
from medbalance.data.manifest import Item, Problem, natural_sorted, raise_or_skip
from medbalance.data.sources import SOURCES
from medbalance.data.transforms import assemble_dataset
from medbalance.errors import DataError


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def list_class_files(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive, sorted, hidden skipped) and the number of other files."""
    images, other = [], 0
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if _hidden(rel) or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        else:
            other += 1
    return images, other


@SOURCES.register("folders", help="class folders: root/<class>/*.png|jpg|bmp|tif")
def load_folders(cfg: DataConfig) -> ImageDataset:
    if cfg.path is None:
        raise DataError("no folder given (data.path)")
    root = Path(cfg.path)
    if not root.exists():
        raise DataError("folder not found", path=root)
    if not root.is_dir():
        raise DataError("not a folder (class-folder source expects root/<class>/*.png)", path=root)
    meta: dict[str, Any] = {"source": "folders", "path": str(root), "skipped": [], "warnings": [], "conversions": []}
    warnings: list[str] = meta["warnings"]

    subdirs = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        warnings.append(f"ignored {len(loose)} file(s) directly in the root folder (images must be in class folders)")
    if cfg.classes is not None:
        missing = [c for c in cfg.classes if c not in subdirs]
        if missing:
            raise DataError(
                f"no folder for declared class(es) {missing} (folders: {', '.join(sorted(subdirs)) or 'none'})",
                path=root,
            )
        extra = sorted(set(subdirs) - set(cfg.classes))
        if extra:
            warnings.append(f"ignored folder(s) not in the declared classes: {', '.join(extra)}")
        class_names = list(cfg.classes)
    else:
        class_names = natural_sorted(list(subdirs))
    if not class_names:
        raise DataError("no class folders found (expected root/<class>/*.png)", path=root)

    items: list[Item] = []
    problems: list[Problem] = []
    n_other = 0
    for c in class_names:
        files, other = list_class_files(subdirs[c])
        n_other += other
        if not files:
            problems.append(Problem(str(subdirs[c]), f"empty class {c!r}: no image files ({', '.join(IMAGE_EXTENSIONS)})"))
        for f in files:
            rel = f.relative_to(subdirs[c]).with_suffix("")
            items.append(Item(image=f, extra={"label": c, "id": f"{c}/{rel.as_posix()}"}))
    if n_other:
        warnings.append(f"ignored {n_other} non-image file(s) inside class folders")
    if cfg.classes is not None and problems:
        raise problems[0].error()  # a declared class must have images
    raise_or_skip(problems, cfg, meta)

    good = decode_items(cfg, items, root.name, meta)
    if not good:
        raise DataError("no readable images in any class folder", path=root)

    present = {it.extra["label"] for it, _ in good}
    dropped = [c for c in class_names if c not in present]
    if dropped:
        if cfg.classes is not None:
            raise DataError(f"empty class(es) {dropped}: no readable images", path=root)
        warnings.append(f"dropped empty class(es) {', '.join(dropped)}")
        class_names = [c for c in class_names if c in present]
    if meta["skipped"]:
        warnings.append(f"skipped {len(meta['skipped'])} bad input(s) (listed in meta['skipped'])")
    cidx = {c: i for i, c in enumerate(class_names)}
    if meta["storage"] == "disk":
        return assemble_disk_dataset(cfg, rows=[d for _, d in good], labels=[cidx[it.extra["label"]] for it, _ in good],
                                     class_names=class_names, ids=[it.extra["id"] for it, _ in good], meta=meta)
    return assemble_dataset(
        cfg,
        images=[d.image for _, d in good],
        labels=[cidx[it.extra["label"]] for it, _ in good],
        class_names=class_names,
        ids=[it.extra["id"] for it, _ in good],
        meta=meta,
    )


__all__ = ["list_class_files", "load_folders"]
