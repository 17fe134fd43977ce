"""The built-in procedural dataset: brain-MRI-like axial slices with lesions of several classes.

Nothing is downloaded; everything is deterministic given :class:`PhantomConfig.seed`.
Each slice is a T1-post-contrast-like axial section: scalp (fat, bright), skull (dark cortical
bone with brighter diploe), sulcal CSF, a folded grey-matter ribbon, white matter, lateral /
third ventricles, deep grey nuclei and the interhemispheric fissure, a smooth multiplicative
bias field and Rician noise. One lesion type per class, designed to look different:

``homogeneous``     small round uniformly enhancing intra-axial lesion, no oedema.
``ring_enhancing``  large irregular lesion: necrotic core, thick irregular enhancing rim, wide
                    finger-like oedema restricted to brain parenchyma, mass effect.
``extra_axial``     dural-based lentiform enhancing mass on the inner skull table with a dural
                    tail, a CSF cleft and compression of the underlying brain.
``multifocal``      (4th class) 2-4 small nodules (ring or solid) each with its own oedema.
``infiltrative``    (5th class) large ill-defined non-enhancing hypointense region, no enhancement.

Label map (identical for every dataset, ``mask_values = [0, 1, 2, 3, 4]``):
0 outside the intracranial space (air, scalp, skull); 1 intracranial space (brain parenchyma,
ventricles and CSF, everything inside the inner table of the skull); 2 oedema /
non-enhancing abnormal tissue; 3 solid / enhancing lesion (incl. the extra-axial mass and its
dural tail); 4 necrotic core. Lesion labels are always inside the intracranial space.

Geometry is computed in a per-head frame: ``rho`` is an "elliptical radius" (1 = outer scalp,
0.84 = inner skull table). Lesions displace the brain (mass effect) by warping the coordinates
the brain anatomy is evaluated at; the skull is never warped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medbalance.data.config import DataConfig, PhantomConfig
from medbalance.data.dataset import ImageDataset, IntensityInfo
from medbalance.data.sources import SOURCES
from medbalance.errors import ConfigError
from medbalance.utils.imaging import png_bytes
from medbalance.utils.io import atomic_directory
from medbalance.utils.progress import track

CLASS_TYPES: tuple[str, ...] = ("homogeneous", "ring_enhancing", "extra_axial", "multifocal", "infiltrative")
MAX_CLASSES = len(CLASS_TYPES)
MASK_VALUES: list[int] = [0, 1, 2, 3, 4]
LABEL_NAMES: dict[int, str] = {
    0: "outside the intracranial space (air, scalp, skull)",
    1: "intracranial space: brain parenchyma, ventricles and CSF",
    2: "oedema / non-enhancing abnormal tissue",
    3: "solid / enhancing lesion (incl. extra-axial mass and dural tail)",
    4: "necrotic core",
}
INTRACRANIAL_RHO = 0.84  # inner skull table in head-frame elliptical radius
_SKULL_OUTER = 0.915
_CHUNK = 64  # samples rendered together (fixed: results do not depend on machine)


# ---------------------------------------------------------------------------------- class sizes
def class_counts(n: int, imbalance: list[float]) -> list[int]:
    """Per-class counts summing to ``n`` proportional to ``imbalance`` (largest remainder, each >= 1)."""
    k = len(imbalance)
    if k < 2 or k > MAX_CLASSES:
        raise ConfigError(f"phantom.imbalance must list 2 to {MAX_CLASSES} class weights, got {k}")
    w = np.asarray(imbalance, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ConfigError(f"phantom.imbalance weights must be positive numbers, got {list(imbalance)}")
    if n < k:
        raise ConfigError(f"phantom.n={n} is smaller than the number of classes ({k})")
    quota = n * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    rem = n - int(counts.sum())
    order = sorted(range(k), key=lambda i: (-(quota[i] - counts[i]), i))
    for i in order[:rem]:
        counts[i] += 1
    for i in range(k):  # every class at least one sample: take from the largest class
        if counts[i] == 0:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    return [int(c) for c in counts]


def class_names(num_classes: int) -> list[str]:
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"the phantom has 2 to {MAX_CLASSES} classes, got {num_classes}")
    return list(CLASS_TYPES[:num_classes])


# ---------------------------------------------------------------------------------- parameters
def _subject_sizes(count: int, rng: np.random.Generator) -> list[int]:
    """Split a class count into subjects of 2-3 slices (a lone remainder of 1 only if count == 1)."""
    sizes: list[int] = []
    m = count
    while m > 0:
        if m <= 3:
            k = m
        else:
            k = int(rng.integers(2, 4))
            if m - k == 1:
                k = 5 - k
        sizes.append(k)
        m -= k
    return sizes


@dataclass
class _Plan:
    labels: np.ndarray  # (N,) class index per sample (final order)
    subject: np.ndarray  # (N,) subject index
    slice_off: np.ndarray  # (N,) slice offset (-1, 0, 1, ...) within its subject
    n_subjects: int


def _plan(counts: list[int], rng: np.random.Generator) -> _Plan:
    subj_cls: list[int] = []
    subj_size: list[int] = []
    for c, cnt in enumerate(counts):
        for s in _subject_sizes(cnt, rng):
            subj_cls.append(c)
            subj_size.append(s)
    perm = rng.permutation(len(subj_cls))
    labels, subject, off = [], [], []
    for j_new, j in enumerate(perm):
        m = subj_size[j]
        for t in range(m):
            labels.append(subj_cls[j])
            subject.append(j_new)
            off.append(t - (m - 1) / 2.0)
    return _Plan(np.asarray(labels), np.asarray(subject), np.asarray(off, dtype=np.float64), len(perm))


def _params(plan: _Plan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every random parameter of every sample, vectorised (subject-level values shared by its slices)."""
    ns, n = plan.n_subjects, len(plan.labels)
    S, u = plan.subject, rng.uniform

    def subj(x: np.ndarray) -> np.ndarray:
        return x[S]

    p: dict[str, np.ndarray] = {}
    # head geometry (subject) + small per-slice jitter
    z0 = u(-0.45, 0.45, ns)
    p["z"] = subj(z0) + 0.12 * plan.slice_off
    scale = subj(u(0.86, 1.0, ns)) * (1 - 0.12 * p["z"] ** 2)
    p["a"] = subj(u(0.62, 0.72, ns)) * scale
    p["b"] = subj(u(0.8, 0.88, ns)) * scale
    p["theta"] = subj(np.deg2rad(u(-14, 14, ns))) + np.deg2rad(u(-2, 2, n))
    p["cx"] = subj(u(-0.05, 0.05, ns)) + u(-0.01, 0.01, n)
    p["cy"] = subj(u(-0.04, 0.04, ns)) + u(-0.01, 0.01, n)
    p["hc"] = subj(u(-0.025, 0.025, (ns, 3)))  # head-outline harmonics k = 2, 3, 4
    p["hp"] = subj(u(0, 2 * np.pi, (ns, 3)))
    # cortex folding (varies slice to slice)
    p["gK"] = 2.0 * rng.integers(10, 15, n)  # even: half frequency stays periodic
    p["gq"] = u(0, 2 * np.pi, (n, 4))
    p["ga"] = u(0.8, 2.0, (n, 3))
    p["wm0"] = u(0.52, 0.58, n)
    p["wm_amp"] = u(0.1, 0.16, n)
    p["atrophy"] = subj(u(0.8, 1.35, ns))  # ventricle size
    # contrast (subject)
    p["I_wm"] = subj(u(0.55, 0.66, ns))
    p["I_gm"] = p["I_wm"] * subj(u(0.66, 0.8, ns))
    p["I_csf"] = subj(u(0.07, 0.15, ns))
    p["I_scalp"] = subj(u(0.62, 0.82, ns))
    p["I_bone"] = subj(u(0.03, 0.07, ns))
    p["I_dip"] = subj(u(0.25, 0.42, ns))
    p["I_enh"] = subj(u(0.84, 0.95, ns))
    p["I_nec"] = p["I_csf"] + subj(u(0.05, 0.12, ns))
    p["I_oed"] = p["I_gm"] - subj(u(0.06, 0.12, ns))
    p["bias_amp"] = subj(u(0.08, 0.22, ns))
    p["bias_grid"] = subj(rng.standard_normal((ns, 4, 4)))
    p["noise"] = subj(u(0.012, 0.035, ns))
    # lesion (subject-level position and size; per-slice cross-section shrinks away from its centre)
    dz = p["z"] - subj(z0 + u(-0.05, 0.05, ns))
    p["les_ang"] = subj(u(-np.pi, np.pi, ns))
    p["les_rho"] = subj(u(0, 1, ns))  # fraction of the allowed radial range
    p["les_r"] = subj(u(0, 1, ns))  # fraction of the class's size range
    p["les_fz"] = np.sqrt(1 - 0.5 * np.minimum(1.0, (dz / 0.25) ** 2))
    p["les_h"] = subj(u(-1, 1, (ns, 4))) + 0.15 * u(-1, 1, (n, 4))  # outline harmonics k = 2..5
    p["les_hp"] = subj(u(0, 2 * np.pi, (ns, 4)))
    p["oed_h"] = subj(u(-1, 1, (ns, 6)))  # oedema outline harmonics k = 2..7
    p["oed_hp"] = subj(u(0, 2 * np.pi, (ns, 6)))
    p["core_frac"] = subj(u(0.45, 0.68, ns))
    p["core_off"] = subj(u(-0.15, 0.15, (ns, 2)))
    p["oed_frac"] = subj(u(1.55, 2.1, ns))
    p["ext_el"] = subj(u(1.25, 1.7, ns))  # extra-axial: tangential / normal extent
    p["tail"] = subj(u(0.35, 0.8, ns))  # dural tail length (fraction of the base half-width)
    p["n_nod"] = subj(rng.integers(2, 5, ns)).astype(np.float64)
    p["nod_ang"] = subj(u(-np.pi, np.pi, (ns, 4)))
    p["nod_rho"] = subj(u(0.15, 0.62, (ns, 4)))
    p["nod_r"] = subj(u(0.04, 0.07, (ns, 4)))
    p["nod_oed"] = subj(u(1.7, 2.5, (ns, 4)))
    return p


# ---------------------------------------------------------------------------------- geometry
def _t(x: np.ndarray) -> torch.Tensor:
    """(B,) -> (B,1,1) float32 tensor; (B,k) -> (B,k,1,1)."""
    t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    return t[..., None, None]


def _soft(x: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x / w)


def _harmonics(ang: torch.Tensor, amp: torch.Tensor, phase: torch.Tensor, k0: int) -> torch.Tensor:
    """sum_k amp[:, k] * cos((k + k0) * ang + phase[:, k]) with amp/phase (B, K, 1, 1)."""
    out = torch.zeros_like(ang)
    for k in range(amp.shape[1]):
        out = out + amp[:, k] * torch.cos((k + k0) * ang + phase[:, k])
    return out


def _rho(u: torch.Tensor, v: torch.Tensor, P: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    ua, vb = u / P["a"], v / P["b"]
    phi = torch.atan2(vb, ua)
    shape = 1 + _harmonics(phi, P["hc"], P["hp"], 2)
    return torch.sqrt(ua * ua + vb * vb + 1e-12) / shape, phi


def _rim_point(phi: torch.Tensor, rho: torch.Tensor | float, P: dict[str, torch.Tensor]):
    """Head-frame point at elliptical angle ``phi`` and elliptical radius ``rho``."""
    shape = 1 + _harmonics(phi, P["hc"], P["hp"], 2)
    return P["a"] * rho * shape * torch.cos(phi), P["b"] * rho * shape * torch.sin(phi)


def _blob(u, v, cu, cv, r, amp, phase, k0: int = 2) -> torch.Tensor:
    """Normalised distance (1 on the outline) of a lobulated blob centred at (cu, cv)."""
    du, dv = u - cu, v - cv
    ang = torch.atan2(dv, du)
    rad = r * (1 + _harmonics(ang, amp, phase, k0)).clamp_min(0.3)
    return torch.sqrt(du * du + dv * dv + 1e-12) / rad


def _push(us, vs, cu, cv, amount, sigma):
    """Mass effect: coordinates at which to evaluate the anatomy so tissue is pushed away from (cu, cv)."""
    du, dv = us - cu, vs - cv
    r = torch.sqrt(du * du + dv * dv + 1e-12)
    r_src = (r - amount * torch.exp(-(r * r) / (2 * sigma * sigma))).clamp_min(0)
    f = r_src / r
    return cu + du * f, cv + dv * f


# ---------------------------------------------------------------------------------- anatomy
_BRAIN_KEYS = ("a", "b", "hc", "hp", "gq", "ga", "gK", "wm0", "wm_amp", "sc", "z", "atrophy", "I_wm", "I_gm", "I_csf", "wr")


def _brain(us, vs, P, wr):
    """Brain interior evaluated at (possibly warped) head-frame coordinates.

    Works on any layout where ``P[k]`` broadcasts against ``us`` and ``P[k][:, j]`` selects a
    harmonic (grids with (B,1,1) parameters, or flat pixel lists with per-pixel parameters).
    Returns intensity and the CSF fraction (1 = CSF, 0 = parenchyma).
    """
    rho, phi = _rho(us, vs, P)
    q = P["gq"]
    ph = (
        P["ga"][:, 0] * torch.sin(phi + q[:, 0])
        + P["ga"][:, 1] * torch.sin(2 * phi + q[:, 1])
        + 0.5 * P["ga"][:, 2] * torch.sin(3 * phi + q[:, 2])
    )
    # gyral pattern: sulci where G ~ 1; they wiggle with depth and have varying depths
    wig = 0.6 * torch.sin(14.0 * rho + 2 * phi + q[:, 1])
    G = torch.cos(P["gK"] * phi + ph + wig + q[:, 3])
    depth = 0.5 + 0.5 * torch.cos(0.5 * P["gK"] * phi + 0.5 * ph + q[:, 2])  # per-sulcus depth in [0, 1]
    rho_pial = 0.832 - 0.01 * (1 + G)
    rho_wm = P["wm0"] + P["wm_amp"] * (1 - G) / 2 + 0.02 * torch.sin(2 * phi + q[:, 0])
    f_par = _soft(rho_pial - rho, wr)
    f_wm = _soft(rho_wm - rho, wr)
    sulc = _soft(G - 0.8, 0.04) * _soft(rho - (rho_wm + 0.015 + 0.1 * (1 - depth)), wr)
    # interhemispheric fissure (anterior and posterior to the ventricles at ventricle level)
    s = P["sc"]
    z = P["z"]
    vcc = (0.32 - 0.25 * _soft(z - 0.35, 0.08)) * s  # corpus-callosum extent shrinks high up
    fiss = _soft(0.014 * s - us.abs(), 0.006) * _soft(vs.abs() - vcc, 0.02)
    # lateral ventricles: two curved ellipses, larger at mid levels, "atrophy" scales them
    vlen = (1 - 0.9 * (z - 0.05).abs()).clamp(0.15, 1.0)
    L = 0.27 * s * P["atrophy"] ** 0.5 * vlen
    w0 = 0.04 * s * P["atrophy"] * (0.5 + 0.5 * vlen)
    v0 = -0.03 * s
    vent = torch.zeros_like(us)
    for side in (-1.0, 1.0):
        dv = vs - v0
        uc = side * (w0 + 0.012 * s) + side * 2.2 * dv * dv / s
        e = ((us - uc) / (w0 * (1 + 0.35 * (-dv / L).clamp(0, 1)))) ** 2 + (dv / L) ** 2
        vent = torch.maximum(vent, _soft(1 - e, 0.15))
    low = _soft(-z - 0.05, 0.08)  # lower slices: third ventricle and thalami
    v3 = low * _soft(0.011 * s - us.abs(), 0.005) * _soft(0.08 * s - (vs - 0.06 * s).abs(), 0.01)
    thal = torch.zeros_like(us)
    for side in (-1.0, 1.0):
        e = ((us - side * 0.085 * s) / (0.065 * s)) ** 2 + ((vs - 0.09 * s) / (0.085 * s)) ** 2
        thal = torch.maximum(thal, _soft(1 - e, 0.2))
    thal = thal * low
    csf = torch.maximum(torch.maximum(1 - f_par, sulc * f_par), torch.maximum(fiss, torch.maximum(vent, v3)))
    tissue = f_wm * P["I_wm"] + (1 - f_wm) * P["I_gm"]
    tissue = tissue * (1 - thal) + thal * (0.5 * (P["I_wm"] + P["I_gm"]))
    return csf * P["I_csf"] + (1 - csf) * tissue, csf


def _fields(P: dict[str, torch.Tensor], B: int, S: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiplicative (texture * bias field) and lesion-texture fields, built at low resolution and
    upsampled once (bilinear): coarse + fine tissue texture, smooth bias field, lesion mottling."""
    m = max(8, S // 3)

    def up(x: torch.Tensor, size: int) -> torch.Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    coarse = up(torch.randn(B, 2, max(4, S // 8), max(4, S // 8), generator=gen), m)
    fine = torch.randn(B, 1, m, m, generator=gen)
    bias = F.interpolate(P["bias_grid"][:, None], size=(m, m), mode="bicubic", align_corners=True)
    tissue = (1 + 0.035 * coarse[:, :1] + 0.02 * fine) * torch.exp(P["bias_amp"][:, None] * bias / 1.5)
    lesion = 1 + 0.06 * coarse[:, 1:]
    out = up(torch.cat([tissue, lesion], 1), S)
    return out[:, 0], out[:, 1]


# ---------------------------------------------------------------------------------- lesions
# radius range (normalised image units; the head half-width is ~0.6) and mass-effect strength
_SIZE = {
    "homogeneous": (0.065, 0.1),
    "ring_enhancing": (0.13, 0.2),
    "extra_axial": (0.14, 0.21),
    "infiltrative": (0.15, 0.24),
}


class _PerPixel(dict):
    """Per-pixel copies of per-sample parameters, made on first use (flat layout)."""

    def __init__(self, P: dict[str, torch.Tensor], bidx: torch.Tensor):
        super().__init__()
        self._P, self._bidx = P, bidx

    def __missing__(self, k: str) -> torch.Tensor:
        val = self._P[k]
        B = val.shape[0]
        out = val.reshape(B, -1).index_select(0, self._bidx).squeeze(1)
        self[k] = out
        return out


def _render_chunk(kind: str, P: dict[str, torch.Tensor], S: int, gen: torch.Generator, anat=None):
    """Render one chunk of samples of one lesion type: (image (B,S,S) in [0,1], labels (B,S,S) int64).

    ``anat``: optional (image, brain mask) pair (B,S,S) replacing the procedural head (MNI152 anatomy).
    """
    B = P["a"].shape[0]
    c = (torch.arange(S, dtype=torch.float32) + 0.5) / S * 2 - 1
    py, px = torch.meshgrid(c, c, indexing="ij")
    dx, dy = px[None] - P["cx"], py[None] - P["cy"]
    cos, sin = torch.cos(P["theta"]), torch.sin(P["theta"])
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # head frame (v < 0 = anterior = image top)
    rho, phi = _rho(u, v, P)
    px_w = 2.0 / S
    wr = 0.55 * px_w / torch.minimum(P["a"], P["b"])  # one pixel in rho units (soft edges)
    P = dict(P, wr=wr)
    ic_hard = rho < INTRACRANIAL_RHO if anat is None else anat[1]
    ic = _soft(INTRACRANIAL_RHO - rho, wr) if anat is None else anat[1].float()
    # skull and scalp (never warped)
    skull_out = _soft(_SKULL_OUTER - rho, wr)
    head = _soft(1.0 - rho, wr)
    bone = (skull_out - ic).clamp_min(0)
    dip_pattern = 0.5 + 0.5 * torch.cos(3 * phi + P["hp"][:, 0]) * torch.cos(5 * phi + P["hp"][:, 1])
    dip = _soft(rho - 0.86, wr) * _soft(0.895 - rho, wr) * dip_pattern
    scalp = (head - skull_out).clamp_min(0)
    img = bone * P["I_bone"] + dip * (P["I_dip"] - P["I_bone"]) + scalp * P["I_scalp"]
    if anat is not None:  # skull-stripped template: nothing outside the brain mask
        img = torch.zeros_like(img)
    field, les_tex = _fields(P, B, S, gen)

    # the inside of the skull (brain + lesions) is evaluated only on its pixels (~1/3 of the image),
    # as flat pixel lists with per-pixel copies of the sample parameters
    sel = rho < INTRACRANIAL_RHO + 6 * wr if anat is None else ic_hard
    lin = sel.reshape(-1).nonzero().squeeze(1)
    bidx = torch.repeat_interleave(torch.arange(B), sel.reshape(B, -1).sum(1))
    Pf = _PerPixel(P, bidx)

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1)[lin]

    img_f, lab_f = _interior(
        kind, Pf, flat(u), flat(v), flat(rho), px_w, flat(ic), flat(img), flat(les_tex),
        flat(ic_hard), None if anat is None else flat(anat[0]),
    )
    img.view(-1)[lin] = img_f
    labels = torch.zeros(B, S, S, dtype=torch.int64)
    labels.view(-1)[lin] = lab_f

    # tissue texture, bias field, Rician noise
    img = img * field
    sig = P["noise"]
    n1 = torch.randn(B, S, S, generator=gen)
    n2 = torch.randn(B, S, S, generator=gen)
    img = torch.sqrt((img + sig * n1) ** 2 + (sig * n2) ** 2)
    return (img / 1.02).clamp(0, 1), labels, {"intracranial": ic_hard, "rho": rho}


def _interior(kind, P, u, v, rho, px_w, ic, img, les_tex, ic_hard, anat=None):
    """Brain anatomy (warped by the lesion's mass effect) and the lesion of type ``kind``.

    Layout-agnostic (used on flat pixel lists). ``img`` holds the skull/scalp already painted;
    returns the composited intensity and the label map (0/1 intracranial, 2-4 lesion).
    ``anat``: template intensities (MNI152 path), used unwarped instead of the procedural brain.
    """
    mn = torch.minimum(P["a"], P["b"])
    r01 = P["les_r"]
    us, vs = u, v
    lesion_layers = []  # (alpha_soft, hard, intensity, label) painted in order

    def intra_center(extent):
        # centre at elliptical radius so that the lesion (of radius `extent`) stays inside the brain
        rmax = (0.78 - 1.1 * extent / mn).clamp_min(0.12)
        rc = 0.1 + (rmax - 0.1).clamp_min(0) * P["les_rho"].sqrt()
        return _rim_point(P["les_ang"], rc, P)

    if kind in ("homogeneous", "ring_enhancing", "infiltrative"):
        lo, hi = _SIZE[kind]
        r = (lo + (hi - lo) * r01) * P["les_fz"] * P["sc"]
        amp_scale = {"homogeneous": 0.05, "ring_enhancing": 0.14, "infiltrative": 0.16}[kind]
        amp = P["les_h"] * amp_scale
        ext = r * (P["oed_frac"] * 1.05 if kind == "ring_enhancing" else 1.25)
        cu, cv = intra_center(ext if kind != "ring_enhancing" else r * 1.3)
        push = {"homogeneous": 0.35, "ring_enhancing": 0.75, "infiltrative": 0.3}[kind] * r
        us, vs = _push(u, v, cu, cv, push, 1.6 * r)
        d = _blob(u, v, cu, cv, r, amp, P["les_hp"])
        if kind == "homogeneous":
            lesion_layers.append((d, r, 3, P["I_enh"] * 0.97, 0.6, "solid"))
        elif kind == "infiltrative":
            lesion_layers.append((d, r, 2, P["I_oed"] - 0.02, 3.0, "oedema"))
        else:
            ro = r * P["oed_frac"]
            d_oed = _blob(u, v, cu, cv, ro, P["oed_h"] * 0.2, P["oed_hp"])
            lesion_layers.append((d_oed, ro, 2, P["I_oed"], 1.5, "oedema"))
            lesion_layers.append((d, r, 3, P["I_enh"], 0.6, "solid"))
            ccu = cu + P["core_off"][:, 0] * r
            ccv = cv + P["core_off"][:, 1] * r
            rc = r * P["core_frac"]
            d_core = _blob(u, v, ccu, ccv, rc, amp * 1.3, P["les_hp"] + 1.0)
            lesion_layers.append((d_core, rc, 4, P["I_nec"], 0.8, "core"))
    elif kind == "multifocal":
        n_nod = P["n_nod"]
        for j in range(4):
            active = (n_nod > j).float()
            rj = P["nod_r"][:, j] * P["les_fz"] * P["sc"] * active
            cu, cv = _rim_point(P["nod_ang"][:, j], P["nod_rho"][:, j], P)
            us, vs = _push(us, vs, cu, cv, 0.3 * rj, 1.5 * rj + 1e-4)
            dj = _blob(u, v, cu, cv, rj + 1e-6, P["les_h"] * 0.06, P["les_hp"] + j)
            big = rj > 0.05 * P["sc"]
            d_oed = _blob(u, v, cu, cv, rj * P["nod_oed"][:, j] + 1e-6, P["oed_h"] * 0.18, P["oed_hp"] + j)
            d_core = torch.where(big, dj / 0.45, torch.full_like(dj, 1e6))
            lesion_layers += [
                (d_oed, rj * P["nod_oed"][:, j] + 1e-6, 2, P["I_oed"], 1.5, "oedema"),
                (dj, rj + 1e-6, 3, P["I_enh"], 0.6, "solid"),
                (d_core, 0.45 * rj + 1e-6, 4, P["I_nec"], 0.8, "core"),
            ]
    elif kind == "extra_axial":
        lo, hi = _SIZE[kind]
        r = (lo + (hi - lo) * r01) * P["les_fz"] * P["sc"]
        qu, qv = _rim_point(P["les_ang"], INTRACRANIAL_RHO, P)  # base point on the dura
        qn = torch.sqrt(qu * qu + qv * qv)
        nu, nv = -qu / qn, -qv / qn  # inward normal (towards the head centre)
        rn, rt = r, r * P["ext_el"]
        ecu, ecv = qu - 0.15 * rn * nu, qv - 0.15 * rn * nv
        du, dv = u - ecu, v - ecv
        an, at = du * nu + dv * nv, -du * nv + dv * nu
        ang = torch.atan2(an / rn, at / rt)
        d = torch.sqrt((an / rn) ** 2 + (at / rt) ** 2 + 1e-12) / (1 + _harmonics(ang, P["les_h"] * 0.06, P["les_hp"], 2))
        # dural tail: thin enhancing band along the inner table, tapering away from the base
        at_q = -(u - qu) * nv + (v - qv) * nu
        half = rt * 0.8
        taper = (1 - ((at_q.abs() - half) / (P["tail"] * rt)).clamp(0, 1))
        an_q = (u - qu) * nu + (v - qv) * nv  # depth along the inward normal from the base point
        near = (at_q.abs() > 0.5 * half) & (an_q < rn) & (an_q > -rn)
        thick = 1.6 * px_w * taper * near.float()
        depth = (INTRACRANIAL_RHO - rho) * mn  # approx. distance inside the inner table
        d_tail = torch.where(thick > 0, depth / (thick + 1e-6), torch.full_like(depth, 1e6))
        us, vs = _push(u, v, qu, qv, 0.9 * rn, 1.25 * rt)
        lesion_layers.append((d, rn, 3, P["I_enh"] * 0.92, 0.6, "solid"))
        lesion_layers.append((d_tail, thick + px_w, 3, P["I_enh"] * 0.92, 0.5, "tail"))
    else:  # pragma: no cover - guarded by class_names
        raise ConfigError(f"unknown phantom lesion type {kind!r}")

    if anat is None:
        brain, csf = _brain(us, vs, P, P["wr"])
    else:  # template anatomy: CSF = dark voxels (no mass effect on the template)
        brain, csf = anat, ((0.55 * P["I_gm"] - anat) / (0.1 * P["I_gm"]) + 0.5).clamp(0, 1)
    par_hard = csf < 0.5
    img = img + ic * brain
    labels = ic_hard.long()
    for dist, scale, lab, inten, soft_px, role in lesion_layers:
        w_d = soft_px * px_w / scale  # edge width in units of the normalised distance
        alpha = _soft(1 - dist, w_d)
        hard = dist < 1
        if role == "oedema":  # oedema / infiltration follows the parenchyma, not the CSF spaces
            alpha = alpha * (1 - csf)
            hard = hard & par_hard
        alpha = alpha * ic
        hard = hard & ic_hard
        tex = les_tex if role in ("core", "oedema") else 1
        img = img * (1 - alpha) + alpha * inten * tex
        labels = torch.where(hard, torch.full_like(labels, lab), labels)
    return img, labels


# ---------------------------------------------------------------------------------- public API
def render_phantom(cfg: PhantomConfig, return_geometry: bool = False):
    """Render the phantom: (images (N,S,S) uint8, label maps (N,S,S) uint8, labels (N,), subjects (N,)).

    With ``return_geometry`` also the intracranial mask computed from the head geometry (N,S,S) bool.
    """
    counts = class_counts(cfg.n, cfg.imbalance)
    kinds = class_names(len(counts))
    rng = np.random.default_rng(cfg.seed)
    plan = _plan(counts, rng)
    p = _params(plan, rng)
    S = cfg.size
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    n = len(plan.labels)
    images = torch.empty(n, S, S, dtype=torch.uint8)
    labs = torch.empty(n, S, S, dtype=torch.uint8)
    geom = torch.empty(n, S, S, dtype=torch.bool) if return_geometry else None
    chunks = []
    for c, kind in enumerate(kinds):
        idx = np.flatnonzero(plan.labels == c)
        chunks += [(kind, idx[i : i + _CHUNK]) for i in range(0, len(idx), _CHUNK)]
    anat_all = _mni152_slices(p, S) if cfg.anatomy == "mni152" else None
    for kind, idx in track(chunks, "rendering phantom"):
        P = {k: _t(val[idx]) for k, val in p.items() if k != "bias_grid"}
        P["bias_grid"] = torch.as_tensor(p["bias_grid"][idx], dtype=torch.float32)
        P["sc"] = torch.sqrt(P["a"] * P["b"]) / 0.68  # head-size scale
        anat = None if anat_all is None else (anat_all[0][idx], anat_all[1][idx])
        img, lab, extra = _render_chunk(kind, P, S, gen, anat)
        ti = torch.as_tensor(idx)
        images[ti] = (img * 255).round().to(torch.uint8)
        labs[ti] = lab.to(torch.uint8)
        if geom is not None:
            geom[ti] = extra["intracranial"]
    out = (images, labs, plan.labels.copy(), plan.subject.copy())
    return out + (geom,) if return_geometry else out


def _mni152_slices(p: dict[str, np.ndarray], S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial slices of nilearn's skull-stripped MNI152 template (2 mm) as the anatomy of every sample.

    The slice level follows each sample's ``z``; the head-frame parameters in ``p`` are replaced by an
    ellipse fitted to the slice's brain mask so that lesion placement (inside / on the edge of the brain)
    works unchanged. Returns images (N,S,S) scaled so white matter ~ ``I_wm`` and brain masks (N,S,S).
    """
    try:
        from nilearn import datasets
    except ImportError:
        raise ConfigError(
            "phantom.anatomy='mni152' needs the nilearn package: pip install nilearn "
            "(or use anatomy='procedural', which needs nothing extra)"
        ) from None
    vol = np.asarray(datasets.load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).get_fdata()) > 0.5
    area = mask.sum((0, 1))
    levels = np.flatnonzero(area >= 0.55 * area.max())  # axial slices with a large brain section
    t = np.clip((p["z"] + 0.6) / 1.2, 0, 1)
    ks = levels[np.round(t * (len(levels) - 1)).astype(int)]
    # RAS (x, y, z) -> image rows = anterior at the top, columns = patient right on the left (radiological)
    sl = np.ascontiguousarray(vol[:, :, ks].transpose(2, 1, 0)[:, ::-1, ::-1])
    ms = np.ascontiguousarray(mask[:, :, ks].transpose(2, 1, 0)[:, ::-1, ::-1])
    h, w = sl.shape[1:]
    side = max(h, w) + 4
    pad = ((0, 0), ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2))
    sl_t = torch.from_numpy(np.pad(sl, pad))[:, None]
    ms_t = torch.from_numpy(np.pad(ms, pad).astype(np.float32))[:, None]
    img = F.interpolate(sl_t, size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    msk = F.interpolate(ms_t, size=(S, S), mode="nearest-exact")[:, 0] > 0.5
    inside = img[msk]
    scale = float(np.percentile(inside.numpy(), 90)) if inside.numel() else 1.0
    img = (img / max(scale, 1e-6)).clamp(0, 1.6) * torch.as_tensor(p["I_wm"], dtype=torch.float32)[:, None, None]
    img = img * msk
    # ellipse fitted to each brain mask (moments); the mask boundary sits at rho = INTRACRANIAL_RHO
    c = (torch.arange(S, dtype=torch.float32) + 0.5) / S * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    m = msk.float()
    cnt = m.sum((1, 2)).clamp_min(1)
    cx, cy = (m * xx).sum((1, 2)) / cnt, (m * yy).sum((1, 2)) / cnt
    vx = (m * (xx - cx[:, None, None]) ** 2).sum((1, 2)) / cnt
    vy = (m * (yy - cy[:, None, None]) ** 2).sum((1, 2)) / cnt
    p["cx"], p["cy"] = cx.numpy().astype(np.float64), cy.numpy().astype(np.float64)
    p["theta"] = np.zeros_like(p["cx"])
    p["a"] = (2 * vx.sqrt() / INTRACRANIAL_RHO).numpy().astype(np.float64)
    p["b"] = (2 * vy.sqrt() / INTRACRANIAL_RHO).numpy().astype(np.float64)
    p["hc"] = np.zeros_like(p["hc"])
    return img, msk


@SOURCES.register("phantom", help="built-in procedural brain-MRI-like dataset with lesion classes (no download)")
def make_phantom(cfg: DataConfig) -> ImageDataset:
    """Make the built-in phantom dataset described by ``cfg.phantom`` (resized if ``cfg.image_size``)."""
    pc = cfg.phantom
    images_u8, labs, labels, subject = render_phantom(pc)
    n, S = images_u8.shape[0], pc.size
    info = IntensityInfo("uint8", 0.0, 255.0)
    images = info.scale(images_u8[:, None])
    masks = labs.long()
    conversions: list[str] = []
    if cfg.image_size is not None and cfg.image_size != S:
        T = cfg.image_size
        mode = "area" if T < S else "bilinear"
        kw: dict[str, Any] = {} if mode == "area" else {"align_corners": False}
        x = F.interpolate((images + 1) * 127.5, size=(T, T), mode=mode, **kw)
        images = info.scale(x.round().clamp(0, 255))  # stays on the 8-bit grid
        masks = F.interpolate(masks[:, None].float(), size=(T, T), mode="nearest-exact")[:, 0].long()
        conversions.append(f"resized {S}x{S} -> {T}x{T} ({mode} for images, nearest for masks)")
    width = max(5, len(str(n)))
    ids = [f"phantom_{i + 1:0{width}d}" for i in range(n)]
    groups = [f"phantom_subject_{int(s) + 1:04d}" for s in subject]
    return ImageDataset(
        images=images.contiguous(),
        labels=torch.as_tensor(labels, dtype=torch.int64),
        class_names=class_names(len(pc.imbalance)),
        ids=ids,
        masks=masks.contiguous(),
        mask_values=list(MASK_VALUES),
        groups=groups,
        intensity=info,
        meta={
            "source": "phantom",
            "config": pc.model_dump(mode="json"),
            "original_shapes": [[S, S]] * n,
            "conversions": conversions,
            "warnings": [],
            "anatomy_values": [1],  # label 1 is anatomy (intracranial space), 2-4 are lesion
            "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
        },
    )


def write_phantom_dataset(out_dir: str | Path, cfg: PhantomConfig, overwrite: bool = False) -> Path:
    """Write the phantom as 8-bit PNGs + ``manifest.csv`` (id,image,mask,label,group) atomically.

    Returns the manifest path. ``masks/*.png`` hold the label values 0-4 directly.
    """
    out_dir = Path(out_dir)
    ds = make_phantom(DataConfig(source="phantom", phantom=cfg))
    imgs = ds.intensity.to_storage(ds.images[:, 0])
    vals = np.asarray(ds.mask_values, dtype=np.uint8)
    masks = vals[ds.masks.numpy()]
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        rows = []
        for i in track(range(len(ds)), "writing phantom PNGs"):
            sid = ds.ids[i]
            (tmp / "images" / f"{sid}.png").write_bytes(png_bytes(imgs[i]))
            (tmp / "masks" / f"{sid}.png").write_bytes(png_bytes(masks[i]))
            rows.append([sid, f"images/{sid}.png", f"masks/{sid}.png", ds.class_names[int(ds.labels[i])], ds.groups[i]])
        with open(tmp / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "image", "mask", "label", "group"])
            w.writerows(rows)
        (tmp / "README.txt").write_text(_readme(ds, cfg))
    return out_dir / "manifest.csv"


def _readme(ds: ImageDataset, cfg: PhantomConfig) -> str:
    counts = ds.class_counts()
    lines = [
        "medbalance phantom dataset (procedural brain-MRI-like axial slices, T1 post-contrast look)",
        "",
        f"samples: {len(ds)}, size {cfg.size}x{cfg.size}, seed {cfg.seed}, imbalance {cfg.imbalance}",
        "classes: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        f"subjects (group column): {len(set(ds.groups or []))}, 1-3 adjacent slices each, same head and lesion",
        "",
        "images/<id>.png  8-bit grey image",
        "masks/<id>.png   8-bit label map, values:",
    ]
    lines += [f"  {k}  {v}" for k, v in LABEL_NAMES.items()]
    lines += [
        "manifest.csv     id,image,mask,label,group (paths relative to this folder)",
        "",
        "Load with: medbalance.data.load_dataset('manifest.csv', mask_values=[0,1,2,3,4], anatomy_values=[1],",
        f"          classes={list(ds.class_names)!r})  (classes keeps this class order)",
        "Lesion types: " + "; ".join(CLASS_TYPES[: ds.num_classes]),
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "CLASS_TYPES",
    "LABEL_NAMES",
    "MASK_VALUES",
    "class_counts",
    "class_names",
    "make_phantom",
    "render_phantom",
    "write_phantom_dataset",
]
