"""Hypothesis strategies shared by the test suite.

Values are drawn element by element (``fill=st.nothing()``), so hypothesis's favourite values (0, 1,
repeated entries, the bounds) show up, not only generic noise. Strategies for kinked layers keep their
inputs at least ``KINK_MARGIN`` away from the kinks.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.tolerances import KINK_MARGIN

Shape = tuple[int, ...]


def finite_floats(bound: float = 1.0, *, dtype: np.dtype | type = np.float64) -> st.SearchStrategy[float]:
    """Finite floats in ``[-bound, bound]`` representable in ``dtype``, no subnormals."""
    width = 32 if np.dtype(dtype) == np.float32 else 64
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=width)


def float_arrays(
    shape: Shape, *, dtype: np.dtype | type = np.float64, bound: float = 1.0
) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``shape`` with every entry drawn from :func:`finite_floats`."""
    return hnp.arrays(dtype, shape, elements=finite_floats(bound, dtype=dtype), fill=st.nothing())


def away_from_zero_arrays(
    shape: Shape, *, margin: float = KINK_MARGIN, bound: float = 1.0
) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays whose entries satisfy ``margin <= |x| <= bound`` (for ReLU's kink at 0)."""
    magnitude = st.floats(margin, bound, allow_nan=False, allow_infinity=False)
    signed = st.builds(lambda negative, v: -v if negative else v, st.booleans(), magnitude)
    return hnp.arrays(np.float64, shape, elements=signed, fill=st.nothing())


@st.composite
def distinct_arrays(draw: st.DrawFn, shape: Shape, *, margin: float = KINK_MARGIN) -> np.ndarray:
    """float64 arrays whose entries all differ pairwise by more than ``margin`` (for max-pool ties).

    A random permutation of 0..n-1, each entry moved by less than a quarter, times a scale, plus an
    offset: neighbours in value differ by at least ``scale / 2 >= 50 * margin``.
    """
    n = int(np.prod(shape))
    perm = np.array(draw(st.permutations(range(n))), dtype=np.float64)
    noise = draw(float_arrays((n,), bound=0.25))
    scale = draw(st.floats(100 * margin, 1.0))
    offset = draw(st.floats(-1.0, 1.0))
    return (offset + scale * (perm + noise)).reshape(shape)


class DenseCase(NamedTuple):
    x: np.ndarray  # (N, D)
    w: np.ndarray  # (M, D)
    b: np.ndarray  # (M,)
    dout: np.ndarray  # (N, M)


@st.composite
def dense_cases(draw: st.DrawFn, *, dtype: np.dtype | type = np.float64, max_dim: int = 6) -> DenseCase:
    n, d, m = (draw(st.integers(1, max_dim)) for _ in range(3))
    x = draw(float_arrays((n, d), dtype=dtype))
    w = draw(float_arrays((m, d), dtype=dtype))
    b = draw(float_arrays((m,), dtype=dtype))
    dout = draw(float_arrays((n, m), dtype=dtype))
    return DenseCase(x, w, b, dout)


class ConvCase(NamedTuple):
    x: np.ndarray  # (N, C, H, W)
    w: np.ndarray  # (F, C, KH, KW)
    b: np.ndarray  # (F,)
    stride: int
    pad: int
    dout: np.ndarray  # (N, F, OH, OW)


@st.composite
def conv_geometries(draw: st.DrawFn, *, max_batch: int = 2, max_channels: int = 3, max_kernel: int = 4):
    """(x_shape, w_shape, stride, pad) with the kernel fitting the padded input (possibly pad >= kernel)."""
    n = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_channels))
    f = draw(st.integers(1, max_channels))
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2))
    h = max(1, kh - 2 * pad + draw(st.integers(0, 5)))
    w = max(1, kw - 2 * pad + draw(st.integers(0, 5)))
    return (n, c, h, w), (f, c, kh, kw), stride, pad


def conv_output_shape(x_shape: Shape, w_shape: Shape, stride: int, pad: int) -> Shape:
    """Floor output size, written out once more as the tests' own reference."""
    n, _, h, w = x_shape
    f, _, kh, kw = w_shape
    return (n, f, (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1)


@st.composite
def conv_cases(draw: st.DrawFn, *, dtype: np.dtype | type = np.float64, **geometry) -> ConvCase:
    x_shape, w_shape, stride, pad = draw(conv_geometries(**geometry))
    x = draw(float_arrays(x_shape, dtype=dtype))
    w = draw(float_arrays(w_shape, dtype=dtype))
    b = draw(float_arrays((w_shape[0],), dtype=dtype))
    dout = draw(float_arrays(conv_output_shape(x_shape, w_shape, stride, pad), dtype=dtype))
    return ConvCase(x, w, b, stride, pad, dout)


class PoolCase(NamedTuple):
    x: np.ndarray  # (N, C, H, W)
    size: int
    stride: int
    dout: np.ndarray  # (N, C, OH, OW)


@st.composite
def pool_geometries(draw: st.DrawFn, *, max_batch: int = 2, max_channels: int = 2, max_size: int = 3):
    """(x_shape, size, stride), stride below, equal to or above size (overlapping, tiling, gaps)."""
    n = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_channels))
    size = draw(st.integers(1, max_size))
    stride = draw(st.integers(1, 3))
    h = size + draw(st.integers(0, 5))
    w = size + draw(st.integers(0, 5))
    return (n, c, h, w), size, stride


def pool_output_shape(x_shape: Shape, size: int, stride: int) -> Shape:
    n, c, h, w = x_shape
    return (n, c, (h - size) // stride + 1, (w - size) // stride + 1)


@st.composite
def pool_cases(draw: st.DrawFn, *, distinct: bool = True, dtype: np.dtype | type = np.float64) -> PoolCase:
    """Max-pool inputs; ``distinct=True`` keeps all entries apart (gradchecks), False allows ties."""
    x_shape, size, stride = draw(pool_geometries())
    if distinct:
        x = draw(distinct_arrays(x_shape)).astype(dtype)
    else:
        # Few distinct values, so that windows with ties (and all-equal windows) are common.
        few = st.sampled_from([-1.0, 0.0, 0.5, 1.0])
        x = draw(hnp.arrays(dtype, x_shape, elements=few, fill=st.nothing()))
    dout = draw(float_arrays(pool_output_shape(x_shape, size, stride), dtype=dtype))
    return PoolCase(x, size, stride, dout)


def small_shapes(min_dims: int = 1, max_dims: int = 4, max_side: int = 5) -> st.SearchStrategy[Shape]:
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)
