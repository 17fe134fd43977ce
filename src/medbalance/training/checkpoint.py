"""Checkpoints: safetensors weights + JSON, written atomically, never pickled.

Layout of one checkpoint folder ``<run>/checkpoints/step_000500/``::

    <net>.safetensors          one per network in method.networks() (G, D, ...)
    G_ema.safetensors          EMA copy of G (when train.ema_decay is set)
    optimizers.safetensors     every tensor of every optimizer's state_dict, flattened
    rng.safetensors            torch CPU RNG state per rank (uint8), CUDA RNG states
    state.json                 step, data position, config, optimizer structure/param_groups,
                               grad-scaler state, numpy/python RNG states, tracked metric,
                               and the sha256 of every file above

The folder is built under a hidden temporary name and renamed when complete
(:func:`medbalance.utils.io.atomic_directory`), so an interrupted save never leaves a partial
``step_*`` folder. ``checkpoints/latest`` and ``checkpoints/best`` are text files holding a
folder name.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medbalance.errors import CheckpointError
from medbalance.utils.io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
    read_json,
    save_safetensors,
    sha256_file,
)

FORMAT_VERSION = 1
STEP_RE = re.compile(r"^step_(\d{6,})$")


def step_dirname(step: int) -> str:
    return f"step_{step:06d}"


# --------------------------------------------------------------------------- JSON-safe structures
def _to_json(o: Any) -> Any:
    """Encode tuples distinctly so they round-trip (optimizer betas are tuples)."""
    if isinstance(o, tuple):
        return {"__tuple__": [_to_json(x) for x in o]}
    if isinstance(o, list):
        return [_to_json(x) for x in o]
    if isinstance(o, dict):
        return {str(k): _to_json(v) for k, v in o.items()}
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
        return {"__float__": repr(o)}
    return o


def _from_json(o: Any) -> Any:
    if isinstance(o, dict):
        if set(o) == {"__tuple__"}:
            return tuple(_from_json(x) for x in o["__tuple__"])
        if set(o) == {"__float__"}:
            return float(o["__float__"])
        return {k: _from_json(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_from_json(x) for x in o]
    return o


# --------------------------------------------------------------------------- optimizers
def flatten_optimizer(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and a JSON structure."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                key = f"{name}/state/{pid}/{k}"
                tensors[key] = v.detach().cpu().clone()
                entry[k] = {"__tensor__": key}
            else:
                entry[k] = _to_json(v)
        state_json[str(pid)] = entry
    return tensors, {"state": state_json, "param_groups": _to_json(sd["param_groups"])}


def unflatten_optimizer(structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in structure["state"].items():
        st: dict[str, Any] = {}
        for k, v in entry.items():
            if isinstance(v, dict) and set(v) == {"__tensor__"}:
                if v["__tensor__"] not in tensors:
                    raise CheckpointError(f"optimizer tensor {v['__tensor__']!r} missing")
                st[k] = tensors[v["__tensor__"]]
            else:
                st[k] = _from_json(v)
        state[int(pid)] = st
    return {"state": state, "param_groups": _from_json(structure["param_groups"])}


# --------------------------------------------------------------------------- RNG
def python_numpy_rng_state() -> dict[str, Any]:
    py = random.getstate()
    npst = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], np.asarray(npst[1]).tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
    }


def set_python_numpy_rng_state(d: dict[str, Any]) -> None:
    py = d["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = d["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


# --------------------------------------------------------------------------- state dicts
def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors sharing storage (tied weights, views)
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_module_(module: nn.Module, path: Path, device: torch.device | str = "cpu") -> None:
    """Load a safetensors file into ``module`` strictly; mismatches raise :class:`CheckpointError`."""
    tensors, _ = load_safetensors(path, device=device)
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        raise CheckpointError(
            "weights do not match the network built from the run config (" + "; ".join(parts) + ")", path=path
        )
    for k, v in own.items():
        if tuple(v.shape) != tuple(tensors[k].shape):
            raise CheckpointError(
                f"weights do not match the network built from the run config: {k} has shape "
                f"{tuple(tensors[k].shape)} in the file, {tuple(v.shape)} in the network",
                path=path,
            )
    module.load_state_dict(tensors, strict=True)


# --------------------------------------------------------------------------- save
def save_checkpoint(
    ckpt_root: Path,
    step: int,
    networks: dict[str, nn.Module],
    ema_G: nn.Module | None,
    optimizers: dict[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler | None,
    torch_rng_states: list[torch.Tensor],
    cuda_rng_states: list[torch.Tensor] | None,
    extra: dict[str, Any],
) -> Path:
    """Write ``ckpt_root/step_XXXXXX`` atomically and update ``latest``. Returns the folder."""
    final = ckpt_root / step_dirname(step)
    files: dict[str, str] = {}
    with atomic_directory(final, overwrite=True) as tmp:
        for name, net in networks.items():
            p = save_safetensors(tmp / f"{name}.safetensors", module_tensors(net), {"network": name, "step": step})
            files[p.name] = sha256_file(p)
        if ema_G is not None:
            p = save_safetensors(tmp / "G_ema.safetensors", module_tensors(ema_G), {"network": "G_ema", "step": step})
            files[p.name] = sha256_file(p)
        opt_tensors: dict[str, torch.Tensor] = {}
        opt_struct: dict[str, Any] = {}
        for name, opt in optimizers.items():
            t, s = flatten_optimizer(name, opt)
            opt_tensors.update(t)
            opt_struct[name] = s
        p = save_safetensors(tmp / "optimizers.safetensors", opt_tensors, {"step": step})
        files[p.name] = sha256_file(p)
        rng: dict[str, torch.Tensor] = {f"torch_cpu/rank{r}": s for r, s in enumerate(torch_rng_states)}
        for i, s in enumerate(cuda_rng_states or []):
            rng[f"cuda/{i}"] = s
        p = save_safetensors(tmp / "rng.safetensors", rng, {"step": step})
        files[p.name] = sha256_file(p)
        state = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "networks": sorted(networks),
            "ema": ema_G is not None,
            "optimizers": opt_struct,
            "scaler": None if scaler is None else _to_json(scaler.state_dict()),
            "rng": python_numpy_rng_state(),
            "files": files,
            **_to_json(extra),
        }
        atomic_write_json(tmp / "state.json", state)
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    return final


def prune_checkpoints(ckpt_root: Path, keep_last: int) -> list[Path]:
    """Delete step folders except the last ``keep_last`` and the one ``best`` points to."""
    steps = list_checkpoints(ckpt_root)
    keep = set(p.name for p in steps[-keep_last:])
    best = read_pointer(ckpt_root, "best")
    if best is not None:
        keep.add(best)
    removed = []
    for p in steps:
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    out = [p for p in ckpt_root.iterdir() if p.is_dir() and STEP_RE.match(p.name)]
    return sorted(out, key=lambda p: int(STEP_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def read_pointer(ckpt_root: Path, name: str) -> str | None:
    p = ckpt_root / name
    if not p.is_file():
        return None
    text = p.read_text().strip()
    return text or None


# --------------------------------------------------------------------------- load
def resolve_checkpoint(run_dir: Path, checkpoint: str | Path = "latest") -> Path:
    """``latest`` / ``best`` / a folder name inside checkpoints/ / a path -> the checkpoint folder."""
    ckpt_root = run_dir / "checkpoints"
    if str(checkpoint) in ("latest", "best"):
        name = read_pointer(ckpt_root, str(checkpoint))
        if name is None:
            raise CheckpointError(f"no '{checkpoint}' checkpoint (pointer file missing)", path=ckpt_root / str(checkpoint))
        folder = ckpt_root / name
    else:
        folder = Path(checkpoint)
        if not folder.is_absolute() and not folder.exists():
            folder = ckpt_root / str(checkpoint)
    if not folder.is_dir():
        raise CheckpointError("checkpoint folder not found", path=folder)
    return folder


def read_checkpoint_state(folder: Path, verify: bool = True) -> dict[str, Any]:
    """Read ``state.json`` and check every listed file exists and (``verify``, the default on every load:
    ``load_run`` -> generate / rebalance / downstream, and ``--resume``) has the sha256 recorded at save time.

    A tampered or bit-rotted file -> :class:`CheckpointError` naming it. Cost: one read of each file (sha256
    runs at about 1-2 GB/s, so milliseconds for checkpoints of a few MB; see docs/guarantees.md)."""
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise CheckpointError("incomplete checkpoint: state.json missing", path=folder)
    state = read_json(state_path)
    if not isinstance(state, dict) or "step" not in state or "files" not in state:
        raise CheckpointError("incomplete checkpoint: state.json lacks step/files", path=state_path)
    for fname, sha in state["files"].items():
        f = folder / fname
        if not f.is_file():
            raise CheckpointError(f"incomplete checkpoint: {fname} missing", path=folder)
        if verify and sha256_file(f) != sha:
            raise CheckpointError(
                "checksum mismatch: the file differs from the sha256 recorded in state.json (changed or corrupt); "
                "refusing to load it", path=f)
    return _from_json(state)


def load_optimizers_(folder: Path, state: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Restore optimizer states (``load_state_dict`` moves them to the parameters' device)."""
    tensors, _ = load_safetensors(folder / "optimizers.safetensors", device="cpu")
    saved = state["optimizers"]
    if set(saved) != set(optimizers):
        raise CheckpointError(
            f"optimizers in checkpoint {sorted(saved)} differ from the method's {sorted(optimizers)}",
            path=folder / "state.json",
        )
    for name, opt in optimizers.items():
        sd = unflatten_optimizer(saved[name], tensors)
        try:
            opt.load_state_dict(sd)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer {name!r} state does not match: {e}", path=folder) from None


def load_rng_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_safetensors(folder / "rng.safetensors", device="cpu")
    return tensors
