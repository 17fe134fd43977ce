"""Training logs: ``losses.csv``, TensorBoard scalars/images, the progress bar, sample grids."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import TextColumn

from medbalance.utils.io import atomic_write_bytes, atomic_write_text
from medbalance.utils.progress import make_progress

MASK_COLOURS = np.array(
    [[255, 64, 64], [64, 255, 64], [64, 160, 255], [255, 220, 0], [255, 0, 255], [0, 255, 255]], dtype=np.uint8
)


# --------------------------------------------------------------------------- sample grids
def to_display(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, H, W', 3) uint8. 1 channel: grey; 3: RGB; else channels side by side."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    b, c, h, w = x.shape
    if c == 3:
        return x.permute(0, 2, 3, 1).contiguous()
    if c != 1:  # multi-modal (e.g. FLAIR + T1ce): tile the channels horizontally
        x = x.permute(0, 2, 1, 3).reshape(b, 1, h, c * w)
    return x.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous()


def mask_outlines(masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) int label indices -> (B, H, W) int: label index on region borders, 0 elsewhere."""
    m = masks.long()
    x = m.unsqueeze(1).float()
    # a pixel is on a border when a 3x3 neighbour has a different label
    mx = F.max_pool2d(x, 3, stride=1, padding=1)
    mn = -F.max_pool2d(-x, 3, stride=1, padding=1)
    border = ((mx != x) | (mn != x)).squeeze(1) & (m > 0)
    return torch.where(border, m, torch.zeros_like(m))


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
        reps = disp.shape[2] // outl.shape[2]
        outl = outl.repeat(1, 1, reps)  # outline every tiled channel
        colours = torch.from_numpy(MASK_COLOURS)
        idx = (outl - 1).clamp(min=0) % len(MASK_COLOURS)
        disp = torch.where((outl > 0).unsqueeze(-1), colours[idx], disp)
    b, h, w, _ = disp.shape
    tiles = disp[: rows * cols].permute(0, 3, 1, 2)  # (B, 3, H, W)
    tiles = F.pad(tiles, (0, pad, 0, pad), value=32)  # right/bottom gutter per tile
    grid = tiles.reshape(rows, cols, 3, h + pad, w + pad).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(rows * (h + pad), cols * (w + pad), 3)
    grid = F.pad(grid.permute(2, 0, 1), (pad, 0, pad, 0), value=32).permute(1, 2, 0).contiguous()
    return grid.numpy()


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- run logger
class RunLogger:
    """Writes ``losses.csv`` and TensorBoard events and drives the progress bar (rank 0 only)."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, tensorboard: bool, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.csv_path = self.run_dir / "losses.csv"
        self.columns: list[str] | None = None
        self.tb = None
        self.progress = None
        if not enabled:
            return
        if start_step > 0 and self.csv_path.is_file():
            self._truncate_csv(start_step)
        elif self.csv_path.exists():
            self.csv_path.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_step or None)
        self.progress = make_progress(TextColumn("{task.fields[info]}"))
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")

    def _truncate_csv(self, start_step: int) -> None:
        """On resume, drop rows logged after the checkpoint (they will be logged again)."""
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        self.columns = rows[0][1:-1]
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= start_step]
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
        atomic_write_text(self.csv_path, buf.getvalue())

    def log(self, step: int, losses: dict[str, float], images_per_s: float) -> None:
        if not self.enabled:
            return
        if self.columns is None:
            self.columns = list(losses)
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(["step", *self.columns, "images_per_s"])
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow(
                [step, *[_fmt(losses.get(k, math.nan)) for k in self.columns], f"{images_per_s:.2f}"]
            )
        if self.tb is not None:
            for k, v in losses.items():
                self.tb.add_scalar(f"loss/{k}", v, step)
            self.tb.add_scalar("perf/images_per_s", images_per_s, step)
        info = "  ".join(f"{k} {v:.4g}" for k, v in losses.items()) + f"  {images_per_s:.1f} img/s"
        self.progress.update(self.task, completed=step, info=info)

    def advance_to(self, step: int) -> None:
        if self.enabled and self.progress is not None:
            self.progress.update(self.task, completed=step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, rgb, step, dataformats="HWC")

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.progress is not None:
            self.progress.stop()


def _fmt(v: Any) -> str:
    return repr(float(v))  # full precision: resumed runs are compared value by value


def read_losses_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of ``losses.csv`` as dicts of floats (step as int)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in rows]
