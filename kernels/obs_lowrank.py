"""Layer-wise OBS paths on a low-rank Hessian (B. Hassibi, D. G. Stork, NIPS 1992; E. Frantar, D. Alistarh,
"Optimal Brain Compression", NeurIPS 2022), for a layer with fewer input rows S than inputs D.

Every row of a layer runs the greedy OBS path on ``H = lam I + Z^T Z`` (Z shape (S, D); OBC's ``H = 2 X^T X``
damped, so ``Z = sqrt(2) X``). The inverse is never formed: on the surviving inputs R (Woodbury) ::

    [H_RR]^-1 = (1/lam) (I - Z_R^T P Z_R),   P = (lam I_S + Z_R Z_R^T)^-1   (S x S)

so its column q is ``c = (1/lam) (e_q - Z_R^T P z_q)``, and one removal is ::

    # OBS: L_q = w_q^2 / (2 [H^-1]_qq)                 the cost; q = argmin over R
    # OBS: dw  = -(w_q / [H^-1]_qq) H^-1 e_q            w -= (w_q / d_q) c
    #      H^-1 <- H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq   diagonal: d -= c^2 / d_q
    #      P <- P + v v^T / (lam d_q),  v = P z_q           q leaves R (Sherman-Morrison)

O(S D) per removal instead of the O(D^2) downdate of a dense inverse. The kernel takes one row at a time
(its w, d, P stay in cache); the NumPy twin :func:`obs_lowrank_paths_ref` takes all rows at once, a step at
a time, with whole-array operations and BLAS. Both choose q as ``np.argmin`` does (the first minimum; a NaN
cost wins, and then fails the positivity check), so they make the same removals up to rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refdns.errors import SingularHessianError


def _start(Z: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """P0 = (lam I + Z Z^T)^-1 (symmetrised) and the diagonal of H^-1 over all inputs."""
    P0 = np.linalg.inv(lam * np.eye(len(Z)) + Z @ Z.T)
    P0 = 0.5 * (P0 + P0.T)
    return P0, (1.0 - np.einsum("si,st,ti->i", Z, P0, Z)) / lam


# error_model "numpy": IEEE division, as in the twin (a zero diagonal gives an inf cost, then fails the check)
@njit(cache=True, error_model="numpy")
def _paths(W, ZT, lam, P0, d0, steps, costs, order, fail):
    # W (R, D), ZT (D, S) (Z transposed: input i's z_i contiguous), P0 (S, S), d0 (D,) float64; costs (R, D)
    # float64 filled with inf; order (R, steps) int64; fail (3,) float64: (row, step, d_q) of a non-positive
    # [H^-1]_qq, row -1 if none. One row at a time: its w, d, P stay in cache.
    R, D = W.shape
    S = ZT.shape[1]
    w = np.empty(D)
    d = np.empty(D)
    P = np.empty((S, S))
    v = np.empty(S)
    alive = np.empty(D, dtype=np.bool_)
    inv_lam = 1.0 / lam
    for r in range(R):
        w[:] = W[r]
        d[:] = d0
        P[:, :] = P0
        alive[:] = True
        for t in range(steps):
            q = -1
            best = np.inf
            for i in range(D):
                if alive[i]:
                    L = w[i] * w[i] / (2.0 * d[i])  # OBS: L_q = w_q^2 / (2 [H^-1]_qq)
                    if L != L:  # NaN: np.argmin's choice
                        q = i
                        best = L
                        break
                    if q < 0 or L < best:
                        q = i
                        best = L
            dq = d[q]
            if not dq > 0:
                fail[0] = r
                fail[1] = t
                fail[2] = dq
                return
            costs[r, t] = best
            order[r, t] = q
            for s in range(S):
                acc = 0.0
                for u in range(S):
                    acc += P[s, u] * ZT[q, u]
                v[s] = acc  # v = P z_q
            coef = w[q] / dq
            inv_dq = 1.0 / dq  # multiplications in the D loop: a division there was most of its time
            for i in range(D):
                if alive[i] and i != q:
                    acc = 0.0
                    for s in range(S):
                        acc += ZT[i, s] * v[s]
                    c = -acc * inv_lam  # [H_RR^-1]_iq
                    w[i] -= coef * c  # OBS: dw = -(w_q / [H^-1]_qq) H^-1 e_q
                    d[i] -= c * c * inv_dq
            w[q] = 0.0
            alive[q] = False
            k = 1.0 / (lam * dq)
            for s in range(S):
                for u in range(S):
                    P[s, u] += v[s] * v[u] * k


def _check(W, Z, lam, steps) -> None:
    for name, x in (("W", W), ("Z", Z)):
        if not isinstance(x, np.ndarray) or x.dtype != np.float64 or x.ndim != 2:
            raise TypeError(f"{name}: expected a 2-D float64 ndarray, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if Z.shape[1] != W.shape[1]:
        raise ValueError(f"Z.shape={Z.shape}: expected (S, {W.shape[1]}), W's inputs")
    if not (isinstance(lam, float) and np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam={lam!r} must be a finite float > 0")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= W.shape[1]:
        raise ValueError(f"steps={steps!r} must be an integer in [0, {W.shape[1]}]")


def _singular(row: int, dq: float, layer: str | None) -> SingularHessianError:
    where = f" of layer {layer!r}" if layer else ""
    return SingularHessianError(f"[H^-1]_qq = {dq} in layer-wise OBS{where} (row {row}); raise the damping",
                                layer=layer)


def obs_lowrank_paths(W: np.ndarray, Z: np.ndarray, lam: float, steps: int, *,
                      layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every row's first ``steps`` OBS removals on ``H = lam I + Z^T Z``.

    Parameters
    ----------
    W : ndarray, shape (R, D), float64
        The layer's weights, one path per row.
    Z : ndarray, shape (S, D), float64
        A factor of the Hessian's low-rank part, ``Z^T Z`` (OBC: ``sqrt(2) X``).
    lam : float, > 0
        The damping on the diagonal.
    steps : int in [0, D]
    layer : str, optional
        Named in the error.

    Returns
    -------
    costs : ndarray, shape (R, D), float64
        Each removal's cost ``L_q`` in path order (inf past ``steps``).
    order : ndarray, shape (R, steps), int64
        The inputs removed, in path order.

    Raises
    ------
    SingularHessianError
        If a chosen ``[H^-1]_qq`` is not positive (damping too small for the rounding).
    """
    _check(W, Z, lam, steps)
    R, D = W.shape
    P0, d0 = _start(Z, lam)
    costs = np.full((R, D), np.inf)
    order = np.zeros((R, steps), dtype=np.int64)
    fail = np.array([-1.0, -1.0, 0.0])
    _paths(np.ascontiguousarray(W), np.ascontiguousarray(Z.T), lam, P0, d0, steps, costs, order, fail)
    if fail[0] >= 0:
        raise _singular(int(fail[0]), float(fail[2]), layer)
    return costs, order


def obs_lowrank_paths_ref(W: np.ndarray, Z: np.ndarray, lam: float, steps: int, *,
                          layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The NumPy twin of :func:`obs_lowrank_paths`: all rows at once, one removal per step, whole arrays."""
    _check(W, Z, lam, steps)
    R, D = W.shape
    S = Z.shape[0]
    P0, d0 = _start(Z, lam)
    w = np.array(W, dtype=np.float64, copy=True)
    d = np.repeat(d0[None, :], R, axis=0)  # diag [H^-1] per row
    P = np.repeat(P0[None], R, axis=0)  # (R, S, S)
    alive = np.ones((R, D), dtype=bool)
    live = np.ones((R, D))  # alive as 0/1 floats
    costs = np.full((R, D), np.inf)
    order = np.zeros((R, steps), dtype=np.int64)
    rows = np.arange(R)
    # preallocated (R, D) buffers: fresh temporaries of this size cost a page-faulting allocation each, which
    # was measured to take longer than the arithmetic
    L, c, buf = np.empty((R, D)), np.empty((R, D)), np.empty((R, D))
    for t in range(steps):
        np.multiply(w, w, out=buf)
        np.multiply(d, 2.0, out=L)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(buf, L, out=L)  # OBS: L_q = w_q^2 / (2 [H^-1]_qq)
        L[~alive] = np.inf
        q = np.argmin(L, axis=1)
        dq = d[rows, q]
        if not np.all(dq > 0):
            r = int(np.argmin(np.where(dq > 0, np.inf, 0.0)))
            raise _singular(r, float(dq[r]), layer)
        costs[:, t] = L[rows, q]
        order[:, t] = q
        wq = w[rows, q]
        v = np.einsum("rst,sr->rt", P, Z[:, q])  # P z_q, (R, S)
        if S == 1:
            np.multiply(v, Z, out=c)  # an outer product: BLAS gemm with k = 1 was measured 2x slower
        else:
            np.matmul(v, Z, out=c)
        c *= -1.0 / lam  # column q of [H_RR]^-1 off q
        c[rows, q] = dq
        c *= live  # removed inputs are out of R: zero rows and columns of the Schur complement
        np.multiply(c, (wq / dq)[:, None], out=buf)
        w -= buf  # OBS: dw = -(w_q / [H^-1]_qq) H^-1 e_q
        w[rows, q] = 0.0
        np.multiply(c, c, out=buf)
        buf /= dq[:, None]
        d -= buf  # diag of H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq
        P += v[:, :, None] * v[:, None, :] / (lam * dq)[:, None, None]
        alive[rows, q] = False
        live[rows, q] = 0.0
    return costs, order
