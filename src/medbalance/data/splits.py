"""Train/val/test splits: stratified by class and, when groups (patients) are known, group-disjoint.

* No groups: each class is shuffled (seeded) and cut with largest-remainder rounding, so
  every split gets ``round(f * n_c)`` samples of class ``c`` (+-1) and every split with a
  positive fraction gets at least one sample of every class.
* Groups: a deterministic greedy assignment. Groups are visited in a seeded random order,
  larger groups first (by power-of-two size bucket), and each goes to the split where it
  most reduces the squared per-class deviation from the target counts (deviations are
  normalised by the class size, so minority classes weigh as much as majority ones). A
  repair pass then makes sure every split holds every class. A group never lands on two
  sides.

Identical images (content hash) are grouped like patients, so copies never straddle the split
(``stratified_split(group_duplicates=True)``, used by every downstream split; near-duplicates by a perceptual
hash on request).

Two simpler splits for training (both drawn here, nowhere else):

* :func:`split_train_heldout`: the generator's training / held-out split (``train.val_fraction`` of
  ``medbalance train``): per class ``round(f * n_c)`` units (samples, or patient groups by their majority class)
  held out, at least one left in train; identical images form one unit.
* :func:`split_train_val`: ``medbalance train-task``'s train / validation subsets (a :func:`stratified_split`).

``subsample_class`` keeps a seeded random fraction of one class (e.g. "minority subsampled
to 10 %" experiments).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch

from medbalance.errors import ConfigError, DataError
from medbalance.utils.seed import stream_seed

SPLIT_NAMES = ("train", "val", "test")


def _as_numpy(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy().astype(np.int64)
    return np.asarray(labels, dtype=np.int64)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(list(fractions), dtype=np.float64)
    if f.shape != (3,):
        raise ConfigError(f"fractions must be three numbers (train, val, test), got {list(fractions)}")
    if np.any(f < 0) or not np.isfinite(f).all():
        raise ConfigError(f"fractions must be non-negative, got {f.tolist()}")
    if abs(f.sum() - 1.0) > 1e-6:
        raise ConfigError(f"fractions must sum to 1, got {f.tolist()} (sum {f.sum():g})")
    if f[0] <= 0:
        raise ConfigError("the train fraction must be positive")
    return f


def allocate(n: int, fractions: np.ndarray) -> np.ndarray:
    """Split ``n`` items by ``fractions`` (largest remainder), at least 1 per positive fraction."""
    raw = fractions * n
    out = np.floor(raw).astype(np.int64)
    rem = n - out.sum()
    order = np.argsort(-(raw - out), kind="stable")
    out[order[:rem]] += 1
    for s in np.flatnonzero((fractions > 0) & (out == 0)):
        donor = int(np.argmax(out))
        out[donor] -= 1
        out[s] += 1
    return out


def split_indices(
    labels: Any,
    groups: Sequence[str] | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    path: str | None = None,
) -> dict[str, np.ndarray]:
    """Core of :func:`stratified_split` on plain labels (and optional group ids)."""
    y = _as_numpy(labels)
    f = _check_fractions(fractions)
    n_classes = int(y.max()) + 1 if y.size else 0
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    n_sides = int((f > 0).sum())
    side_names = ", ".join(SPLIT_NAMES[s] for s in range(3) if f[s] > 0)
    rng = np.random.default_rng(seed)
    if y.size == 0:
        raise DataError("cannot split an empty dataset", path=path)
    if groups is not None and len(groups) != len(y):
        raise DataError(f"{len(groups)} group ids for {len(y)} samples", path=path)

    parts: list[list[np.ndarray]] = [[], [], []]
    if groups is None:
        for c in range(n_classes):
            idx = np.flatnonzero(y == c)
            if idx.size == 0:
                continue
            if idx.size < n_sides:
                raise DataError(
                    f"class {names[c]!r} has only {idx.size} sample(s); cannot split it into "
                    f"{side_names} (needs at least {n_sides})",
                    path=path,
                )
            idx = rng.permutation(idx)
            cuts = np.cumsum(allocate(idx.size, f))[:-1]
            for s, part in enumerate(np.split(idx, cuts)):
                parts[s].append(part)
        return {name: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for name, p in zip(SPLIT_NAMES, parts)}

    # ---------------- group-aware greedy assignment
    gnames, ginv = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    n_groups = len(gnames)
    G = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(G, (ginv, y), 1)
    totals = G.sum(0)
    for c in range(n_classes):
        if totals[c] == 0:
            continue
        n_with = int((G[:, c] > 0).sum())
        if n_with < n_sides:
            raise DataError(
                f"class {names[c]!r} occurs in only {n_with} group(s) (patients); cannot put it in "
                f"{side_names} without splitting a group (needs at least {n_sides})",
                path=path,
            )
    weight = 1.0 / np.maximum(totals, 1).astype(np.float64) ** 2
    target = f[:, None] * totals[None, :].astype(np.float64)  # (3, C)
    counts = np.zeros((3, n_classes), dtype=np.float64)
    sizes = G.sum(1)
    perm = rng.permutation(n_groups)
    bucket = np.floor(np.log2(sizes[perm]))
    order = perm[np.argsort(-bucket, kind="stable")]
    assign = np.full(n_groups, -1, dtype=np.int64)
    allowed = np.flatnonzero(f > 0)
    for g in order:
        gc = G[g].astype(np.float64)
        # change of the weighted squared deviation when adding the group to each side
        delta = (((counts + gc - target) ** 2 - (counts - target) ** 2) * weight).sum(1)
        s = int(allowed[np.argmin(delta[allowed])])
        assign[g] = s
        counts[s] += gc

    # repair: every positive side must hold every (non-empty) class
    for _ in range(4 * n_classes * 3):
        missing = [(s, c) for s in allowed for c in range(n_classes) if totals[c] > 0 and counts[s, c] == 0]
        if not missing:
            break
        s, c = missing[0]
        # donor side: the one with the most groups holding class c
        cand = np.flatnonzero((G[:, c] > 0) & (assign != s))
        ng = {d: int((assign[cand] == d).sum()) for d in allowed if d != s}
        donor = max(ng, key=lambda d: ng[d])
        if ng[donor] < 2:
            break
        pool = cand[assign[cand] == donor]
        g = int(pool[np.argmin(sizes[pool])])  # move the smallest such group
        counts[donor] -= G[g]
        counts[s] += G[g]
        assign[g] = s
    for s in allowed:
        for c in range(n_classes):
            if totals[c] > 0 and counts[s, c] == 0:
                raise DataError(
                    f"could not place class {names[c]!r} in the {SPLIT_NAMES[s]} split without splitting a group",
                    path=path,
                )
    sample_side = assign[ginv]
    return {name: np.flatnonzero(sample_side == s).astype(np.int64) for s, name in enumerate(SPLIT_NAMES)}


def _content_key(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest()


def _average_hash(img: torch.Tensor, size: int = 8) -> bytes:
    """Perceptual average hash: the image (channel mean, 2D middle slice of volumes) pooled to size x size,
    each cell above the mean -> 1."""
    x = img.float()
    while x.dim() > 3:  # (C, D, H, W) -> middle slice
        x = x[:, x.shape[1] // 2]
    x = torch.nn.functional.adaptive_avg_pool2d(x.mean(0, keepdim=True)[None], size)[0, 0]
    return np.packbits((x > x.mean()).numpy().ravel()).tobytes()


def duplicate_groups(dataset: Any, near_duplicates: bool = False) -> dict[str, Any]:
    """Groups (size >= 2) of samples with identical image content (sha256 of the loaded image) and, with
    ``near_duplicates``, equal perceptual average hashes. Identical images with different labels -> DataError.

    Returns ``{"exact": [[i, ...], ...], "near": [[i, ...], ...]}``.
    """
    images = dataset.images
    labels = _as_numpy(dataset.labels)
    ids = list(getattr(dataset, "ids", range(len(labels))))
    by_key: dict[str, list[int]] = {}
    for i in range(len(labels)):
        by_key.setdefault(_content_key(images[i].detach().cpu().contiguous().numpy()), []).append(i)
    exact = [g for g in by_key.values() if len(g) > 1]
    names = list(getattr(dataset, "class_names", None) or [])
    for g in exact:
        if len({int(labels[i]) for i in g}) > 1:
            lab = ", ".join(f"{ids[i]}={names[labels[i]] if names else labels[i]}" for i in g[:4])
            raise DataError(
                f"identical images with conflicting labels ({lab}); fix the labels or remove the copies",
                path=(getattr(dataset, "meta", None) or {}).get("path"),
            )
    near: list[list[int]] = []
    if near_duplicates:
        by_hash: dict[bytes, list[int]] = {}
        for i in range(len(labels)):
            by_hash.setdefault(_average_hash(images[i].detach().cpu()), []).append(i)
        near = [g for g in by_hash.values() if len(g) > 1]
    return {"exact": exact, "near": near}


def merge_groups(n: int, groups: Sequence[str] | None, ids: Sequence[str], extra: list[list[int]]) -> list[str]:
    """Union of the given groups (patients; each sample alone when None) with ``extra`` index groups: every
    connected set of samples gets one group id (its first member's), so a split keeps it on one side."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    if groups is not None:
        first: dict[str, int] = {}
        for i, g in enumerate(groups):
            union(first.setdefault(str(g), i), i)
    for g in extra:
        for i in g[1:]:
            union(g[0], i)
    base = [str(g) for g in groups] if groups is not None else [str(x) for x in ids]
    return [base[find(i)] for i in range(n)]


def stratified_split(
    dataset: Any, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
    group_duplicates: bool = False, near_duplicates: bool = False, stats: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Stratified (and, if ``dataset.groups`` is set, group-disjoint) train/val/test indices.

    Returns ``{"train": idx, "val": idx, "test": idx}`` (sorted int64 arrays, disjoint, covering
    the dataset). Deterministic for a given ``seed``. With ``group_duplicates`` (``downstream`` and the
benchmark's :func:`medbalance.experiments.downstream.make_split` always set it) every group of
    identical images (and, with ``near_duplicates``, of equal perceptual hashes) is kept on one side, like a
    patient group; identical images with conflicting labels are bad input (:class:`DataError`). ``stats``
    (a dict) receives ``groups`` / ``images`` / ``near_duplicate_groups``: how many were grouped.
    """
    groups = getattr(dataset, "groups", None)
    dup = {"exact": [], "near": []}
    if group_duplicates and getattr(dataset, "images", None) is not None and len(dataset.labels):
        dup = duplicate_groups(dataset, near_duplicates)
        if dup["exact"] or dup["near"]:
            ids = list(getattr(dataset, "ids", [str(i) for i in range(len(dataset.labels))]))
            groups = merge_groups(len(ids), groups, ids, dup["exact"] + dup["near"])
    if stats is not None:
        stats.update(groups=len(dup["exact"]), images=sum(len(g) for g in dup["exact"]),
                     near_duplicate_groups=len(dup["near"]))
    return split_indices(
        dataset.labels,
        groups=groups,
        fractions=fractions,
        seed=seed,
        class_names=getattr(dataset, "class_names", None),
        path=(getattr(dataset, "meta", None) or {}).get("path"),
    )


def split_train_heldout(dataset: Any, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The generator's training / held-out split (``train.val_fraction``): (train, held-out, description) indices.

    Stratified by class; when the dataset has groups (patients), whole groups are held out
    (each group stratified by its majority class) so no patient straddles the split. Identical images
    (by content) count as one group too, so a copy of a training image is never held out. Per class
    ``round(val_fraction * n_class)`` units are held out, always leaving at least one in train.
    """
    n = len(dataset)
    if val_fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64), "none"
    rng = np.random.default_rng(stream_seed(seed, "generator_heldout_split"))
    labels = dataset.labels.numpy()
    groups_in = dataset.groups
    copies = duplicate_groups(dataset)["exact"]
    if copies:  # datasets without copies keep exactly the split they had
        groups_in = merge_groups(n, dataset.groups, dataset.ids, copies)
    if groups_in is not None:
        groups = np.asarray(groups_in, dtype=object)
        uniq, inv = np.unique(groups.astype(str), return_inverse=True)
        counts = np.zeros((len(uniq), dataset.num_classes), dtype=np.int64)
        np.add.at(counts, (inv, labels), 1)
        unit_label = counts.argmax(1)
        kind = "group-stratified" + (f" ({len(copies)} groups of identical images kept together)" if copies else "")
    else:
        inv = np.arange(n)
        unit_label = labels
        kind = "stratified"
    held_units = []
    for c in range(dataset.num_classes):
        units = np.flatnonzero(unit_label == c)
        k = min(round(val_fraction * len(units)), max(len(units) - 1, 0))
        if k > 0:
            held_units.append(rng.permutation(units)[:k])
    held_mask_units = np.zeros(len(unit_label), dtype=bool)
    if held_units:
        held_mask_units[np.concatenate(held_units)] = True
    held = held_mask_units[inv]
    return np.flatnonzero(~held), np.flatnonzero(held), kind


def split_train_val(dataset: Any, val_fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, val) subsets of ``dataset`` for training a task model (``medbalance train-task``): a
    :func:`stratified_split` with fractions ``(1 - val_fraction, val_fraction, 0)``, group-disjoint for patients
    and identical images. ``val`` is None when ``val_fraction`` is 0."""
    if val_fraction <= 0:
        return dataset, None
    parts = stratified_split(dataset, fractions=(1 - val_fraction, val_fraction, 0.0), seed=seed, group_duplicates=True)
    return dataset.subset(parts["train"]), dataset.subset(parts["val"])


def split_counts(splits: dict[str, np.ndarray], labels: Any, class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per-split class counts, e.g. for logging ``{"train": {"glioma": 998, ...}, ...}``."""
    y = _as_numpy(labels)
    return {
        k: {name: int(c) for name, c in zip(class_names, np.bincount(y[v], minlength=len(class_names)))}
        for k, v in splits.items()
    }


def subsample_class(
    indices: Any, labels: Any, class_index: int, fraction: float, seed: int = 0
) -> np.ndarray:
    """Keep every index of other classes and a seeded random ``fraction`` of ``class_index``.

    ``labels`` are the labels of the whole dataset (indexed by ``indices``). At least one sample
    of the class is kept. Returns sorted int64 indices.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    idx = np.asarray(indices, dtype=np.int64)
    y = _as_numpy(labels)[idx]
    sel = idx[y == class_index]
    if sel.size == 0:
        raise DataError(f"class index {class_index} has no samples among the given indices")
    keep = max(1, int(round(fraction * sel.size)))
    chosen = np.random.default_rng(seed).choice(sel, size=keep, replace=False)
    return np.sort(np.concatenate([idx[y != class_index], chosen]))


__all__ = [
    "SPLIT_NAMES", "allocate", "duplicate_groups", "merge_groups", "split_counts", "split_indices", "split_train_heldout",
    "split_train_val", "stratified_split", "subsample_class",
]
