"""The effective parameters ``w_eff = w * mask`` of a training run, built the cheap way each step.

Per parameter, from the mask's current density:

* all kept: ``w`` itself (no copy, no multiply);
* a dense layer's weight at density <= ``sparse_max_density``: a :class:`~refdns.layers.SparseWeight`,
  i.e. ``w`` plus the CSR structure of the mask, so the forward product and the gradient to the layer
  below skip the pruned entries (:mod:`refdns.kernels.masked_gemm`). The structure is rebuilt only when
  the mask changes; the values are read from ``w`` every step (DNS changes every entry of ``w`` every step);
* otherwise: ``w * mask`` written into a buffer allocated once (no page faults from a fresh
  full-size temporary each step), for BLAS.

Both paths compute the same function and the same gradients to float rounding; which one runs is a
speed decision only. Conv weights always take the dense path.
"""

from __future__ import annotations

import numpy as np

from refdns.kernels.masked_gemm import mask_csr
from refdns.layers import SparseWeight
from refdns.nets.sequential import NetSpec

# Largest density at which a dense layer's weight takes the sparse path. Measured by
# validate/bench_masked_gemm.py (forward + gradient to the input, batch 64, the fc shapes of LeNet-300-100
# and LeNet-5, serial kernel against single-threaded BLAS on a loaded 2-core machine; see
# validate/results/bench_masked_gemm.md): the sparse path is faster up to a crossover of about 0.10-0.2
# depending on the shape. 0.1 sits at the low end so that a noisy measurement cannot make it a loss;
# DNS's fc layers spend most of their iterations at 1-6 %, far below either value.
SPARSE_MAX_DENSITY = 0.1

PATHS = ("unmasked", "sparse", "dense")


def choose_path(density: float, *, dense_layer: bool, sparse_max_density: float = SPARSE_MAX_DENSITY) -> str:
    """Which representation of ``w * mask`` is fastest: "unmasked", "sparse" or "dense".

    Parameters
    ----------
    density : float
        Fraction of the mask that is kept, in [0, 1].
    dense_layer : bool
        True for the weight of a fully connected layer (the only kind with a sparse kernel).
    sparse_max_density : float
        The crossover density (default :data:`SPARSE_MAX_DENSITY`).
    """
    if density >= 1.0:
        return "unmasked"
    if dense_layer and density <= sparse_max_density:
        return "sparse"
    return "dense"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit equality of two bool masks, eight bytes at a time when the size allows it."""
    if a.size % 8 == 0 and a.flags.c_contiguous and b.flags.c_contiguous:
        return np.array_equal(a.reshape(-1).view(np.uint64), b.reshape(-1).view(np.uint64))
    return np.array_equal(a, b)


class EffectiveParams:
    """Builds ``w_eff`` for every parameter of one net, reusing buffers and index structures across steps.

    Call it each step with the current params and masks. It notices a changed mask by comparing it with
    the copy it last built from (a byte comparison, much cheaper than a rebuild), so masks may be changed
    by anyone, anywhere, between calls.

    Parameters
    ----------
    spec : NetSpec
    sparse_max_density : float
        Crossover density for the sparse path; 0 turns the sparse path off, 1 forces it for every masked
        fully connected weight.
    """

    def __init__(self, spec: NetSpec, *, sparse_max_density: float = SPARSE_MAX_DENSITY):
        if not 0.0 <= float(sparse_max_density) <= 1.0:
            raise ValueError(f"sparse_max_density={sparse_max_density!r} must lie in [0, 1]")
        self.sparse_max_density = float(sparse_max_density)
        self.dense_weights = frozenset(op.name + ".weight" for op in spec.ops if op.kind == "dense")
        self.paths: dict[str, str] = {}  # the path each parameter took at the last call
        self._built_from: dict[str, np.ndarray] = {}  # the mask each entry of ``paths`` was chosen for
        self._structure: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # key -> (indptr, indices)
        self._buffers: dict[str, np.ndarray] = {}

    def _rebuild(self, key: str, mask: np.ndarray) -> None:
        density = np.count_nonzero(mask) / mask.size if mask.size else 1.0
        path = choose_path(density, dense_layer=key in self.dense_weights,
                           sparse_max_density=self.sparse_max_density)
        self.paths[key] = path
        self._built_from[key] = mask.copy()
        if path == "sparse":
            self._structure[key] = mask_csr(mask)
        else:
            self._structure.pop(key, None)

    def __call__(self, params: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, object]:
        """``{key: w_eff}``: ``params[key]`` itself, a :class:`SparseWeight` or a reused buffer.

        The returned arrays are valid until the next call (buffers are overwritten) and must not be
        written to (some are the parameters themselves).
        """
        out: dict[str, object] = {}
        for key, w in params.items():
            mask = masks[key]
            seen = self._built_from.get(key)
            if seen is None or seen.shape != mask.shape or not _same(seen, mask):
                self._rebuild(key, mask)
            path = self.paths[key]
            if path == "unmasked":
                out[key] = w
            elif path == "sparse":
                out[key] = SparseWeight(w, *self._structure[key])
            else:
                buf = self._buffers.get(key)
                if buf is None or buf.shape != w.shape or buf.dtype != w.dtype:
                    buf = self._buffers[key] = np.empty_like(w)
                out[key] = np.multiply(w, mask, out=buf)
        return out
