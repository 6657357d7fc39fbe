"""Exact second derivatives of a refdns net's training loss, in float64, through the hand-written layers.

Hessian-vector products use Pearlmutter's R-operator (B. A. Pearlmutter, "Fast exact multiplication by the
Hessian", Neural Computation 6(1), 1994): with ``R{f} = d/dr f(w + r v) |_{r=0}``,

    H v = R{grad L(w)}

obtained by one forward pass that carries ``R{activation}`` beside every activation and one backward pass
that carries ``R{dL/d activation}`` beside every gradient ("forward-over-backward"). No autograd library:
every op's R-rules are written beside its forward and backward in the op table (:mod:`refdns.nets.ops`,
``r_forward`` / ``r_backward``), and because dense and conv layers are *bilinear* in (input, weight) they are
evaluated by calling the layers' own forward/backward with swapped arguments:

    dense/conv   R{out} = f(R{x}, W, 0) + f(x, V, V_b)
                 R{dx}  = R{dout} (*) W + dout (*) V            R{dW} = R{dout} (*) x + dout (*) R{x}
    relu, pool   piecewise linear: R{out} and R{dx} use the same winner / sign pattern as forward and
                 backward (the second derivative is 0 away from the kinks)
    softmax CE   R{dL/dz} = (p * R{z} - p (p . R{z})) / N,
                 i.e. the loss Hessian (diag p - p p^T) / N times R{z}

The full Hessian is assembled from n products with the unit vectors. The Gauss-Newton (outer-product)
matrix ``G = J^T H_L J`` comes from the same passes with the backward restricted to the ``R{dout}`` terms
(Schraudolph 2002), since every other term is a second derivative of the net's output.

OBD's diagonal (Y. LeCun, J. S. Denker, S. A. Solla, "Optimal Brain Damage", NIPS 1990, Sec. 3) is the
backprop-like recursion, in its Gauss-Newton (Levenberg-Marquardt) form, costing one extra backward pass::

    h_kk = sum_{(i,j) in V_k} d2E/dw_ij^2            (shared weights sum over their connections)
    d2E/dw_ij^2 = d2E/da_i^2 * x_j^2
    d2E/da_i^2  = f'(a_i)^2 * sum_l w_li^2 * d2E/da_l^2      (the  - f''(a_i) dE/dx_i  term dropped)

It is a backward pass with squared weights and squared layer inputs, which is how it is computed (each op's
``obd_backward`` in :mod:`refdns.nets.ops`: the layers' own backward functions, fed squared caches). The
output boundary condition is the diagonal of the loss Hessian with respect to the logits:
``p_i (1 - p_i) / N`` for softmax CE, ``1 / N`` for squared error.

Parameters are flattened in ``spec.param_shapes()`` order (layer order, weight then bias; C order inside).
"""

from __future__ import annotations

import numpy as np

from refdns.errors import ConfigError
from refdns.layers import softmax
from refdns.nets.ops import OPS
from refdns.nets.sequential import ForwardCache, NetSpec, backward, check_params, forward

LOSSES = ("softmax_ce", "squared")


# --------------------------------------------------------------------------------------------------------
# Parameter vectors


def param_vector(spec: NetSpec, params: dict[str, np.ndarray]) -> np.ndarray:
    """All parameters as one float64 vector, shape (n,), in ``spec.param_shapes()`` order."""
    check_params(spec, params)
    return np.concatenate([np.asarray(params[k], dtype=np.float64).ravel() for k in spec.param_shapes()])


def param_slices(spec: NetSpec) -> dict[str, slice]:
    """Where each parameter sits in the flat vector of :func:`param_vector`."""
    out, start = {}, 0
    for k, s in spec.param_shapes().items():
        size = int(np.prod(s))
        out[k] = slice(start, start + size)
        start += size
    return out


def vector_to_params(spec: NetSpec, v: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`param_vector`: a dict of float64 arrays (copies) in Caffe layouts."""
    v = np.asarray(v, dtype=np.float64)
    n = spec.n_params()
    if v.shape != (n,):
        raise ValueError(f"v.shape={v.shape}: expected ({n},), the number of parameters of {spec.name}")
    shapes = spec.param_shapes()
    return {k: v[sl].reshape(shapes[k]).copy() for k, sl in param_slices(spec).items()}


def _as64(spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, loss: str):
    if loss not in LOSSES:
        raise ConfigError(f"loss={loss!r} must be one of {LOSSES}")
    check_params(spec, params)
    p64 = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4 or x.shape[1:] != spec.input_shape:
        raise ValueError(f"x has shape {x.shape}, expected (N, {', '.join(map(str, spec.input_shape))})")
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise ValueError(f"y: expected {len(x)} integer labels, got shape {y.shape} dtype {y.dtype}")
    if len(x) == 0:
        raise ValueError("x: expected at least one sample")
    return p64, x, y


# --------------------------------------------------------------------------------------------------------
# Loss and its derivatives with respect to the logits


def _loss_terms(z: np.ndarray, y: np.ndarray, loss: str) -> tuple[float, np.ndarray, np.ndarray | None]:
    """(L, dL/dz, p) for logits z (N, M). ``p`` is the softmax for CE, None for squared error.

    softmax CE: ``L = -mean_n log p[n, y_n]``; squared: ``L = 1/(2N) sum_n ||z_n - onehot(y_n)||^2``.
    """
    N, M = z.shape
    if loss == "softmax_ce":
        p = softmax(z)
        log_p = z - z.max(axis=1, keepdims=True)
        log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        L = float(-log_p[np.arange(N), y].mean())
        dz = p.copy()
        dz[np.arange(N), y] -= 1.0
        return L, dz / N, p
    r = z.copy()
    r[np.arange(N), y] -= 1.0
    return float(0.5 * np.sum(r * r) / N), r / N, None


def _loss_hvp(rz: np.ndarray, p: np.ndarray | None, N: int) -> np.ndarray:
    """``H_L R{z}``: the Hessian of the loss w.r.t. the logits times ``R{z}`` (N, M)."""
    if p is None:  # squared error: H_L = I / N
        return rz / N
    # softmax CE: H_L = (diag(p_n) - p_n p_n^T) / N per sample
    return (p * rz - p * np.sum(p * rz, axis=1, keepdims=True)) / N


# --------------------------------------------------------------------------------------------------------
# Forward with R{.}


def _forward(spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray):
    """Plain forward pass (the training engine's). Returns (logits, per-op caches, per-op inputs)."""
    z, cache = forward(spec, params, x, keep_outputs=True)
    return z, cache.op_caches, (x, *cache.outputs[:-1])


def _r_forward(spec: NetSpec, params, ins, caches, vparams):
    """R-forward along the plain pass's caches. Returns (R{logits}, R{op inputs}, per-op R-caches)."""
    rins, rcaches = [], []
    rh = None  # R{data} = 0; None stands for an exact zero until the first parametric layer
    for op, h, c in zip(spec.ops, ins, caches, strict=True):
        rins.append(rh)
        rh, rc = OPS[op.kind].r_forward(op, params, vparams, h, rh, c)
        rcaches.append(rc)
    return rh, rins, rcaches


# --------------------------------------------------------------------------------------------------------
# Backward with R{.}


def _backward(spec, caches, rins, rcaches, vparams, d, rd, *, gauss_newton: bool) -> dict[str, np.ndarray]:
    """R{dL/dparam} for every parameter, from dL/dz = ``d`` and R{dL/dz} = ``rd``."""
    out: dict[str, np.ndarray] = {}
    first = spec.first_layer_index
    for i in range(len(spec.ops) - 1, first - 1, -1):
        op = spec.ops[i]
        d, rd, r_grads = OPS[op.kind].r_backward(op, caches[i], rins[i], rcaches[i], vparams, d, rd,
                                                  need_dx=i != first, gauss_newton=gauss_newton)
        out.update(r_grads)
    return {k: out[k] for k in spec.param_shapes()}


def _plain_backward(spec, caches, d) -> dict[str, np.ndarray]:
    """dL/dparam from dL/dz = ``d``: the training engine's backward."""
    return backward(spec, d, ForwardCache(tuple(caches), ()))


# --------------------------------------------------------------------------------------------------------
# Public API


def loss_and_gradient(
    spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, loss: str = "softmax_ce"
) -> tuple[float, np.ndarray]:
    """Training loss and its gradient, float64.

    Parameters
    ----------
    spec : NetSpec
    params : dict of ndarray
        Effective parameters (any float dtype; cast to float64).
    x : ndarray, shape (N, C, H, W)
    y : ndarray, shape (N,), int
    loss : {"softmax_ce", "squared"}

    Returns
    -------
    L : float
    g : ndarray, shape (n,), float64
        In :func:`param_vector` order.
    """
    p64, x, y = _as64(spec, params, x, y, loss)
    z, caches, _ = _forward(spec, p64, x)
    L, dz, _ = _loss_terms(z, y, loss)
    g = _plain_backward(spec, caches, dz)
    return L, np.concatenate([g[k].ravel() for k in spec.param_shapes()])


def loss_value(
    spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, loss: str = "softmax_ce"
) -> float:
    """The training loss in float64 (forward only)."""
    p64, x, y = _as64(spec, params, x, y, loss)
    z = _forward(spec, p64, x)[0]
    return _loss_terms(z, y, loss)[0]


def hvp(
    spec: NetSpec,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    *,
    loss: str = "softmax_ce",
    gauss_newton: bool = False,
) -> np.ndarray:
    """Exact Hessian-vector product ``H v`` (or Gauss-Newton ``G v``) of the mean training loss on (x, y).

    Parameters
    ----------
    v : ndarray, shape (n,), float64
        Direction in :func:`param_vector` order.
    gauss_newton : bool
        If True return ``J^T H_L J v`` (the outer-product / Gauss-Newton matrix), which is positive
        semi-definite for both losses.

    Returns
    -------
    hv : ndarray, shape (n,), float64
    """
    p64, x, y = _as64(spec, params, x, y, loss)
    vparams = vector_to_params(spec, v)
    z, caches, ins = _forward(spec, p64, x)
    rz, rins, rcaches = _r_forward(spec, p64, ins, caches, vparams)
    _, dz, p = _loss_terms(z, y, loss)
    rdz = _loss_hvp(rz, p, len(x))
    r = _backward(spec, caches, rins, rcaches, vparams, dz, rdz, gauss_newton=gauss_newton)
    return np.concatenate([r[k].ravel() for k in spec.param_shapes()])


def full_hessian(
    spec: NetSpec,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    loss: str = "softmax_ce",
    gauss_newton: bool = False,
    symmetrize: bool = False,
) -> np.ndarray:
    """The n x n Hessian (or Gauss-Newton matrix) from n products with the unit vectors.

    Column k is ``H e_k``. The result is symmetric up to rounding (tests measure how closely); with
    ``symmetrize`` the two triangles are averaged.

    Returns
    -------
    H : ndarray, shape (n, n), float64
        Memory ``8 n^2`` bytes.
    """
    n = spec.n_params()
    p64, x, y = _as64(spec, params, x, y, loss)
    # The forward pass (and the loss terms) do not depend on v: run them once, then one R-pass per column.
    z, caches, ins = _forward(spec, p64, x)
    _, dz, p = _loss_terms(z, y, loss)
    H = np.empty((n, n), dtype=np.float64)
    e = np.zeros(n, dtype=np.float64)
    for k in range(n):
        e[k] = 1.0
        vparams = vector_to_params(spec, e)
        rz, rins, rcaches = _r_forward(spec, p64, ins, caches, vparams)
        rdz = _loss_hvp(rz, p, len(x))
        r = _backward(spec, caches, rins, rcaches, vparams, dz, rdz, gauss_newton=gauss_newton)
        H[:, k] = np.concatenate([r[key].ravel() for key in spec.param_shapes()])
        e[k] = 0.0
    if symmetrize:
        H = 0.5 * (H + H.T)
    return H


def gauss_newton_matrix(
    spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, loss: str = "softmax_ce"
) -> np.ndarray:
    """The Gauss-Newton (outer-product) matrix ``G = (1/N) sum_n J_n^T H_L,n J_n``, shape (n, n), float64."""
    return full_hessian(spec, params, x, y, loss=loss, gauss_newton=True)


def output_factors(
    spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, loss: str = "softmax_ce"
) -> np.ndarray:
    """Vectors X with ``G = (1/N) sum X X^T``: the input of Hassibi & Stork's recursive inverse.

    Per sample n the logits' loss Hessian factors as ``diag(p) - p p^T = sum_i p_i (e_i - p)(e_i - p)^T``
    (softmax CE) or ``I = sum_i e_i e_i^T`` (squared error), so sample n contributes the M vectors
    ``X_ni = J_n^T u_ni`` with ``u_ni = sqrt(p_i) (e_i - p)`` or ``e_i``; each is one backward pass of
    sample n with ``dL/dz = u_ni``.

    Returns
    -------
    X : ndarray, shape (N * M, n), float64
        Row ``n * M + i`` is ``X_ni``. N, the number of samples, is the ``P`` of the recursion.
    """
    p64, x, y = _as64(spec, params, x, y, loss)
    rows = []
    keys = list(spec.param_shapes())
    for n in range(len(x)):
        z, caches, _ = _forward(spec, p64, x[n : n + 1])
        M = z.shape[1]
        if loss == "softmax_ce":
            p = softmax(z)[0]
            U = np.sqrt(p)[:, None] * (np.eye(M) - p[None, :])  # row i: sqrt(p_i) (e_i - p)
        else:
            U = np.eye(M)
        for i in range(M):
            u = U[i : i + 1]
            g = _plain_backward(spec, caches, u)
            rows.append(np.concatenate([g[k].ravel() for k in keys]))
    return np.stack(rows)


def obd_diagonal(
    spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, loss: str = "softmax_ce"
) -> dict[str, np.ndarray]:
    """LeCun's backprop-like recursion for the Hessian diagonal (Gauss-Newton form), float64.

    One forward pass and one backward pass with squared weights and squared layer inputs (see the module
    docstring for the recursion). Biases get ``h = sum_n d2E/da_i^2`` (their input is 1).

    Returns
    -------
    h_diag : dict of ndarray, float64
        Keyed and shaped like ``params``.
    """
    p64, x, y = _as64(spec, params, x, y, loss)
    z, caches, _ = _forward(spec, p64, x)
    N = len(x)
    _, _, p = _loss_terms(z, y, loss)
    # Boundary condition: diagonal of the logits' loss Hessian, per sample.
    d2 = p * (1.0 - p) / N if p is not None else np.full(z.shape, 1.0 / N)
    out: dict[str, np.ndarray] = {}
    first = spec.first_layer_index
    for i in range(len(spec.ops) - 1, first - 1, -1):
        op = spec.ops[i]
        d2, h = OPS[op.kind].obd_backward(op, d2, caches[i], need_dx=i != first)
        out.update(h)
    return {k: out[k] for k in spec.param_shapes()}


def hessian_nbytes(n: int) -> int:
    """Bytes of one dense float64 n x n matrix (the full Hessian, or OBS's inverse)."""
    return 8 * n * n
