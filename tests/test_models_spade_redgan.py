"""SPADE and Red-GAN: shapes, conditioning, losses going down, the frozen segmentor, TTUR, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError
from medbalance.models.redgan import FrozenSegmentor, RedGAN
from medbalance.models.registry import build_method, resolve_params
from medbalance.models.spade import SPADE, SPADEGenerator, SPADEResBlock, one_hot_mask

TINY = {"ngf": 4, "num_up": 3, "spade_hidden": 8, "ndf": 8, "embed_dim": 8, "class_map_channels": 8}
SPADE_TINY = {k: v for k, v in TINY.items() if k not in ("embed_dim", "class_map_channels")}


def make_info(c=1, size=32, label_nc=2, n_classes=3, n_cond=0):
    return DataInfo(
        channels=c,
        spatial_shape=(size, size),
        class_names=[f"c{i}" for i in range(n_classes)],
        mask_values=list(range(label_nc)),
        condition_names=[f"site{i}" for i in range(n_cond)] if n_cond else None,
    )


def make_batch(info, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = info.spatial_shape
    batch = {
        "image": torch.rand(b, info.channels, h, w, generator=g) * 2 - 1,
        "label": torch.randint(0, info.num_classes, (b,), generator=g),
        "mask": torch.randint(0, info.num_mask_labels, (b, h, w), generator=g),
    }
    if info.num_conditions:
        batch["condition"] = torch.randint(0, info.num_conditions, (b,), generator=g)
    return batch


class TinySeg(nn.Module):
    """Stand-in for a pretrained segmentor: has BatchNorm with non-trivial running statistics."""

    def __init__(self, c, k):
        super().__init__()
        self.c1 = nn.Conv2d(c, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, k, 1)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.num_batches_tracked.fill_(7)

    def forward(self, x):
        return self.c2(F.relu(self.bn(self.c1(x))))


def _conv_out(s, stride):  # k=4, p=2
    return (s + 4 - 4) // stride + 1



@pytest.mark.parametrize("c,size,label_nc", [(1, 32, 2), (3, 64, 5), (4, 32, 5), (4, 64, 2), (3, 32, 2)])
def test_generator_and_discriminator_shapes(c, size, label_nc):
    info = make_info(c, size, label_nc)
    m = build_method("spade", "cpu", dict(SPADE_TINY), info)
    batch = make_batch(info, b=2)
    out = m.generate(None, batch["mask"])
    assert out.shape == (2, c, size, size) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    # D input = one-hot mask + image; per scale n_layers_d + 1 outputs, last = patch logits
    assert m.D.nets[0].layers[0][0].in_channels == label_nc + c
    seg = one_hot_mask(batch["mask"], label_nc)
    feats = m.D(torch.cat([seg, batch["image"]], 1))
    assert len(feats) == 2 and all(len(f) == 4 for f in feats)
    s = size
    for scale in range(2):
        if scale:
            s = (s - 1) // 2 + 1  # avg_pool2d k3 s2 p1
        t = s
        for j, stride in enumerate([2, 2, 2, 1]):
            t = _conv_out(t, stride)
            assert feats[scale][j].shape[-2:] == (t, t)
        assert feats[scale][-1].shape == (2, 1, t, t)
    finals = m.discriminate(batch["image"], batch["mask"])
    assert [f.shape for f in finals] == [f[-1].shape for f in feats]


def test_channel_schedule_matches_reference():
    # spec 1.4 with ngf=4 instead of 64: fc -> 16ngf @ size/32, head 16ngf, middles 16ngf, ups 8,4,2,1 ngf
    g = SPADEGenerator(4, 5, (64, 64), ngf=4, num_up=5, spade_hidden=8, num_classes=10, embed_dim=16, class_map_channels=64)
    assert (g.sh, g.sw) == (2, 2) and g.fc.out_channels == 64
    assert g.head_0.conv_0.in_channels == 128  # Red-GAN: 16ngf + class map (2048 in the paper)
    assert [b.conv_1.out_channels for b in g.ups] == [32, 16, 8, 4]
    assert g.class_fc.out_features == 64 * 2 * 2 and g.embed.num_embeddings == 10
    assert parametrize.is_parametrized(g.head_0.conv_0) and parametrize.is_parametrized(g.ups[0].conv_s)
    assert not g.head_0.norm_0.norm.affine  # param-free BN
    out = g(one_hot_mask(torch.randint(0, 5, (2, 64, 64)), 5), torch.tensor([0, 9]))
    assert out.shape == (2, 4, 64, 64)


def test_spade_block_uses_mask():
    torch.manual_seed(0)
    blk = SPADEResBlock(8, 4, label_nc=3, hidden=8).eval()
    x = torch.randn(2, 8, 32, 32)
    m1 = torch.zeros(2, 64, 64, dtype=torch.long)  # resized (nearest) to x's 32x32 inside SPADE
    m2 = m1.clone()
    m2[:, 24:40, 24:40] = 2
    y1, y2 = blk(x, one_hot_mask(m1, 3)), blk(x, one_hot_mask(m2, 3))
    diff = (y1 - y2).abs().sum(1)[0]
    assert diff[12:20, 12:20].min() > 0  # changed where the mask changed...
    # ...and nowhere beyond the block's receptive field (mask MLP 2 convs + main conv, twice: radius 6)
    assert diff[:6].abs().max() == 0 and diff[26:].abs().max() == 0

    info = make_info(1, 32, 3)
    m = build_method("spade", "cpu", dict(SPADE_TINY), info)
    m1, m2 = m1[:, ::2, ::2], m2[:, ::2, ::2]
    assert not torch.allclose(m.generate(None, m1), m.generate(None, m2))
    torch.testing.assert_close(m.generate(None, m1), m.generate(None, m1))  # deterministic without z


def test_noise_option_is_reproducible():
    info = make_info(1, 32, 2)
    m = build_method("spade", "cpu", {**SPADE_TINY, "z_dim": 8}, info)
    mask = make_batch(info)["mask"]
    a = m.generate(None, mask, generator=torch.Generator().manual_seed(1))
    b = m.generate(None, mask, generator=torch.Generator().manual_seed(1))
    c = m.generate(None, mask, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_redgan_output_changes_with_global_class():
    info = make_info(3, 32, 2, n_classes=3)
    m = RedGAN(resolve_params("redgan", "cpu", dict(TINY)), info, segmentor=TinySeg(3, 2))
    mask = make_batch(info)["mask"][:1].repeat(3, 1, 1)
    out = m.generate(torch.tensor([0, 1, 2]), mask)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    with pytest.raises(ConfigError, match="labels are required"):
        m.generate(None, mask)

    # global class from the condition column (acquisition site)
    info = make_info(1, 32, 2, n_classes=2, n_cond=4)
    m = RedGAN(resolve_params("redgan", "cpu", {**TINY, "global_condition": "condition"}), info, TinySeg(1, 1))
    assert m.G.embed.num_embeddings == 4 and "condition" in m.needs
    mask = make_batch(info)["mask"][:1].repeat(2, 1, 1)
    same_label = torch.tensor([0, 0])
    out = m.generate(same_label, mask, conditions=torch.tensor([0, 3]))
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ConfigError, match="no condition column"):
        build_method("redgan", "cpu", {**TINY, "global_condition": "condition"}, make_info())


def test_d_hinge_loss_decreases_with_g_frozen():
    torch.manual_seed(0)
    info = make_info(1, 32, 2)
    m = build_method("spade", "cpu", {**SPADE_TINY, "lr_g": 0.0, "lr_d": 1e-3}, info)
    m.setup_optimizers()
    g_before = copy.deepcopy(m.G.state_dict())
    batch = make_batch(info, b=4)
    d = torch.stack([m.training_step(batch, i)["D"] for i in range(12)])
    assert d[-3:].mean() < d[:3].mean() - 0.3, d
    for k, v in m.G.state_dict().items():
        if "running" not in k and "num_batches" not in k and not k.endswith(("_u", "_v")):
            torch.testing.assert_close(v, g_before[k])


def test_g_loss_decreases_with_d_frozen():
    torch.manual_seed(0)
    info = make_info(1, 32, 2)
    m = build_method("spade", "cpu", {**SPADE_TINY, "lr_d": 0.0, "lr_g": 1e-3}, info)
    m.setup_optimizers()
    d_before = copy.deepcopy(m.D.state_dict())
    batch = make_batch(info, b=4)
    batch["mask"].zero_()
    batch["mask"][:, 8:24, 8:24] = 1
    batch["image"] = batch["mask"][:, None].float() * 1.6 - 0.8  # a learnable mask -> image mapping
    g = torch.stack([m.training_step(batch, i)["G"] for i in range(16)])  # hinge_G + 10 * FM
    assert g[-3:].mean() < g[:3].mean() * 0.75, g
    for k, v in m.D.state_dict().items():
        if not k.endswith(("_u", "_v")):  # spectral-norm power-iteration vectors do move
            torch.testing.assert_close(v, d_before[k])


def test_ttur_optimizers():
    p = resolve_params("spade", "paper", {})
    assert (p.ngf, p.num_up, p.spade_hidden, p.ndf, p.num_d, p.n_layers_d, p.lambda_fm) == (64, 5, 128, 64, 2, 3, 10.0)
    info = make_info(1, 32, 2)
    m = build_method("spade", "cpu", dict(SPADE_TINY), info)
    m.setup_optimizers()
    og, od = m.optimizers["G"], m.optimizers["D"]
    assert isinstance(og, torch.optim.Adam) and isinstance(od, torch.optim.Adam)
    assert og.param_groups[0]["lr"] == 1e-4 and od.param_groups[0]["lr"] == 4e-4
    assert og.param_groups[0]["betas"] == (0.0, 0.9) == od.param_groups[0]["betas"]
    assert {id(q) for q in og.param_groups[0]["params"]} == {id(q) for q in m.G.parameters()}
    assert {id(q) for q in od.param_groups[0]["params"]} == {id(q) for q in m.D.parameters()}
    rp = resolve_params("redgan", "paper", {})
    assert (rp.embed_dim, rp.class_map_channels, rp.seg_loss_weight, rp.lr_g, rp.lr_d) == (1024, 1024, 0.0, 1e-4, 4e-4)


def test_redgan_segmentor_frozen_but_passes_gradients(monkeypatch):
    torch.manual_seed(0)
    info = make_info(1, 32, 3)
    seg = TinySeg(1, 3)
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    m = RedGAN(resolve_params("redgan", "cpu", dict(TINY)), info, segmentor=seg)
    assert m.D.nets[0].layers[0][0].in_channels == 3 + 1 + 3  # mask one-hot + image + S(image)
    m.setup_optimizers()
    m.train()  # what the engine does; must not flip S to training mode
    assert not seg.training and not m.S.training
    s_ids = {id(p) for p in seg.parameters()}
    assert all(id(p) not in s_ids for o in m.optimizers.values() for g in o.param_groups for p in g["params"])
    assert not any(p.requires_grad for p in seg.parameters())
    batch = make_batch(info, b=4)
    for i in range(3):
        m.training_step(batch, i)
    after = seg.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)

    # gradients reach G through S: G's grads differ when S's output is cut from the graph
    params = [p for p in m.G.parameters()]

    def g_grads():
        loss, _, _ = m.generator_loss(batch)
        return torch.autograd.grad(loss, params, allow_unused=True)

    with_s = g_grads()
    orig_forward = FrozenSegmentor.forward
    monkeypatch.setattr(FrozenSegmentor, "forward", lambda self, x: orig_forward(self, x).detach())
    without_s = g_grads()
    diff = sum((a - b).abs().sum() for a, b in zip(with_s, without_s) if a is not None)
    total = sum(a.abs().sum() for a in with_s if a is not None)
    assert diff > 1e-4 * total


def test_seg_loss_option():
    info = make_info(1, 32, 3)
    batch = make_batch(info)
    m = RedGAN(resolve_params("redgan", "cpu", {**TINY, "seg_loss_weight": 2.0}), info, segmentor=TinySeg(1, 3))
    total, parts, _ = m.generator_loss(batch)
    assert "G_seg" in parts and parts["G_seg"] > 0
    torch.testing.assert_close(total.detach(), parts["G_gan"] + 10 * parts["G_fm"] + 2.0 * parts["G_seg"])
    with pytest.raises(ConfigError, match="output channels"):
        RedGAN(resolve_params("redgan", "cpu", {**TINY, "seg_loss_weight": 1.0}), info, segmentor=TinySeg(1, 7))


def test_no_segmentor_error_and_bad_segmentor():
    info = make_info(1, 32, 2)
    m = build_method("redgan", "cpu", dict(TINY), info)  # G alone can be built (e.g. to load weights for sampling)
    for call in (m.setup_optimizers, lambda: m.training_step(make_batch(info), 0), lambda: m.discriminate(
        make_batch(info)["image"], make_batch(info)["mask"])):
        with pytest.raises(ConfigError) as e:
            call()
        msg = str(e.value)
        assert "needs a pretrained segmentor" in msg and "medbalance train-task segmentation" in msg and "'spade'" in msg
    with pytest.raises(ConfigError, match=r"shape \(B, K, 32, 32\)"):
        m.attach_segmentor(nn.Conv2d(1, 2, 3, stride=2))
    with pytest.raises(ConfigError, match="cannot process"):
        m.attach_segmentor(nn.Conv2d(3, 2, 3))


def test_config_errors():
    with pytest.raises(ConfigError, match="divisible by 32"):
        build_method("spade", "paper", {}, make_info(1, 240, 2))
    no_mask = DataInfo(channels=1, spatial_shape=(32, 32), class_names=["a", "b"])
    with pytest.raises(ConfigError, match="needs masks"):
        build_method("spade", "cpu", dict(SPADE_TINY), no_mask)
    m = build_method("spade", "cpu", dict(SPADE_TINY), make_info(1, 32, 2))
    with pytest.raises(ConfigError, match="out of range"):
        m.generate(None, torch.full((1, 32, 32), 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="masks are required"):
        m.generate(None, None)


def test_ema_copy_and_safetensors_roundtrip(tmp_path):
    from medbalance.utils.io import load_safetensors, save_safetensors

    info = make_info(1, 32, 2)
    m = build_method("spade", "cpu", dict(SPADE_TINY), info)
    m.setup_optimizers()
    batch = make_batch(info)
    m.training_step(batch, 0)
    ema = copy.deepcopy(m.G)
    torch.testing.assert_close(m.generate(None, batch["mask"], G=ema), m.generate(None, batch["mask"]))
    save_safetensors(tmp_path / "g.safetensors", m.G.state_dict())
    m2 = build_method("spade", "cpu", dict(SPADE_TINY), info)
    tensors, _ = load_safetensors(tmp_path / "g.safetensors")
    m2.G.load_state_dict(tensors)
    torch.testing.assert_close(m2.generate(None, batch["mask"]), m.generate(None, batch["mask"]))
    assert isinstance(m, SPADE)


def test_segmentor_from_train_task_folder(tmp_path):
    from medbalance.errors import CheckpointError
    from medbalance.models.tasknets import Classifier, SegmentationUNet, save_task_model

    info = make_info(1, 32, 3)
    unet = SegmentationUNet(1, 3, mode="softmax", channels=(4, 8), num_res_units=0)
    save_task_model(tmp_path / "seg", unet, {"task": "segmentation", "mask_values": [0, 1, 2]})
    m = build_method("redgan", "cpu", {**TINY, "segmentor": str(tmp_path / "seg"), "segmentor_blur": False}, info)
    assert m.seg_channels == 3 and m.D.nets[0].layers[0][0].in_channels == 3 + 1 + 3
    x = make_batch(info)["image"]
    torch.testing.assert_close(m.S(x), unet.eval()(x))  # same weights, identity input map for [-1, 1]

    with pytest.raises(ConfigError, match="label values"):
        build_method("redgan", "cpu", {**TINY, "segmentor": str(tmp_path / "seg")}, make_info(1, 32, 2))
    save_task_model(tmp_path / "cls", Classifier(1, 3), {"task": "classification"})
    with pytest.raises(ConfigError, match="must be a segmentation model"):
        build_method("redgan", "cpu", {**TINY, "segmentor": str(tmp_path / "cls")}, info)
    with pytest.raises(CheckpointError):
        build_method("redgan", "cpu", {**TINY, "segmentor": str(tmp_path / "missing")}, info)


class _Probe(nn.Module):
    """A stand-in segmentor that records the tensor it is given (``self.seen``) and returns 2 logit channels."""

    def __init__(self):
        super().__init__()
        self.seen: torch.Tensor | None = None

    def forward(self, x):
        self.seen = x
        return x.repeat(1, 2, 1, 1)


def test_segmentor_input_range_adapter():
    info = make_info(1, 32, 2)
    probe = _Probe()
    params = {**TINY, "segmentor_input_range": (0.0, 255.0), "segmentor_blur": False}
    m = RedGAN(resolve_params("redgan", "cpu", params), info, probe)
    img = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(1, 1, 32, 3).repeat(1, 1, 1, 11)[..., :32]
    m.S(img)
    torch.testing.assert_close(probe.seen[0, 0, 0, :3], torch.tensor([0.0, 127.5, 255.0]))


def test_segmentor_blur_hides_period_two_patterns():
    """``segmentor_blur``: S sees the image through a 3x3 binomial blur, which removes a period-2 stripe pattern
    and keeps a constant image; without the option S sees the image unchanged."""
    info = make_info(1, 32, 2)
    stripes = (torch.arange(32) % 2).float().view(1, 1, 1, 32).expand(2, 1, 32, 32) * 0.4 + 0.1  # 0.1, 0.5, ...
    for blur in (False, True):
        probe = _Probe()
        m = RedGAN(resolve_params("redgan", "cpu", {**TINY, "segmentor_blur": blur}), info, probe)
        m.S(stripes)
        if blur:
            torch.testing.assert_close(probe.seen[..., 1:-1], torch.full_like(probe.seen[..., 1:-1], 0.3))
            const = torch.full((1, 1, 32, 32), -0.25)
            m.S(const)
            torch.testing.assert_close(probe.seen, const)
        else:
            torch.testing.assert_close(probe.seen, stripes)
    assert resolve_params("redgan", "cpu", {}).segmentor_blur and not resolve_params("redgan", "paper", {}).segmentor_blur
