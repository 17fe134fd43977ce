"""Nearest neighbours in feature or pixel space (shared by evaluation and the synthesis filters).

:func:`knn` finds the ``k`` nearest reference rows of every query row with blocked matrix
products (``||a||^2 - 2 a.b + ||b||^2``). The scan ranks ``||b||^2 - 2 a.b`` (one fused float32 ``addmm``;
``||a||^2`` does not change a row's ranking);
the best ``k + margin`` candidates of every query are then re-ranked with distances computed
exactly in float64 from the differences ``a - b``, so exact duplicates get distance 0 and the
float32 cancellation error cannot reorder the returned neighbours (unless more than ``margin``
candidates fall within that error of each other, which cannot change the returned distances
by more than that error).
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    return t.detach().reshape(t.shape[0], -1).cpu()


def knn(
    query: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    k: int = 1,
    *,
    exclude_self: bool = False,
    block: int = 1024,
    margin: int = 4,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances (float64, ascending) and indices of the ``k`` nearest ``ref`` rows.

    ``exclude_self``: ``query`` *is* ``ref`` (same rows, same order) and row ``i`` must not be
    its own neighbour. Returns arrays of shape ``(len(query), k)``.
    """
    q = _as_tensor(query)
    r = _as_tensor(ref)
    nq, nr = q.shape[0], r.shape[0]
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query has {q.shape[1]} features, ref {r.shape[1]}")
    avail = nr - (1 if exclude_self else 0)
    if k < 1 or k > avail:
        raise ValueError(f"k={k} neighbours requested from {avail} reference rows")
    kc = min(k + margin, avail)
    q32, r32 = q.float(), r.float()
    rn = (r32 * r32).sum(1)[None, :]
    out_d = np.empty((nq, k), dtype=np.float64)
    out_i = np.empty((nq, k), dtype=np.int64)
    starts = range(0, nq, block)
    if progress:
        from medbalance.utils.progress import track

        starts = track(starts, progress, total=len(starts))
    for s in starts:
        e = min(s + block, nq)
        # ||r||^2 - 2 q.r in one fused matmul: ||q||^2 is constant per row and does not change the ranking
        d2 = torch.addmm(rn, q32[s:e], r32.T, beta=1.0, alpha=-2.0)
        if exclude_self:
            rows = torch.arange(e - s)
            d2[rows, rows + s] = float("inf")
        cand = torch.topk(d2, kc, dim=1, largest=False).indices  # (b, kc)
        # exact float64 recheck of the candidates, in small chunks to bound memory
        exact = torch.empty(cand.shape, dtype=torch.float64)
        step = max(1, (1 << 24) // max(1, kc * q.shape[1]))
        for cs in range(0, e - s, step):
            ce = min(cs + step, e - s)
            diff = q[s + cs : s + ce, None, :].double() - r[cand[cs:ce]].double()
            exact[cs:ce] = (diff * diff).sum(-1)
        order = torch.argsort(exact, dim=1, stable=True)[:, :k]
        out_d[s:e] = exact.gather(1, order).sqrt().numpy()
        out_i[s:e] = cand.gather(1, order).numpy()
    return out_d, out_i


def ball_counts(
    query: np.ndarray | torch.Tensor,
    centers: np.ndarray | torch.Tensor,
    radii: np.ndarray,
    *,
    block: int = 1024,
) -> np.ndarray:
    """For every query row, the number of balls ``B(centers[j], radii[j])`` (closed) containing it.

    Computed in float64 (exact enough that points on a sphere's surface count as inside).
    """
    q = _as_tensor(query).double()
    c = _as_tensor(centers).double()
    r2 = torch.as_tensor(np.asarray(radii, dtype=np.float64)) ** 2
    cn = (c * c).sum(1)
    out = np.empty(q.shape[0], dtype=np.int64)
    for s in range(0, q.shape[0], block):
        qb = q[s : s + block]
        d2 = ((qb * qb).sum(1, keepdim=True) - 2.0 * (qb @ c.T) + cn[None, :]).clamp_min_(0)
        tol = 1e-9 * (r2[None, :] + 1.0)
        out[s : s + qb.shape[0]] = (d2 <= r2[None, :] + tol).sum(1).numpy()
    return out
