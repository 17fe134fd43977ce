"""Imaging helpers shared by training logs, evaluation montages, data writers and the report.

- display conversion to 8-bit RGB: :func:`to_display` (model tensors in ``[-1, 1]``) and
  :func:`array_to_display` (decoded files in their storage range);
- label-map outlines: :func:`mask_outlines` and :func:`paint_outlines` (colours :data:`MASK_COLOURS`);
- grids: :func:`render_grid` (a batch of tensors) and :func:`tile_row` (display arrays of any size);
- PNG encoding: :func:`png_bytes` (arrays), :func:`figure_png` (matplotlib figures), :func:`save_png`
  (atomic file) and :func:`png_data_uri` (base64 for self-contained HTML).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medbalance.utils.io import atomic_write_bytes

MASK_COLOURS = np.array(
    [[255, 64, 64], [64, 255, 64], [64, 160, 255], [255, 220, 0], [255, 0, 255], [0, 255, 255]], dtype=np.uint8
)
MASK_COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")


# --------------------------------------------------------------------------- display conversion
def to_display(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, H, W', 3) uint8. 1 channel: grey; 3: RGB; else channels side by side."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    b, c, h, w = x.shape
    if c == 3:
        return x.permute(0, 2, 3, 1).contiguous()
    if c != 1:  # multi-modal (e.g. FLAIR + T1ce): tile the channels horizontally
        x = x.permute(0, 2, 1, 3).reshape(b, 1, h, c * w)
    return x.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous()


def array_to_display(array: np.ndarray, kind: str) -> np.ndarray:
    """A decoded image in its storage range -> (H, W, 3) uint8.

    ``kind`` ``uint8``: as is; ``uint16``: divided by 257; ``float``: 0.5-99.5 percentile window.
    (H, W) is replicated to grey RGB; (C, H, W) with C in 1..3 is moved to the last axis first.
    """
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 2, 3) and a.shape[-1] not in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)
    if kind == "uint16":
        a = a / 257.0
    elif kind == "float":
        lo, hi = float(np.percentile(a, 0.5)), float(np.percentile(a, 99.5))
        a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    elif kind != "uint8":
        raise ValueError(f"unknown image kind {kind!r} (uint8, uint16, float)")
    a = a.round().clip(0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 2:  # two channels: show the first
        a = a[..., 0]
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a


# --------------------------------------------------------------------------- outlines
def mask_outlines(masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) int label indices -> (B, H, W) int: label index on region borders, 0 elsewhere."""
    m = masks.long()
    x = m.unsqueeze(1).float()
    # a pixel is on a border when a 3x3 neighbour has a different label
    mx = F.max_pool2d(x, 3, stride=1, padding=1)
    mn = -F.max_pool2d(-x, 3, stride=1, padding=1)
    border = ((mx != x) | (mn != x)).squeeze(1) & (m > 0)
    return torch.where(border, m, torch.zeros_like(m))


def paint_outlines(rgb: torch.Tensor, outlines: torch.Tensor) -> torch.Tensor:
    """Draw outlines (B, H, W; index k > 0 in colour ``MASK_COLOURS[(k - 1) % 6]``) over (B, H, W', 3) uint8.

    When the images are wider than the outlines (channels tiled side by side), the outlines are repeated."""
    reps = rgb.shape[2] // outlines.shape[2]
    outl = outlines.repeat(1, 1, reps) if reps > 1 else outlines
    colours = torch.from_numpy(MASK_COLOURS)
    idx = (outl - 1).clamp(min=0) % len(MASK_COLOURS)
    return torch.where((outl > 0).unsqueeze(-1), colours[idx], rgb)


# --------------------------------------------------------------------------- grids
def render_grid(
    images: torch.Tensor,
    rows: int,
    cols: int,
    masks: torch.Tensor | None = None,
    pad: int = 2,
    outline_labels: list[int] | None = None,
) -> np.ndarray:
    """Images (rows*cols, C, H, W) -> an RGB grid (uint8 array), optional mask outlines drawn in colour
    (only of the label indices in ``outline_labels`` when given, e.g. lesions but not anatomy)."""
    disp = to_display(images)  # (B, H, W', 3)
    if masks is not None:
        outl = mask_outlines(masks.cpu())  # (B, H, W)
        if outline_labels is not None:
            outl = torch.where(torch.isin(outl, torch.tensor(outline_labels, dtype=outl.dtype)), outl, 0)
        disp = paint_outlines(disp, outl)
    _, h, w, _ = disp.shape
    tiles = disp[: rows * cols].permute(0, 3, 1, 2)  # (B, 3, H, W)
    tiles = F.pad(tiles, (0, pad, 0, pad), value=32)  # right/bottom gutter per tile
    grid = tiles.reshape(rows, cols, 3, h + pad, w + pad).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(rows * (h + pad), cols * (w + pad), 3)
    grid = F.pad(grid.permute(2, 0, 1), (pad, 0, pad, 0), value=32).permute(1, 2, 0).contiguous()
    return grid.numpy()


def tile_row(tiles: list[np.ndarray], pad: int = 2, fill: int = 32, background: int = 255) -> np.ndarray:
    """(H_i, W_i, 3) uint8 images of any sizes -> one row, each in a cell of the largest size (``fill``)."""
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    canvas = np.full((h + 2 * pad, len(tiles) * (w + pad) + pad, 3), background, np.uint8)
    for j, t in enumerate(tiles):
        x0 = pad + j * (w + pad)
        canvas[pad : pad + h, x0 : x0 + w] = fill
        canvas[pad : pad + t.shape[0], x0 : x0 + t.shape[1]] = t
    return canvas


# --------------------------------------------------------------------------- PNG encoding
def png_bytes(array: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) uint8/uint16 or (H, W, 3) uint8 array (Pillow picks L, I;16 or RGB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig: Any, dpi: float | None = None) -> bytes:
    """PNG bytes of a matplotlib ``Figure`` (Agg canvas, tight bounding box)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", **({} if dpi is None else {"dpi": dpi}))
    return buf.getvalue()


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write :func:`png_bytes` of ``rgb`` atomically."""
    return atomic_write_bytes(path, png_bytes(rgb))


def png_data_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes (self-contained HTML)."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


__all__ = [
    "MASK_COLOURS",
    "MASK_COLOUR_NAMES",
    "array_to_display",
    "figure_png",
    "mask_outlines",
    "paint_outlines",
    "png_bytes",
    "png_data_uri",
    "render_grid",
    "save_png",
    "tile_row",
]
