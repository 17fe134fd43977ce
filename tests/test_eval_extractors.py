"""Feature extractors, feature cache and nearest-neighbour search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medbalance.errors import CheckpointError
from medbalance.evaluation.extractors import (
    EXTRACTORS,
    ExtractorUnavailable,
    FIDInceptionV3,
    get_extractor,
    load_inception_state,
    register_extractor,
)
from medbalance.evaluation.features import FeatureCache, cached_features
from medbalance.utils.neighbors import knn

# Keys and shapes of the standard FID weights file (pt_inception-2015-12-05-6726825d.pth)
KNOWN = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def inception_sd():
    torch.manual_seed(0)
    m = FIDInceptionV3()
    sd = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    # random running stats so that a load is visible
    for k in sd:
        if k.endswith("running_mean"):
            sd[k] = torch.randn_like(sd[k]) * 0.1
    return sd


def test_inception_architecture_matches_fid_weights(inception_sd):
    for k, shape in KNOWN.items():
        assert tuple(inception_sd[k].shape) == shape, k
    assert not any(k.startswith("AuxLogits") for k in inception_sd)
    # torchvision's inception_v3 without aux logits has 23,834,568 params for 1000 classes; +8*2049 for 1008
    with torch.device("meta"):
        m = FIDInceptionV3()
    assert sum(p.numel() for p in m.parameters()) == 23_834_568 + 8 * 2049


def test_inception_loads_standard_state_dict_and_refuses_wrong(tmp_path, inception_sd, monkeypatch):
    p = tmp_path / "pt_inception.pth"
    torch.save(inception_sd, p)
    ext = get_extractor("inception-v3", weights=str(p))
    got = ext.model.state_dict()
    for k in ("Mixed_7c.branch_pool.conv.weight", "Conv2d_1a_3x3.bn.running_mean"):
        assert torch.equal(got[k], inception_sd[k])
    x = torch.rand(1, 1, 40, 40) * 2 - 1
    f = ext(x)
    assert f.shape == (1, 2048)
    with torch.no_grad():
        ref = ext.model(F.interpolate(x.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear", align_corners=False))
    np.testing.assert_allclose(f, ref.numpy(), rtol=1e-5, atol=1e-6)
    # env var route and a safetensors conversion
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in inception_sd.items()}, str(st))
    monkeypatch.setenv("MEDBALANCE_INCEPTION_WEIGHTS", str(st))
    assert torch.equal(get_extractor("inception-v3").model.state_dict()["fc.weight"], inception_sd["fc.weight"])
    # wrong files are refused with a clear error
    bad = dict(inception_sd)
    del bad["Mixed_7c.branch_pool.conv.weight"]
    torch.save(bad, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing keys.*Mixed_7c.branch_pool.conv.weight"):
        get_extractor("inception-v3", weights=str(tmp_path / "missing.pth"))
    bad = dict(inception_sd)
    bad["fc.weight"] = torch.zeros(1000, 2048)
    with torch.device("meta"):
        m = FIDInceptionV3()
    with pytest.raises(CheckpointError, match=r"fc.weight has shape \(1000, 2048\), expected \(1008, 2048\)"):
        load_inception_state(m, bad, path="x.pth")
    bad = dict(inception_sd)
    bad["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    with pytest.raises(CheckpointError, match="unexpected keys.*AuxLogits"):
        load_inception_state(m, bad)
    torch.save({"a": {"nested": 1}}, tmp_path / "notsd.pth")
    with pytest.raises(CheckpointError):
        get_extractor("inception-v3", weights=str(tmp_path / "notsd.pth"))


def test_inception_unavailable_without_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDBALANCE_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ExtractorUnavailable, match="MEDBALANCE_INCEPTION_WEIGHTS"):
        get_extractor("inception-v3")
    with pytest.raises(ExtractorUnavailable, match="not found"):
        get_extractor("inception-v3", weights=str(tmp_path / "nope.pth"))


def test_pixels_torchscript_and_callable(tmp_path):
    x = torch.rand(5, 1, 64, 64) * 2 - 1
    f = get_extractor("pixels")(x)
    assert f.shape == (5, 1024)
    np.testing.assert_allclose(f[0].reshape(32, 32), x[0, 0].reshape(32, 2, 32, 2).mean((1, 3)).numpy(), atol=1e-6)

    class M(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    p = tmp_path / "m.pt"
    torch.jit.script(M()).save(str(p))
    np.testing.assert_allclose(get_extractor(f"torchscript:{p}")(x), x.mean(dim=(2, 3)).numpy(), atol=1e-6)
    register_extractor("test-maxpix", lambda im: im.amax(dim=(1, 2, 3), keepdim=False)[:, None])
    assert "test-maxpix" in EXTRACTORS
    np.testing.assert_allclose(get_extractor("test-maxpix")(x)[:, 0], x.amax(dim=(1, 2, 3)).numpy())


def test_domain_extractor_uses_classifier_features(tmp_path):
    tasknets = pytest.importorskip("medbalance.models.tasknets")
    torch.manual_seed(0)
    clf = tasknets.Classifier(in_channels=1, num_classes=3, channels=(4, 8))
    tasknets.save_task_model(tmp_path / "enc", clf, {"spatial_shape": [16, 16], "in_channels": 1})
    ext = get_extractor("domain", weights=str(tmp_path / "enc"))
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    clf.eval()
    with torch.no_grad():
        ref = clf.features(x).numpy()
    np.testing.assert_allclose(ext(x), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ExtractorUnavailable):
        get_extractor("domain")


def test_feature_cache(tmp_path):
    calls = []

    def enc(x):
        calls.append(1)
        return x.flatten(1).numpy() * 2

    cache = FeatureCache(tmp_path)
    x = torch.rand(3, 1, 4, 4)
    a, hit1 = cached_features(x, enc, "k", "p", cache)
    b, hit2 = cached_features(x.clone(), enc, "k", "p", cache)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(a, b)
    _, hit3 = cached_features(x, enc, "k", "other-preprocessing", cache)
    _, hit4 = cached_features(x + 1e-3, enc, "k", "p", cache)
    assert not hit3 and not hit4 and len(list(tmp_path.glob("*.npy"))) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_knn_matches_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 40)).astype(np.float32) + 50.0  # large offset: float32 cancellation
    q = np.concatenate([rng.normal(size=(97, 40)).astype(np.float32) + 50.0, ref[:5]])
    d, i = knn(q, ref, k=3, block=32)
    bd = np.sqrt(((q[:, None, :].astype(np.float64) - ref[None].astype(np.float64)) ** 2).sum(-1))
    order = np.argsort(bd, 1, kind="stable")[:, :3]
    np.testing.assert_array_equal(i, order)
    np.testing.assert_allclose(d, np.take_along_axis(bd, order, 1), rtol=1e-12)
    assert np.all(d[-5:, 0] == 0.0)  # exact duplicates have distance exactly 0
    ds, is_ = knn(ref, ref, k=1, exclude_self=True)
    bd2 = np.sqrt(((ref[:, None].astype(np.float64) - ref[None].astype(np.float64)) ** 2).sum(-1))
    np.fill_diagonal(bd2, np.inf)
    np.testing.assert_array_equal(is_[:, 0], bd2.argmin(1))
