"""Load a trained run folder for generation: :func:`load_run` -> :class:`LoadedRun`.

A run folder (written by :mod:`medbalance.training.engine`) holds ``config.yaml``,
``data_info.json``, ``train_ids.json`` and ``checkpoints/`` (see
:mod:`medbalance.training.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medbalance.data.dataset import DataInfo
from medbalance.errors import CheckpointError, ConfigError
from medbalance.models.base import GANMethod
from medbalance.training import checkpoint as ckpt
from medbalance.training.config import RunConfig, read_saved_run_config
from medbalance.utils.io import read_json, sha256_file
from medbalance.utils.progress import make_progress
from medbalance.utils.seed import stream_generator


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The CPU noise generator :meth:`LoadedRun.generate` uses for batch ``batch_index``."""
    return stream_generator(seed, "generation", batch_index)


@dataclass
class LoadedRun:
    method: GANMethod  # networks loaded, eval mode
    G: nn.Module  # EMA G when the run has one, else method's G
    config: RunConfig
    info: DataInfo
    run_dir: Path
    checkpoint_path: Path
    checkpoint_sha256: str  # sha256 of the weights file of G (G_ema.safetensors when EMA)
    step: int
    train_ids: list[str] = field(default_factory=list)
    heldout_ids: list[str] = field(default_factory=list)
    device: torch.device = torch.device("cpu")

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor | list[int],
        masks: torch.Tensor | None = None,
        conditions: torch.Tensor | list[int] | None = None,
        seed: int = 0,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Images (N, C, *spatial) in [-1, 1] on the CPU, generated in batches with a progress bar.

        Batch ``i`` draws its noise from :func:`batch_generator(seed, i) <batch_generator>`, so the
        output is reproducible for the same ``seed`` and ``batch_size``.
        """
        labels = torch.as_tensor(labels, dtype=torch.long)
        n = len(labels)
        if masks is not None and len(masks) != n:
            raise ConfigError(f"{len(masks)} masks for {n} labels")
        if conditions is not None:
            conditions = torch.as_tensor(conditions, dtype=torch.long)
            if len(conditions) != n:
                raise ConfigError(f"{len(conditions)} conditions for {n} labels")
        if "mask" in self.method.needs and masks is None:
            raise ConfigError(f"model {self.method.name!r} needs masks to generate")
        if "condition" in self.method.needs and conditions is None:
            raise ConfigError(f"model {self.method.name!r} needs conditions to generate")
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        out = []
        starts = range(0, n, batch_size)
        with make_progress() as prog:
            task = prog.add_task("generate", total=n)
            for i, s in enumerate(starts):
                e = min(s + batch_size, n)
                imgs = self.method.generate(
                    labels[s:e].to(self.device),
                    masks=None if masks is None else masks[s:e].to(self.device),
                    conditions=None if conditions is None else conditions[s:e].to(self.device),
                    generator=batch_generator(seed, i),
                    G=self.G,
                )
                out.append(imgs.float().cpu())
                prog.advance(task, e - s)
        if not out:
            return torch.zeros((0, self.info.channels, *self.info.spatial_shape))
        return torch.cat(out)


def load_run(run_dir: str | Path, checkpoint: str | Path = "latest", device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run folder's config, data info, split ids and one checkpoint (``latest``, ``best`` or a path)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError("run folder not found", path=run_dir)
    for name in ("config.yaml", "data_info.json", "checkpoints"):
        if not (run_dir / name).exists():
            raise CheckpointError(f"not a medbalance run folder ({name} missing)", path=run_dir)
    device = torch.device(device)
    cfg = read_saved_run_config(run_dir / "config.yaml")
    info_raw = read_json(run_dir / "data_info.json")
    try:
        info = DataInfo.from_dict(info_raw)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"invalid data info ({e})", path=run_dir / "data_info.json") from None
    ids = read_json(run_dir / "train_ids.json") if (run_dir / "train_ids.json").is_file() else {}

    folder = ckpt.resolve_checkpoint(run_dir, checkpoint)
    state = ckpt.read_checkpoint_state(folder, verify=True)  # sha256 of every file against state.json

    from medbalance.models.registry import build_method

    method = build_method(cfg.model.name, cfg.model.preset, dict(cfg.model.params), info)
    nets = method.networks()
    if sorted(nets) != sorted(state.get("networks", [])):
        raise CheckpointError(
            f"checkpoint has networks {state.get('networks')} but model {cfg.model.name!r} builds {sorted(nets)}",
            path=folder,
        )
    for name, net in nets.items():
        ckpt.load_module_(net, folder / f"{name}.safetensors", device="cpu")
    method.to(device).eval()
    G = nets["G"]
    g_file = folder / "G.safetensors"
    if state.get("ema"):
        import copy

        G = copy.deepcopy(nets["G"])
        g_file = folder / "G_ema.safetensors"
        ckpt.load_module_(G, g_file, device="cpu")
        G.to(device)
    G.eval().requires_grad_(False)
    return LoadedRun(
        method=method,
        G=G,
        config=cfg,
        info=info,
        run_dir=run_dir,
        checkpoint_path=folder,
        checkpoint_sha256=str(state["files"].get(g_file.name) or sha256_file(g_file)),  # verified above
        step=int(state["step"]),
        train_ids=list(ids.get("train", [])),
        heldout_ids=list(ids.get("heldout", [])),
        device=device,
    )
