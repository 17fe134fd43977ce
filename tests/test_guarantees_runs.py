"""Guarantees of run folders (docs/guarantees.md): one writer per folder, stale locks taken over, leftovers of a
kill cleaned up, verified checkpoints on every load, OS errors as one line with exit 2 and no partial output."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.errors import CheckpointError, ConfigError
from medbalance.utils.io import LOCK_NAME, acquire_folder_lock, atomic_directory, lock_holder, release_folder_lock

runner = CliRunner()


def _config(tmp_path: Path, steps: int = 4, seed: int = 0, n: int = 48) -> Path:
    p = tmp_path / f"cfg_{steps}_{seed}.yaml"
    p.write_text(yaml.safe_dump({
        "data": {"path": "phantom", "phantom": {"n": n, "size": 32, "seed": 1}},
        "model": {"name": "dcgan", "preset": "cpu"},
        "train": {"steps": steps, "batch_size": 8, "checkpoint_every": 2, "sample_every": 1000, "log_every": 1,
                  "tensorboard": False, "seed": seed, "threads": 1},
    }))
    return p


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MEDBALANCE_QUIET": "1"}


def _error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


# ------------------------------------------------------------------------------------------ one writer per folder
def test_second_writer_refused_with_holder_pid_first_unharmed(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "medbalance.cli.main", "train",
                              "--config", str(_config(tmp_path, 60, 0)), "--out", str(out)],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while not (out / "config.yaml").is_file() and first.poll() is None and time.time() - t0 < 120:
            time.sleep(0.1)
        assert first.poll() is None, first.stdout.read().decode()
        assert lock_holder(out / LOCK_NAME) == first.pid
        r = runner.invoke(app, ["train", "--config", str(_config(tmp_path, 4, 7)), "--out", str(out), "--resume"])
        assert r.exit_code == 2, r.output
        assert f"pid {first.pid}" in r.output and len(_error_lines(r.output)) == 1, r.output
        r = runner.invoke(app, ["train", "--config", str(_config(tmp_path, 4, 7)), "--out", str(out)])
        assert r.exit_code == 2 and f"pid {first.pid}" in r.output, r.output
        log = first.communicate(timeout=300)[0].decode()
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, log
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["seed"] == 0 and cfg["train"]["steps"] == 60  # the first run's config, untouched
    steps = [int(ln.split(",")[0]) for ln in (out / "losses.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 61))  # one row per step, no rows of a second writer
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    code = ("import os, sys; from medbalance.utils.io import acquire_folder_lock; "
            "acquire_folder_lock(sys.argv[1]); os.kill(os.getpid(), 9)")
    p = subprocess.run([sys.executable, "-c", code, str(folder)], env=_env())
    assert p.returncode == -9
    dead = lock_holder(folder / LOCK_NAME)
    assert dead is not None and dead != os.getpid()  # the killed process's pid stays in the file
    acquire_folder_lock(folder)
    try:
        assert lock_holder(folder / LOCK_NAME) == os.getpid()
    finally:
        release_folder_lock(folder)
    # a live holder (another process) is refused, also for an export folder while it is written
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from medbalance.utils.io import "
                               "acquire_folder_lock as a; a(sys.argv[1], sys.argv[2]); print('ok', flush=True); "
                               "time.sleep(60)", str(tmp_path / "export"), str(tmp_path / ".export.lock")],
                              env=_env(), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"ok"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            with atomic_directory(tmp_path / "export"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with atomic_directory(tmp_path / "export") as tmp:  # the holder died: its lock is stale, taken over
        (tmp / "x").write_text("1")
    assert (tmp_path / "export" / "x").is_file()


# ------------------------------------------------------------------------------------------ leftovers, resume
def test_resume_cleans_leftovers_prints_step_and_failed_resume_keeps_config(tmp_path, capsys):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--config", str(_config(tmp_path, 2)), "--out", str(out)])
    assert r.exit_code == 0, r.output
    ck = out / "checkpoints"
    # what kill -9 during a checkpoint save / an atomic write leaves behind
    (ck / ".step_000004.abc123.partial").mkdir()
    (ck / ".step_000004.abc123.partial" / "G.safetensors").write_bytes(b"half")
    (ck / ".latest.k9x.tmp").write_text("step_0000")
    (out / ".losses.csv.q1.tmp").write_text("x")
    r = runner.invoke(app, ["train", "--config", str(_config(tmp_path, 4)), "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert "from step 2" in r.output + capsys.readouterr().out
    assert not list(ck.glob(".*")) and not list(out.glob(".*"))
    # a resume that fails (tampered checkpoint) does not rewrite config.yaml
    before = (out / "config.yaml").read_bytes()
    latest = (ck / "latest").read_text().strip()
    _tamper(ck / latest / "G.safetensors")
    r = runner.invoke(app, ["train", "--config", str(_config(tmp_path, 8)), "--out", str(out), "--resume"])
    assert r.exit_code == 2 and "G.safetensors" in r.output and "checksum mismatch" in r.output, r.output
    assert (out / "config.yaml").read_bytes() == before


def test_resume_refuses_a_different_training_split(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", "--config", str(_config(tmp_path, 2)), "--out", str(out)]).exit_code == 0
    ids_path = out / "train_ids.json"
    ids = json.loads(ids_path.read_text())
    ids["train"] = ids["train"][1:]  # the run started on other images than the data gives now
    ids_path.write_text(json.dumps(ids))
    r = runner.invoke(app, ["train", "--config", str(_config(tmp_path, 4)), "--out", str(out), "--resume"])
    assert r.exit_code == 2 and "training split differs" in r.output, r.output
    assert len(_error_lines(r.output)) == 1


# ------------------------------------------------------------------------------------------ verified checkpoints
def _tamper(path: Path) -> None:
    """Change one byte of the tensor data, keeping the safetensors header intact (the file still parses)."""
    b = bytearray(path.read_bytes())
    header = int.from_bytes(b[:8], "little")
    b[8 + header + 5] ^= 0x55
    path.write_bytes(bytes(b))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # still a valid file
        assert list(f.keys())


def test_tampered_checkpoint_refused_by_every_loader(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    latest = (run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((run / "checkpoints" / latest / "state.json").read_text())
    g = "G_ema.safetensors" if state.get("ema") else "G.safetensors"
    _tamper(run / "checkpoints" / latest / g)
    from medbalance.training.run import load_run

    with pytest.raises(CheckpointError, match=f"{g}: checksum mismatch"):
        load_run(run)
    for args in (["generate", str(run), "--n", "2", "--class", "homogeneous", "--out", str(tmp_path / "g")],
                 ["rebalance", "phantom", str(tmp_path / "r"), "--run", str(run)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert g in r.output and "checksum mismatch" in r.output and len(_error_lines(r.output)) == 1, r.output
    assert not (tmp_path / "g").exists() and not (tmp_path / "r").exists()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["out_dir"] = str(run)
    cfg["train"]["steps"] = int(cfg["train"]["steps"]) + 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "c.yaml"), "--resume"])
    assert r.exit_code == 2 and g in r.output and "checksum mismatch" in r.output, r.output


# ------------------------------------------------------------------------------------------ OS errors
def _enospc(monkeypatch):
    real = os.fsync

    def boom(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    return real


def test_full_disk_is_one_line_exit_2_without_partial_output(tiny_run, tmp_path, monkeypatch):
    _enospc(monkeypatch)
    parent = tmp_path / "outs"
    parent.mkdir()
    for args, target in (
        (["generate", str(tiny_run), "--n", "2", "--class", "homogeneous", "--out", str(parent / "g")], parent / "g"),
        (["rebalance", "phantom", str(parent / "r"), "--run", str(tiny_run)], parent / "r"),
        (["train", "--config", str(_config(tmp_path, 2)), "--out", str(parent / "t")], parent / "t"),
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args[0], r.output)
        lines = [ln for ln in _error_lines(r.output) if ln.startswith("error:")]
        assert len(lines) == 1 and "No space left on device" in lines[0] and str(parent) in lines[0], r.output
        assert "Traceback" not in r.output
        assert not target.exists(), (args[0], list(parent.iterdir()))
    assert list(parent.iterdir()) == []  # no hidden .partial / .tmp / .lock left either


def test_read_only_output_is_one_line_exit_2(tiny_run, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permissions and tests cannot mount: inject the error a read-only fs gives
        import tempfile

        def erofs(*a, dir=None, **k):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))

        monkeypatch.setattr(tempfile, "mkdtemp", erofs)
        monkeypatch.setattr(tempfile, "mkstemp", erofs)
        real_mkdir = Path.mkdir

        def mkdir(self, *a, **k):
            if str(self).startswith(str(ro)):
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real_mkdir(self, *a, **k)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        ro.chmod(0o555)
    try:
        for args in (["generate", str(tiny_run), "--n", "2", "--class", "homogeneous", "--out", str(ro / "g")],
                     ["train", "--config", str(_config(tmp_path, 2)), "--out", str(ro / "t")]):
            r = runner.invoke(app, args)
            assert r.exit_code == 2, (args[0], r.output)
            lines = [ln for ln in _error_lines(r.output) if ln.startswith("error:")]
            assert len(lines) == 1 and str(ro) in lines[0] and "Traceback" not in r.output, r.output
            assert ("Read-only file system" in lines[0]) or ("Permission denied" in lines[0]), r.output
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
