"""Every op kind a refdns net is built from, each defined once, and the table the engines look them up in.

An :class:`Op` is one step of a net's spec (its kind plus the layer name, shapes and geometry). Its *kind* is
one object in :data:`OPS` holding, side by side, everything an engine does with that op:

- ``forward`` / ``backward``: the training engine (:mod:`refdns.nets.sequential`), on the layers of
  :mod:`refdns.layers` (dense also on a :class:`~refdns.layers.SparseWeight`, the masked-GEMM twin);
- ``r_forward`` / ``r_backward``: Pearlmutter's R-operator rules for exact Hessian-vector products
  (:mod:`refdns.hessian`, whose docstring derives them);
- ``obd_backward``: one step of LeCun's diagonal recursion (:func:`refdns.hessian.obd_diagonal`);
- ``sparse_forward``: inference on CSR layers (:class:`refdns.sparse.SparseNet`), on the public kernel
  wrappers of :mod:`refdns.kernels`.

No engine switches on ``op.kind``: each calls ``OPS[op.kind].<step>(op, ...)``, so adding a kind means adding
one class here and registering it in :data:`OPS` [micrograd keeps an op's backward under its forward;
tinygrad has one ops table]. The R-operator and OBD steps take dense float64 weights (the Hessian engine's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, NamedTuple, Protocol

import numpy as np

from refdns.kernels.csr_matmul import csr_matmul
from refdns.kernels.sparse_conv import sparse_conv2d
from refdns.layers import (
    Conv2dCache,
    DenseCache,
    SparseDenseCache,
    SparseWeight,
    Workspace,
    conv2d_backward,
    conv2d_forward,
    dense_backward,
    dense_forward,
    flatten_backward,
    flatten_forward,
    maxpool_backward,
    maxpool_forward,
    maxpool_select,
    relu_backward,
    relu_forward,
    sparse_dense_backward,
    sparse_dense_forward,
)

Params = Mapping[str, Any]  # "<layer>.weight" / "<layer>.bias" -> ndarray (or SparseWeight)
Grads = dict[str, np.ndarray]


def param_key(layer: str, kind: str) -> str:
    """``param_key("ip1", "weight") == "ip1.weight"``: the one spelling of a parameter's key."""
    return f"{layer}.{kind}"


def weight_key(layer: str) -> str:
    """``"<layer>.weight"``, the key of a layer's weight in params, masks, gradients and ``.npz`` files."""
    return param_key(layer, "weight")


def bias_key(layer: str) -> str:
    """``"<layer>.bias"``."""
    return param_key(layer, "bias")


@dataclass(frozen=True)
class Op:
    """One step of a sequential net.

    ``kind`` is a key of :data:`OPS` (dense, conv, pool, relu, flatten). Parametric ops (dense, conv) carry
    ``name`` (the Caffe layer name), ``w_shape`` and ``b_shape``; pool carries ``size``/``stride``; conv
    ``stride``/``pad``.
    """

    kind: str
    name: str = ""
    w_shape: tuple[int, ...] = ()
    b_shape: tuple[int, ...] = ()
    size: int = 2
    stride: int = 1
    pad: int = 0

    def __post_init__(self):
        if self.kind not in OPS:
            raise ValueError(f"Op kind={self.kind!r} must be one of {tuple(OPS)}")
        if OPS[self.kind].has_params and not self.name:
            raise ValueError(f"a {self.kind} op needs a layer name")

    @property
    def fan_in(self) -> int:
        """Inputs feeding one output unit: D for dense, C*KH*KW for conv (Caffe's ``count / num``)."""
        return int(np.prod(self.w_shape[1:]))


class SparseAct(NamedTuple):
    """An activation between two steps of the sparse engine.

    ``h`` is (N, C, H, W) before the flatten; after it, 2-D either sample-major (N, D) (``sample_major``,
    right after the flatten) or feature-major (D, N) (the output of every sparse dense layer).
    """

    h: np.ndarray
    sample_major: bool = False


class SparseRun(Protocol):
    """What an op's ``sparse_forward`` asks of the sparse engine (:class:`refdns.sparse.SparseNet`)."""

    parallel: bool  # use the kernels' Numba-parallel variants

    def layer(self, name: str) -> Any:
        """The layer's CSR weight ``.csr`` (indptr, indices, data), ``.bias``, ``.w_shape``; checked once."""

    def workspace(self, n_in: int, n: int, sample_major: bool) -> np.ndarray:
        """A kept :func:`refdns.kernels.csr_matmul.workspace` for ``n_in`` inputs and batch ``n``."""


class OpKind:
    """One op kind: its steps in every engine. Subclasses set the class attributes and the steps they have.

    Every step takes the :class:`Op` first (its name and geometry). Gradient-like results of parametric ops
    come back as ``{"<layer>.weight": ..., "<layer>.bias": ...}``; parameter-free ops return ``{}``.
    """

    kind: ClassVar[str]
    has_params: ClassVar[bool] = False
    takes_sparse_weight: ClassVar[bool] = False  # its weight may come as a SparseWeight (refdns.effective)
    mlp_role: ClassVar[str | None] = None  # its place in the fused MLP kernel: "input", "affine", "relu"

    def forward(self, op: Op, params: Params, x: np.ndarray, *, ws: Workspace | None = None
                ) -> tuple[np.ndarray, Any]:
        """``(out, cache)`` of the op on ``x`` with the effective ``params``; results in ``ws``'s buffers when
        given (:mod:`refdns.layers.workspace`)."""
        raise NotImplementedError

    def backward(self, op: Op, dout: np.ndarray, cache: Any, *, need_dx: bool, ws: Workspace | None = None
                 ) -> tuple[np.ndarray | None, Grads]:
        """``(dx, grads)``: dL/dx (None when not ``need_dx``) and dL/d(effective parameter)."""
        raise NotImplementedError

    def r_forward(self, op: Op, params: Params, vparams: Params, x: np.ndarray, rx: np.ndarray | None,
                  cache: Any) -> tuple[np.ndarray | None, Any]:
        """``(R{out}, r_cache)`` along the plain forward's ``x`` and ``cache``; ``rx`` None stands for 0."""
        raise NotImplementedError

    def r_backward(self, op: Op, cache: Any, rx: np.ndarray | None, r_cache: Any, vparams: Params | None,
                   dout: np.ndarray, rdout: np.ndarray, *, need_dx: bool, gauss_newton: bool
                   ) -> tuple[np.ndarray | None, np.ndarray | None, Grads]:
        """``(dx, R{dx}, R{grads})``; with ``gauss_newton`` only the ``R{dout}`` terms (Schraudolph 2002)."""
        raise NotImplementedError

    def obd_backward(self, op: Op, d2out: np.ndarray, cache: Any, *, need_dx: bool
                     ) -> tuple[np.ndarray | None, Grads]:
        """``(d2E/dx^2, h_diag)``: one step of LeCun's recursion, from d2E/dout^2."""
        raise NotImplementedError

    def sparse_forward(self, op: Op, act: SparseAct, nxt: Op | None, run: SparseRun) -> tuple[SparseAct, int]:
        """``(out, fused)``: the op on CSR layers; ``fused`` (0 or 1) counts following ops it ran too."""
        raise NotImplementedError


def _keyed(op: Op, w: np.ndarray, b: np.ndarray) -> Grads:
    return {weight_key(op.name): w, bias_key(op.name): b}


# --------------------------------------------------------------------------------------------------------
# Parametric ops. Dense and conv are bilinear in (input, weight): R{out} = f(R{x}, W, 0) + f(x, V, V_b), and
# the R-backward is the layer's own backward with swapped arguments (see refdns.hessian's docstring).


class Dense(OpKind):
    """Fully connected layer (:mod:`refdns.layers.dense`; :mod:`refdns.layers.sparse_dense` on a SparseWeight)
    with its ReLU-fused sparse product."""

    kind = "dense"
    has_params = True
    takes_sparse_weight = True
    mlp_role = "affine"

    def forward(self, op, params, x, *, ws=None):
        w = params[weight_key(op.name)]
        if isinstance(w, SparseWeight):
            return sparse_dense_forward(x, w, params[bias_key(op.name)])
        return dense_forward(x, w, params[bias_key(op.name)], ws=ws)

    def backward(self, op, dout, cache, *, need_dx, ws=None):
        if isinstance(cache, SparseDenseCache):
            dx, dw, db = sparse_dense_backward(dout, cache, need_dx=need_dx)
        else:
            dx, dw, db = dense_backward(dout, cache, need_dx=need_dx, ws=ws)
        return dx, _keyed(op, dw, db)

    def r_forward(self, op, params, vparams, x, rx, cache):
        # R{out} = f(R{x}, W, 0) + f(x, V, V_b)
        r = dense_forward(x, vparams[weight_key(op.name)], vparams[bias_key(op.name)])[0]
        if rx is not None:
            b = params[bias_key(op.name)]
            r += dense_forward(rx, params[weight_key(op.name)], np.zeros_like(b))[0]
        return r, None

    def r_backward(self, op, cache, rx, r_cache, vparams, dout, rdout, *, need_dx, gauss_newton):
        rdx, rdw, rdb = dense_backward(rdout, cache, need_dx=need_dx)  # R{dout} W, R{dout}^T x
        if not gauss_newton:
            vw = vparams[weight_key(op.name)]
            if need_dx:
                rdx = rdx + dense_backward(dout, DenseCache(cache.x, vw))[0]  # + dout V
            if rx is not None:
                rdw = rdw + dense_backward(dout, DenseCache(rx, vw), need_dx=False)[1]  # + dout^T R{x}
        dx = dense_backward(dout, cache)[0] if need_dx else None
        return dx, rdx, _keyed(op, rdw, rdb)

    def obd_backward(self, op, d2out, cache, *, need_dx):
        # d2E/dw_ij^2 = d2E/da_i^2 x_j^2;  d2E/dx_j^2 = sum_i w_ij^2 d2E/da_i^2
        d2x, hw, hb = dense_backward(d2out, DenseCache(cache.x * cache.x, cache.w * cache.w), need_dx=need_dx)
        return d2x, _keyed(op, hw, hb)

    def sparse_forward(self, op, act, nxt, run):
        # Feature-major product (M, N) with the next op's ReLU fused in (refdns.kernels.csr_matmul).
        la = run.layer(op.name)
        h, sample_major = act
        if h.ndim != 2:
            raise ValueError(f"dense layer {op.name} comes before a flatten")
        relu = nxt is not None and isinstance(OPS[nxt.kind], Relu)
        n = h.shape[0] if sample_major else h.shape[1]
        if sample_major and n <= SPARSE_TRANSPOSE_UP_TO:
            h = np.ascontiguousarray(h.T)
            sample_major = False
        n_in = la.w_shape[1]
        out = csr_matmul(la.csr.indptr, la.csr.indices, la.csr.data, h, n_in=n_in, bias=la.bias, relu=relu,
                         x_layout="sample" if sample_major else "feature", check_inputs=False,
                         check_weights=False, scratch=run.workspace(n_in, n, sample_major),
                         parallel=run.parallel)
        return SparseAct(out, False), int(relu)


#: Largest batch whose sample-major input the sparse dense step transposes with NumPy first: NumPy's
#: blocked transpose beats the kernel's tile gather there (measured 16 us against 35 us at 64 x 784); larger
#: batches are gathered tile by tile, cache-resident.
SPARSE_TRANSPOSE_UP_TO = 256


class Conv(OpKind):
    """2-D convolution (:mod:`refdns.layers.conv`)."""

    kind = "conv"
    has_params = True

    def forward(self, op, params, x, *, ws=None):
        w, b = params[weight_key(op.name)], params[bias_key(op.name)]
        return conv2d_forward(x, w, b, stride=op.stride, pad=op.pad, ws=ws)

    def backward(self, op, dout, cache, *, need_dx, ws=None):
        dx, dw, db = conv2d_backward(dout, cache, need_dx=need_dx, ws=ws)
        return dx, _keyed(op, dw, db)

    def r_forward(self, op, params, vparams, x, rx, cache):
        # R{out} = f(R{x}, W, 0) + f(x, V, V_b); f(x, V, V_b) reuses the forward's im2col of x
        r = _conv_from_cols(cache, vparams[weight_key(op.name)], vparams[bias_key(op.name)])
        r_cache = None
        if rx is not None:
            w, b = params[weight_key(op.name)], params[bias_key(op.name)]
            r_x, r_cache = conv2d_forward(rx, w, np.zeros_like(b), stride=op.stride, pad=op.pad)
            r += r_x  # r_cache keeps im2col(R{x}) for the backward
        return r, r_cache

    def r_backward(self, op, cache, rx, r_cache, vparams, dout, rdout, *, need_dx, gauss_newton):
        rdx, rdw, rdb = conv2d_backward(rdout, cache, need_dx=need_dx)  # R{dout} (*) W, R{dout} (*) x
        if not gauss_newton:
            if need_dx:
                vw = vparams[weight_key(op.name)]
                rdx = rdx + conv2d_backward(dout, cache._replace(w=vw))[0]  # + dout (*) V
            if r_cache is not None:
                rdw = rdw + conv2d_backward(dout, r_cache, need_dx=False)[1]  # + dout (*) R{x}
        dx = conv2d_backward(dout, cache)[0] if need_dx else None
        return dx, rdx, _keyed(op, rdw, rdb)

    def obd_backward(self, op, d2out, cache, *, need_dx):
        squared = cache._replace(cols=cache.cols * cache.cols, w=cache.w * cache.w)
        d2x, hw, hb = conv2d_backward(d2out, squared, need_dx=need_dx)
        return d2x, _keyed(op, hw, hb)

    def sparse_forward(self, op, act, nxt, run):
        # Sparse direct convolution; a following max-pool whose size equals its stride runs inside it.
        la = run.layer(op.name)
        fuse = nxt is not None and isinstance(OPS[nxt.kind], MaxPool) and nxt.size == nxt.stride
        out = sparse_conv2d(la.csr.indptr, la.csr.indices, la.csr.data, act.h, w_shape=la.w_shape,
                            bias=la.bias, stride=op.stride, pad=op.pad, pool=nxt.size if fuse else 1,
                            check_inputs=False, check_weights=False, parallel=run.parallel)
        return SparseAct(out, False), int(fuse and nxt.size > 1)


def _conv_from_cols(cache: Conv2dCache, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The convolution of the cached input with other filters ``w`` and bias ``b``: one product with the
    forward's im2col matrix instead of a second im2col."""
    N, C, H, W = cache.x_shape
    F, _, KH, KW = w.shape
    OH = (H + 2 * cache.pad - KH) // cache.stride + 1
    OW = (W + 2 * cache.pad - KW) // cache.stride + 1
    w2 = w.reshape(F, -1)
    if cache.layout == "batch_first":
        out = np.matmul(w2, cache.cols).reshape(N, F, OH, OW)  # cols (N, CKK, P)
    else:
        out = np.ascontiguousarray((w2 @ cache.cols).reshape(F * OH * OW, N).T).reshape(N, F, OH, OW)
    return out + b[:, None, None]


# --------------------------------------------------------------------------------------------------------
# Parameter-free ops. Each is piecewise linear with a 0/1 derivative pattern fixed by the forward (ReLU's
# signs, max-pool's winners, flatten's identity), so R{out} applies that pattern to R{x} and R{dx} is the
# backward of R{dout} (the second derivative is 0 away from the kinks), and in LeCun's recursion f'^2 = f':
# the OBD step is the backward itself.


class _PatternOp(OpKind):
    def _backward(self, dout: np.ndarray, cache: Any, ws: Workspace | None = None) -> np.ndarray:
        raise NotImplementedError

    def _tangent(self, rx: np.ndarray, cache: Any) -> np.ndarray:
        """The forward's derivative pattern applied to ``rx``."""
        raise NotImplementedError

    def backward(self, op, dout, cache, *, need_dx, ws=None):
        return self._backward(dout, cache, ws), {}

    def r_forward(self, op, params, vparams, x, rx, cache):
        return (None if rx is None else self._tangent(rx, cache)), None  # R{x} = 0 stays an exact zero

    def r_backward(self, op, cache, rx, r_cache, vparams, dout, rdout, *, need_dx, gauss_newton):
        return self._backward(dout, cache), self._backward(rdout, cache), {}

    def obd_backward(self, op, d2out, cache, *, need_dx):
        return self._backward(d2out, cache), {}


class MaxPool(_PatternOp):
    """Caffe max-pool (:mod:`refdns.layers.pool`)."""

    kind = "pool"

    def forward(self, op, params, x, *, ws=None):
        return maxpool_forward(x, size=op.size, stride=op.stride, ws=ws)

    def _backward(self, dout, cache, ws=None):
        return maxpool_backward(dout, cache, ws=ws)

    def _tangent(self, rx, cache):
        return maxpool_select(rx, cache)

    def sparse_forward(self, op, act, nxt, run):
        return SparseAct(maxpool_forward(act.h, size=op.size, stride=op.stride)[0], act.sample_major), 0


class Relu(_PatternOp):
    """ReLU (:mod:`refdns.layers.activation`)."""

    kind = "relu"
    mlp_role = "relu"

    def forward(self, op, params, x, *, ws=None):
        return relu_forward(x, ws=ws)

    def _backward(self, dout, cache, ws=None):
        return relu_backward(dout, cache, ws=ws)

    def _tangent(self, rx, cache):
        return relu_backward(rx, cache)  # R{max(x, 0)} = R{x} * (x > 0): the same mask as backward

    def sparse_forward(self, op, act, nxt, run):
        return SparseAct(np.maximum(act.h, 0), act.sample_major), 0


class Flatten(_PatternOp):
    """(N, C, H, W) -> (N, C*H*W) (:mod:`refdns.layers.flatten`)."""

    kind = "flatten"
    mlp_role = "input"

    def forward(self, op, params, x, *, ws=None):
        return flatten_forward(x)  # a view: nothing to keep

    def _backward(self, dout, cache, ws=None):
        return flatten_backward(dout, cache)

    def _tangent(self, rx, cache):
        return flatten_forward(rx)[0]

    def sparse_forward(self, op, act, nxt, run):
        return SparseAct(act.h.reshape(act.h.shape[0], -1), True), 0  # the next product reads it sample-major


#: The op table: kind -> its definition. Every engine looks ops up here.
OPS: dict[str, OpKind] = {k.kind: k for k in (Dense(), Conv(), MaxPool(), Relu(), Flatten())}
OP_KINDS = tuple(OPS)
PARAM_KINDS = tuple(k for k, d in OPS.items() if d.has_params)
