"""Saved run configs that predate a key: read back with the value the key meant when they were written."""

from __future__ import annotations

import pytest
import yaml

from medbalance.errors import ConfigError
from medbalance.training.config import KEYS_ADDED_LATER, RunConfig, fill_keys_added_later, read_saved_run_config
from medbalance.training.engine import _differences


def _saved(tmp_path, name: str, drop: list[str]):
    cfg = RunConfig.from_dict({"out_dir": str(tmp_path / "run"), "data": {"path": "phantom"},
                               "model": {"name": name, "preset": "cpu", "params": {"conditional": True}
                                         if name == "dcgan" else {}}})
    raw = cfg.model_dump(mode="json")
    for key in drop:
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node[p]
        del node[leaf]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return cfg, raw, path


def test_a_dcgan_run_saved_before_mismatch_reads_without_it(tmp_path, monkeypatch):
    from medbalance.models.registry import MODELS, ensure_registered

    ensure_registered()
    spec = MODELS.get("dcgan")
    # a preset that switches mismatch on (as dcgan's cpu preset does): a run saved without the key must not take it
    monkeypatch.setitem(spec.presets, "cpu", {**spec.presets["cpu"], "mismatch": True})
    cfg, raw, path = _saved(tmp_path, "dcgan", ["model.params.mismatch", "train.sampling"])
    assert cfg.model.params["mismatch"] is True  # a new run gets the preset's value
    back = read_saved_run_config(path)
    assert back.model.params["mismatch"] is False and back.train.sampling == "uniform"
    assert "mismatch" not in raw["model"]["params"]  # the raw dict is not changed
    assert RunConfig.from_dict(raw).model.params["mismatch"] is True  # what reading it plainly would have done


def test_keys_of_other_models_are_left_alone(tmp_path):
    _, raw, path = _saved(tmp_path, "acgan", ["train.sampling"])
    filled = fill_keys_added_later(raw)
    assert "mismatch" not in filled["model"]["params"] and filled["train"]["sampling"] == "uniform"
    assert read_saved_run_config(path).train.sampling == "uniform"  # acgan has no mismatch: no unknown-key error
    # a key that is present keeps its value
    raw["train"]["sampling"] = "class_balanced"
    assert fill_keys_added_later(raw)["train"]["sampling"] == "class_balanced"
    assert set(KEYS_ADDED_LATER) >= {"train.sampling", "model.params.mismatch"}


def test_resume_difference_names_the_key():
    diffs = _differences("model", {"name": "dcgan", "params": {"mismatch": False, "z_dim": 64}},
                         {"name": "dcgan", "params": {"mismatch": True, "z_dim": 64}})
    assert diffs == [("model.params.mismatch", False, True)]
    assert _differences("train.seed", 1, 1) == []


def test_a_bad_saved_config_names_its_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "dcgan", "preset": "cpu", "params": {"z_dim": -1}}}))
    with pytest.raises(ConfigError, match="config.yaml"):
        read_saved_run_config(path)


def test_a_removed_key_in_a_saved_run_is_ignored(tmp_path, monkeypatch):
    import medbalance.training.config as C

    _, raw, path = _saved(tmp_path, "acgan", [])
    raw["train"]["prefetch"] = 4  # a key some version wrote and a later one removed
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="prefetch"):  # unknown keys are refused...
        C.read_saved_run_config(path)
    monkeypatch.setattr(C, "KEYS_REMOVED", ("train.prefetch",))
    assert "prefetch" not in C.read_saved_run_config(path).train.model_dump()  # ...unless listed as removed
    assert "prefetch" not in C.drop_removed_keys(raw)["train"] and raw["train"]["prefetch"] == 4  # raw unchanged


def test_num_workers_is_read_from_saved_runs_and_defaults_to_auto(tmp_path):
    _, raw, path = _saved(tmp_path, "acgan", [])
    raw["train"].pop("num_workers", None)
    path.write_text(yaml.safe_dump(raw))
    assert read_saved_run_config(path).train.num_workers is None  # older runs: chosen for the machine
    raw["train"]["num_workers"] = 2
    path.write_text(yaml.safe_dump(raw))
    assert read_saved_run_config(path).train.num_workers == 2
    with pytest.raises(ConfigError, match="num_workers"):
        RunConfig.from_dict({**raw, "train": {**raw["train"], "num_workers": -1}})
