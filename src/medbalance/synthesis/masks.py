"""Mask sources for mask-conditioned generators (pix2pix, SPADE, Red-GAN).

Synthetic pairs need label maps. As in the papers:

- ``real``: the training masks themselves, rendered under the requested class or site (Red-GAN 1.3/1.9);
- ``elastic``: elastically deformed training masks; the deformed lesion labels are pasted back onto the
  original anatomy and kept only inside it (Red-GAN's ``elastic_deformation.py``);
- ``edited``: lesions moved, scaled, rotated, or transplanted from one case into another case's anatomy, only
  where the host has tissue (Shin et al.; Red-GAN's registration mode);
- ``folder``: a user folder of label-map PNGs.

Every drawn mask records which training mask it came from (``parent_id``) and how it was changed
(``ops``), which ends up in the export manifest.

Vocabulary: label maps are *indices* into ``dataset.mask_values`` (index 0 = background). *Anatomy* indices
(e.g. the phantom's brain label) describe tissue, *lesion* indices describe pathology. Where a dataset has no
anatomy label (binary lesion masks), the tissue of a case is taken from its image (intensity above a threshold
in [-1, 1] units, holes filled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from medbalance.data.anatomy import lesion_indices
from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError

MASK_SOURCES = ("real", "elastic", "edited", "folder")
EDIT_OPS = ("move", "scale", "rotate", "transplant")


@dataclass
class DrawnMask:
    mask: np.ndarray  # (H, W) int64 indices into mask_values
    parent_id: str  # id of the training sample the lesion came from
    source: str  # real | elastic | edited | folder
    ops: dict[str, Any] = field(default_factory=dict)  # what was changed, JSON-able
    host_id: str | None = None  # for transplants and edits: whose anatomy

    def describe(self) -> str:
        if not self.ops:
            return self.source
        parts = [f"{k}={v}" for k, v in self.ops.items()]
        return f"{self.source}(" + ";".join(parts) + ")"


@dataclass
class MaskSampler:
    """Draws label maps for synthesis from a (training) dataset.

    Parameters
    ----------
    dataset: the real training set (must have masks).
    source: one of ``real``, ``elastic``, ``edited``, ``folder``.
    anatomy_values: original mask values that denote anatomy (tissue), e.g. ``[1]`` for the phantom's brain
        label. ``None``: read ``dataset.meta["anatomy_values"]`` if present, else no anatomy labels.
    pool: ``same_class`` draws parents of the requested class (lesion appearance and position are class
        informative, e.g. extra-axial meningiomas); ``any`` draws from every class (Red-GAN renders every mask
        under every global class).
    edit_ops: which edits ``edited`` may apply (each draw applies one, chosen at random).
    tissue_threshold: for datasets without anatomy labels, tissue = image > threshold (in [-1, 1]).
    """

    dataset: ImageDataset
    source: str = "real"
    anatomy_values: Sequence[int] | None = None
    pool: str = "same_class"
    edit_ops: Sequence[str] = EDIT_OPS
    elastic_alpha: float = 7.0  # displacement scale in pixels (dpipe's elastic_transform(img, 7))
    elastic_sigma: float = 4.0  # smoothness of the displacement field in pixels
    scale_range: tuple[float, float] = (0.6, 1.5)
    max_rotation: float = 180.0
    tissue_threshold: float = -0.8
    folder: str | None = None

    def __post_init__(self) -> None:
        if self.source not in MASK_SOURCES:
            raise ConfigError(f"unknown mask source {self.source!r}; allowed: {', '.join(MASK_SOURCES)}")
        if self.pool not in ("same_class", "any"):
            raise ConfigError(f"unknown mask pool {self.pool!r}; allowed: any, same_class")
        bad = set(self.edit_ops) - set(EDIT_OPS)
        if bad:
            raise ConfigError(f"unknown edit operation(s) {sorted(bad)}; allowed: {', '.join(EDIT_OPS)}")
        ds = self.dataset
        if self.source != "folder" and (ds.masks is None or ds.mask_values is None):
            raise DataError("mask source needs a dataset with label maps", path=ds.meta.get("path"))
        values = list(ds.mask_values or [0])
        anat = self.anatomy_values if self.anatomy_values is not None else ds.meta.get("anatomy_values", [])
        unknown = set(anat) - set(values)
        if unknown:
            raise ConfigError(f"anatomy values {sorted(unknown)} are not among the mask values {values}")
        self._anatomy_idx = np.array(sorted(values.index(v) for v in anat), dtype=np.int64)
        self._lesion_idx = np.array(lesion_indices(values, anat), dtype=np.int64)
        if self.source == "folder":
            self._folder_masks = self._load_folder()

    # ------------------------------------------------------------------ helpers
    @property
    def lesion_indices(self) -> np.ndarray:
        return self._lesion_idx

    def lesion_of(self, mask: np.ndarray) -> np.ndarray:
        return np.isin(mask, self._lesion_idx)

    def tissue_of(self, i: int) -> np.ndarray:
        """Boolean tissue map of sample ``i`` (anatomy or lesion labels; else from the image)."""
        m = self.dataset.masks[i].numpy()
        if len(self._anatomy_idx):
            t = np.isin(m, self._anatomy_idx) | self.lesion_of(m)
        else:
            img = self.dataset.images[i].float().mean(0).numpy()
            t = (img > self.tissue_threshold) | self.lesion_of(m)
            t = ndimage.binary_fill_holes(ndimage.binary_opening(t, iterations=1))
        return t

    def _candidates(self, cls: int | None) -> np.ndarray:
        labels = self.dataset.labels.numpy()
        idx = np.arange(len(labels))
        if self.pool == "same_class" and cls is not None:
            idx = idx[labels == cls]
        if self.source in ("elastic", "edited"):  # need a lesion to deform or edit
            masks = self.dataset.masks[torch.as_tensor(idx)].numpy() if len(idx) else np.zeros((0, 1, 1))
            has = np.array([self.lesion_of(m).any() for m in masks], dtype=bool)
            idx = idx[has] if has.any() else idx
        if len(idx) == 0:
            name = self.dataset.class_names[cls] if cls is not None else "any"
            raise DataError(f"no training masks of class {name!r} to draw from (use pool='any')")
        return idx

    # ------------------------------------------------------------------ drawing
    def draw(self, n: int, cls: int | None, rng: np.random.Generator) -> list[DrawnMask]:
        """Draw ``n`` label maps for class ``cls`` (index) with the configured source."""
        if self.source == "folder":
            picks = rng.integers(0, len(self._folder_masks), size=n)
            return [
                DrawnMask(self._folder_masks[p][1].copy(), parent_id=self._folder_masks[p][0], source="folder")
                for p in picks
            ]
        cand = self._candidates(cls)
        if self.source == "real":
            # cycle through a shuffled pool so masks repeat only after every one was used once
            order = np.concatenate([rng.permutation(cand) for _ in range(math.ceil(n / len(cand)))])[:n]
            return [
                DrawnMask(self.dataset.masks[i].numpy().astype(np.int64), parent_id=self.dataset.ids[i], source="real")
                for i in order
            ]
        out = []
        for _ in range(n):
            i = int(rng.choice(cand))
            if self.source == "elastic":
                out.append(self._elastic(i, rng))
            else:
                op = str(rng.choice(list(self.edit_ops)))
                out.append(self._edit(i, op, rng, cand))
        return out

    def _elastic(self, i: int, rng: np.random.Generator) -> DrawnMask:
        m = self.dataset.masks[i].numpy().astype(np.int64)
        h, w = m.shape
        dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), self.elastic_sigma, mode="constant")
        dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), self.elastic_sigma, mode="constant")
        norm = max(np.abs(dy).max(), np.abs(dx).max(), 1e-8)
        dy, dx = dy / norm * self.elastic_alpha, dx / norm * self.elastic_alpha
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        warped = ndimage.map_coordinates(m, [yy + dy, xx + dx], order=0, mode="constant", cval=0)
        return DrawnMask(
            self._paste(i, warped), parent_id=self.dataset.ids[i], source="elastic",
            ops={"alpha": self.elastic_alpha, "sigma": self.elastic_sigma},
        )

    def _paste(self, host: int, lesion_map: np.ndarray) -> np.ndarray:
        """Host's anatomy with the given lesion labels pasted where the host has tissue."""
        base = self.dataset.masks[host].numpy().astype(np.int64).copy()
        tissue = self.tissue_of(host)
        base[self.lesion_of(base)] = self._fill_value(host)
        les = self.lesion_of(lesion_map) & tissue
        base[les] = lesion_map[les]
        return base

    def _fill_value(self, host: int) -> int:
        """Label to put where a host's own lesion is removed: its dominant anatomy label, else background."""
        if len(self._anatomy_idx) == 0:
            return 0
        m = self.dataset.masks[host].numpy()
        counts = [(int((m == a).sum()), int(a)) for a in self._anatomy_idx]
        return max(counts)[1]

    def _edit(self, i: int, op: str, rng: np.random.Generator, cand: np.ndarray) -> DrawnMask:
        m = self.dataset.masks[i].numpy().astype(np.int64)
        lesion = np.where(self.lesion_of(m), m, 0)
        host = i
        ops: dict[str, Any] = {"op": op}
        if op == "transplant":
            others = np.setdiff1d(np.arange(len(self.dataset)), [i])
            host = int(rng.choice(others)) if len(others) else i
            ops["host"] = self.dataset.ids[host]
        tissue = self.tissue_of(host)
        cy, cx = ndimage.center_of_mass(lesion > 0) if lesion.any() else (m.shape[0] / 2, m.shape[1] / 2)
        for _attempt in range(20):
            angle = float(rng.uniform(-self.max_rotation, self.max_rotation)) if op == "rotate" else 0.0
            scale = float(rng.uniform(*self.scale_range)) if op == "scale" else 1.0
            if op in ("move", "transplant"):
                ys, xs = np.nonzero(tissue)
                k = int(rng.integers(len(ys)))
                ty, tx = float(ys[k]), float(xs[k])
            else:
                ty, tx = cy, cx
            moved = _affine_labels(lesion, (cy, cx), (ty, tx), angle, scale)
            les = moved > 0
            if les.any() and (les & tissue).sum() >= 0.9 * les.sum():
                break
        ops.update({"shift": [round(ty - cy, 1), round(tx - cx, 1)], "angle": round(angle, 1), "scale": round(scale, 3)})
        return DrawnMask(
            self._paste(host, moved), parent_id=self.dataset.ids[i], source="edited", ops=ops,
            host_id=self.dataset.ids[host],
        )

    def _load_folder(self) -> list[tuple[str, np.ndarray]]:
        from PIL import Image

        if self.folder is None:
            raise ConfigError("mask source 'folder' needs a folder of label-map PNGs")
        root = Path(self.folder)
        files = sorted(p for p in root.glob("*") if p.suffix.lower() in (".png", ".tif", ".tiff", ".bmp"))
        if not files:
            raise DataError("no mask images (.png/.tif/.bmp) in folder", path=root)
        values = list(self.dataset.mask_values or [0, 1])
        lut = {v: i for i, v in enumerate(values)}
        shape = self.dataset.spatial_shape
        out = []
        for f in files:
            try:
                arr = np.asarray(Image.open(f))
            except Exception as e:
                raise DataError(f"cannot read mask ({type(e).__name__})", path=f) from None
            if arr.ndim != 2:
                raise DataError(f"mask must be a single-channel label map, got shape {arr.shape}", path=f)
            if arr.shape != tuple(shape):
                arr = np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.NEAREST))
            found = set(np.unique(arr).tolist())
            if not found <= set(values):
                raise DataError(f"mask values {sorted(found - set(values))} outside the dataset's {values}", path=f)
            idx = np.vectorize(lut.get)(arr).astype(np.int64)
            out.append((f.stem, idx))
        return out


def _affine_labels(
    labels: np.ndarray, centre: tuple[float, float], target: tuple[float, float], angle_deg: float, scale: float
) -> np.ndarray:
    """Rotate/scale ``labels`` about ``centre`` and move ``centre`` to ``target`` (nearest neighbour)."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    inv = np.linalg.inv(rot)
    c, t = np.asarray(centre), np.asarray(target)
    # output coord o maps to input coord inv @ (o - t) + c
    offset = c - inv @ t
    return ndimage.affine_transform(labels, inv, offset=offset, order=0, mode="constant", cval=0).astype(np.int64)
