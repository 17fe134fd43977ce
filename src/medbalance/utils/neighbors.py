"""Nearest neighbours and ball memberships in feature or pixel space (shared by evaluation and the synthesis filters).

Every function scans the squared distances ``||a||^2 - 2 a.b + ||b||^2`` block by block with float32 matrix
products (NumPy's BLAS; on the 2-core AMD test machine its sgemm ran 1.4-2x faster than PyTorch's), so memory
holds one block of distances at a time, and then settles in float64, from the differences ``a - b``, every
answer that the float32 rounding could change:

- :func:`knn`: the best ``k + margin`` float32 candidates of every query are re-ranked with exact float64
  distances (ties broken by the lower index), so exact duplicates get distance 0 and the float32 error cannot
  reorder the returned neighbours. A rigorous bound on that error (see :func:`_gamma2`) skips the recomputation
  of candidates that cannot be among the ``k`` nearest, and proves, row by row, that no row outside the
  candidates can be; where it cannot (more than ``margin`` rows within the error of each other), the result can
  be off by at most that error, as without the bound. With ``exclude_self`` the scan is symmetric: every
  product serves both rows, so half of them are computed.
- :func:`knn_pair`: ``knn(a, b)`` and ``knn(b, a)`` from one scan (each product computed once).
- :func:`ball_counts`: closed-ball memberships between two sets, for several radius vectors at once. A pair is
  decided in float32 when a rigorous bound on the float32 error (about ``(d + 16) 2^-24 (||a||^2 + ||b||^2)``
  after centring) keeps it clear of the ball's surface, and from its float64 difference otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medbalance.errors import DataError

_U32 = 2.0**-24  # unit roundoff of float32


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    return t.detach().reshape(t.shape[0], -1).cpu()


def _np32(ts: Sequence[torch.Tensor], names: Sequence[str]) -> list[np.ndarray]:
    """Float32 C-contiguous copies (views where already float32) of the row matrices ``ts``, checked finite.

    When none of them is float32, the copies are made anyway and are centred on the last one's mean: distances do
    not change, and the smaller float32 magnitudes shrink the rounding error (and the error bound)."""
    centre = all(t.dtype != torch.float32 for t in ts)
    mu = ts[-1].double().mean(0).numpy() if centre and ts[-1].shape[0] else None
    out = []
    for t, name in zip(ts, names):
        if mu is not None:
            a = np.empty(tuple(t.shape), dtype=np.float32)
            for s in range(0, t.shape[0], 4096):
                a[s : s + 4096] = t[s : s + 4096].double().numpy() - mu
        else:
            a = np.ascontiguousarray(t.numpy() if t.dtype == torch.float32 else t.float().numpy())
        if not np.isfinite(a).all():
            raise DataError(f"{name} contains NaN or infinite values (or values beyond the float32 range)")
        out.append(a)
    return out


def _sqnorms32(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


class _Best:
    """Running ``kc`` smallest values (and their column indices) of every row."""

    def __init__(self, n: int, kc: int):
        self.kc = kc
        self.v = torch.full((n, kc), float("inf"))
        self.i = torch.full((n, kc), -1, dtype=torch.int64)

    def push(self, row0: int, vals: torch.Tensor, col0: int) -> None:
        v, i = torch.topk(vals, min(self.kc, vals.shape[1]), dim=1, largest=False)
        rows = slice(row0, row0 + vals.shape[0])
        cv = torch.cat([self.v[rows], v], 1)
        ci = torch.cat([self.i[rows], i + col0], 1)
        keep = torch.topk(cv, self.kc, dim=1, largest=False).indices
        self.v[rows] = cv.gather(1, keep)
        self.i[rows] = ci.gather(1, keep)


def _gamma2(dim: int) -> float:
    """``2 gamma_(dim+16)``: with ``g = (dim + 16) 2^-24``, ``2 g / (1 - g)``; bounds (with room) the float32 error
    of a squared distance ``|a|^2 + |b|^2 - 2 a.b`` of length ``dim`` relative to ``|a|^2 + |b|^2``, including the
    rounding of float64 points to float32."""
    g = (dim + 16) * _U32
    if g >= 0.1:
        raise ValueError(f"float32 distance scans support up to {int(0.1 / _U32) - 16} features, got {dim}")
    return 2.0 * g / (1.0 - g)


def _scan(
    a32: np.ndarray, b32: np.ndarray, kc_a: int, kc_b: int, *, same: bool, block: int, progress: str | None
) -> tuple[_Best, _Best | None, np.ndarray, np.ndarray]:
    """Float32 candidates: the ``kc_a`` nearest ``b`` rows of every ``a`` row (and ``kc_b`` nearest ``a`` rows of
    every ``b`` row). ``same``: ``a`` is ``b``, a row is not its own candidate, and only the tiles on and above
    the diagonal are computed (each serves its rows and its columns). A row's values are its squared distances,
    less its own squared norm when only rows are wanted. Also returns the float32 squared norms of both sets."""
    na, nb = a32.shape[0], b32.shape[0]
    cols = same or kc_b > 0
    an = _sqnorms32(a32)
    bn = an if same else _sqnorms32(b32)
    width = 4 * block if cols else nb  # narrower tiles make the products slower
    best_a = _Best(na, kc_a)
    best_b = best_a if same else (_Best(nb, kc_b) if kc_b > 0 else None)
    starts = range(0, na, block)
    if progress:
        from medbalance.utils.progress import track

        starts = track(starts, progress, total=len(starts))
    # buffers reused by every block (fresh tens-of-MB arrays cost a page fault per 4 KiB each time)
    abuf = np.empty((min(block, na), a32.shape[1]), dtype=np.float32)
    dbuf = np.empty(min(block, na) * min(width, nb), dtype=np.float32)
    for s in starts:
        e = min(s + block, na)
        am2 = np.multiply(a32[s:e], np.float32(-2.0), out=abuf[: e - s])
        for t in range(s if same else 0, nb, width):
            u = min(t + width, nb)
            d = np.matmul(am2, b32[t:u].T, out=dbuf[: (e - s) * (u - t)].reshape(e - s, u - t))  # -2 a.b
            d += bn[None, t:u]
            if cols:
                d += an[s:e, None]  # the full squared distance: rows and columns rank the same numbers
            skip = 0
            if same and t == s:
                np.fill_diagonal(d, np.inf)
                skip = e - s  # the square block's columns are this block's rows, already served by the row push
            dt = torch.from_numpy(d)
            best_a.push(s, dt, t)
            if best_b is not None and u - t > skip:
                best_b.push(t + skip, dt[:, skip:].T.contiguous(), s)
    return best_a, (best_b if not same else None), an, bn


def _exact(
    q: torch.Tensor, r: torch.Tensor, qn32: np.ndarray, rn32: np.ndarray, best: _Best, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 distances from every ``q`` row to its candidate ``r`` rows; the ``k`` nearest, ties to the lower index.

    Candidates that the float32 error bound rules out (lower bound above the k-th smallest upper bound) are not
    recomputed. When even the farthest candidate's lower bound (with the largest reference norm) is above that,
    no row outside the candidates can be nearer either, and the result is exact; otherwise it rests on the margin.
    """
    g = _gamma2(q.shape[1])
    c = 2.0 * g  # the scan values carry up to three float32 norms and two additions
    # float32 norms are within gamma_d of the true ones: inflate them into upper bounds
    qn, rn = (torch.from_numpy(x.astype(np.float64) * (1.0 + g)) for x in (qn32, rn32))
    cand, pos = torch.sort(best.i, dim=1)  # index order first, so the stable sort below breaks ties by index
    v = best.v.gather(1, pos).double()
    err = c * (qn[:, None] + rn[cand])
    upper = torch.kthvalue(v + err, k, dim=1).values[:, None]
    keep = (v - err) <= upper
    open_rows = (v.amax(1, keepdim=True) - c * (qn[:, None] + rn.max())) <= upper
    keep |= open_rows
    rows, slots = keep.nonzero(as_tuple=True)
    exact = torch.full(cand.shape, float("inf"), dtype=torch.float64)
    flat = torch.empty(rows.shape[0], dtype=torch.float64)
    step = max(1, min(rows.shape[0], (1 << 21) // max(1, q.shape[1])))
    gbuf = torch.empty((step, q.shape[1]), dtype=r.dtype)  # reused: no page faults per chunk
    qbuf = torch.empty((step, q.shape[1]), dtype=q.dtype)
    diff = torch.empty((step, q.shape[1]), dtype=torch.float64)
    for s in range(0, rows.shape[0], step):
        n = min(step, rows.shape[0] - s)
        torch.index_select(r, 0, cand[rows[s : s + n], slots[s : s + n]], out=gbuf[:n])
        torch.index_select(q, 0, rows[s : s + n], out=qbuf[:n])
        diff[:n].copy_(gbuf[:n])
        diff[:n] -= qbuf[:n]  # in float64
        torch.linalg.vector_norm(diff[:n], dim=-1, out=flat[s : s + n])
    exact[rows, slots] = flat
    order = torch.argsort(exact, dim=1, stable=True)[:, :k]
    return exact.gather(1, order).numpy(), cand.gather(1, order).numpy()


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

    ``exclude_self``: ``query`` *is* ``ref`` (same rows, same order; only ``query`` is read) and row ``i`` must
    not be its own neighbour. Returns arrays of shape ``(len(query), k)``.
    """
    q = _as_tensor(query)
    r = q if exclude_self else _as_tensor(ref)
    nr = r.shape[0]
    if exclude_self and tuple(_as_tensor(ref).shape) != tuple(q.shape):
        raise ValueError("exclude_self needs query and ref to be the same rows")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query has {q.shape[1]} features, ref {r.shape[1]}")
    avail = nr - (1 if exclude_self else 0)
    if k < 1 or k > avail:
        raise ValueError(f"k={k} neighbours requested from {avail} reference rows")
    q32, r32 = (_np32([q], ["query"]) * 2) if exclude_self else _np32([q, r], ["query", "ref"])
    best, _, qn, rn = _scan(q32, r32, min(k + margin, avail), 0, same=exclude_self, block=block, progress=progress)
    return _exact(q, r, qn, rn, best, k)


def knn_pair(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    k: int = 1,
    *,
    block: int = 1024,
    margin: int = 4,
    progress: str | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``(knn(a, b, k), knn(b, a, k))`` from one scan of the ``a`` x ``b`` distances."""
    ta, tb = _as_tensor(a), _as_tensor(b)
    if ta.shape[1] != tb.shape[1]:
        raise ValueError(f"a has {ta.shape[1]} features, b {tb.shape[1]}")
    if k < 1 or k > min(ta.shape[0], tb.shape[0]):
        raise ValueError(f"k={k} neighbours requested from {ta.shape[0]} and {tb.shape[0]} rows")
    a32, b32 = _np32([ta, tb], ["a", "b"])
    best_a, best_b, an, bn = _scan(a32, b32, min(k + margin, tb.shape[0]), min(k + margin, ta.shape[0]),
                                   same=False, block=block, progress=progress)
    return _exact(ta, tb, an, bn, best_a, k), _exact(tb, ta, bn, an, best_b, k)


def _f64rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1)


def _pair_sqdist(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``||a[i] - b[j]||^2`` in float64 from the differences, in chunks."""
    out = np.empty(len(i), dtype=np.float64)
    step = max(1, (1 << 22) // max(1, a.shape[1]))
    for s in range(0, len(i), step):
        diff = a[i[s : s + step]] - b[j[s : s + step]]
        out[s : s + step] = np.einsum("ij,ij->i", diff, diff)
    return out


def _sqnorms64(x32: np.ndarray) -> np.ndarray:
    out = np.empty(x32.shape[0], dtype=np.float64)
    for s in range(0, x32.shape[0], 4096):
        c = x32[s : s + 4096].astype(np.float64)
        out[s : s + 4096] = np.einsum("ij,ij->i", c, c)
    return out


def _threshold(radii: np.ndarray, n: int, what: str) -> np.ndarray:
    r = np.asarray(radii, dtype=np.float64).reshape(-1)
    if r.shape[0] != n:
        raise ValueError(f"{what}: {r.shape[0]} radii for {n} centres")
    r2 = r * r
    return r2 + 1e-9 * (r2 + 1.0)  # closed ball, with room for float64 rounding on the surface


def ball_counts(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    *,
    a_radii: Sequence[np.ndarray] = (),
    b_radii: Sequence[np.ndarray] = (),
    block: int = 1024,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """Closed-ball memberships between the rows of ``a`` and ``b``, from one blocked scan.

    For every radius vector ``r`` in ``b_radii`` (balls ``B(b_j, r_j)``) the first list holds ``(a_in, b_pop)``:
    per ``a`` row the number of those balls containing it, per ball the number of ``a`` rows inside. For every
    ``r`` in ``a_radii`` (balls ``B(a_i, r_i)``) the second list holds ``(b_in, a_pop)`` likewise. A point is
    inside when its squared distance is at most ``r^2 + 1e-9 (r^2 + 1)``.
    """
    A, B = _f64rows(a), _f64rows(b)
    na, nb, dim = A.shape[0], B.shape[0], A.shape[1]
    if B.shape[1] != dim:
        raise ValueError(f"a has {dim} features, b {B.shape[1]}")
    tb = [_threshold(r, nb, "b_radii") for r in b_radii]
    ta = [_threshold(r, na, "a_radii") for r in a_radii]
    out_b = [(np.zeros(na, np.int64), np.zeros(nb, np.int64)) for _ in tb]
    out_a = [(np.zeros(nb, np.int64), np.zeros(na, np.int64)) for _ in ta]
    if na == 0 or nb == 0 or not (tb or ta):
        return out_b, out_a
    # centre on b's mean (distances do not change; the float32 magnitudes, and so the error bound, shrink)
    mu = B.mean(0)
    a32, b32 = np.empty((na, dim), np.float32), np.empty((nb, dim), np.float32)
    for x, x32 in ((A, a32), (B, b32)):
        for s in range(0, x.shape[0], 4096):
            x32[s : s + 4096] = x[s : s + 4096] - mu
    if not (np.isfinite(a32).all() and np.isfinite(b32).all()):
        raise DataError("ball_counts: the points contain NaN or infinite values (or values beyond the float32 range)")
    an, bn = _sqnorms64(a32), _sqnorms64(b32)
    # ``v`` below is the float32 squared distance lowered by c (|a|^2 + |b|^2); its own float32 error is at most
    # half of that (dot product of length dim, the norms, two additions, the rounding of the centred points), so
    # v <= true d^2 <= v + 1.5 c (|a|^2 + |b|^2).
    c = _gamma2(dim)
    lo_a, lo_b = ((1.0 - c) * an).astype(np.float32), ((1.0 - c) * bn).astype(np.float32)
    # float32 cut-offs rounded up, so that no pair inside a ball is dropped
    cut_b = np.nextafter(np.max(tb, axis=0).astype(np.float32), np.float32(np.inf)) if tb else None
    cut_a = np.nextafter(np.max(ta, axis=0).astype(np.float32), np.float32(np.inf)) if ta else None
    width = max(block, (1 << 24) // max(1, block))
    abuf = np.empty((min(block, na), dim), dtype=np.float32)
    vbuf = np.empty(min(block, na) * min(width, nb), dtype=np.float32)
    for s in range(0, na, block):
        e = min(s + block, na)
        am2 = np.multiply(a32[s:e], np.float32(-2.0), out=abuf[: e - s])
        for t in range(0, nb, width):
            u = min(t + width, nb)
            v = np.matmul(am2, b32[t:u].T, out=vbuf[: (e - s) * (u - t)].reshape(e - s, u - t))
            v += lo_b[None, t:u]
            v += lo_a[s:e, None]
            vt = torch.from_numpy(v)
            mask = vt <= torch.from_numpy(cut_b[None, t:u]) if cut_b is not None else None
            if cut_a is not None:
                m_a = vt <= torch.from_numpy(cut_a[s:e, None])
                mask = m_a if mask is None else mask.logical_or_(m_a)
            ii, jj = (x.numpy() for x in torch.nonzero(mask, as_tuple=True))
            if ii.size == 0:
                continue
            gi, gj = ii + s, jj + t
            low = v[ii, jj].astype(np.float64)
            high = low + 1.5 * c * (an[gi] + bn[gj])
            sets = [(thr[gj], res, gi, gj) for thr, res in zip(tb, out_b)]
            sets += [(thr[gi], res, gj, gi) for thr, res in zip(ta, out_a)]
            unsure = np.zeros(ii.size, dtype=bool)
            for thr, *_ in sets:
                unsure |= (low <= thr) & (high > thr)
            exact = np.full(ii.size, np.inf)
            n_unsure = int(unsure.sum())
            if n_unsure > max(1 << 16, v.size // 64):
                # many pairs on ball surfaces (e.g. repeated points): one float64 product of the block is cheaper
                ac, bc = A[s:e] - mu, B[t:u] - mu
                d64 = (ac * ac).sum(1)[:, None] + (bc * bc).sum(1)[None, :] - 2.0 * (ac @ bc.T)
                exact[unsure] = d64[ii[unsure], jj[unsure]]
            elif n_unsure:
                exact[unsure] = _pair_sqdist(A, B, gi[unsure], gj[unsure])
            for thr, (member_in, pop), members, centres in sets:
                inside = np.where(unsure, exact <= thr, high <= thr)
                member_in += np.bincount(members[inside], minlength=member_in.shape[0])
                pop += np.bincount(centres[inside], minlength=pop.shape[0])
    return out_b, out_a
