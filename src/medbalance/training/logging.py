"""Training logs: ``losses.csv``, TensorBoard scalars/images and the progress bar.

Sample grids are drawn with :mod:`medbalance.utils.imaging`."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import TextColumn

from medbalance.utils.io import atomic_write_text
from medbalance.utils.progress import make_progress


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
