"""The effective parameters ``w_eff = w * mask`` of a training run, built the cheap way each step.

Per parameter, from the mask's current density:

* all kept: ``w`` itself (no copy, no multiply);
* a large enough fully connected weight at density <= ``sparse_max_density``: a
  :class:`~refdns.layers.SparseWeight`, i.e. ``w`` plus the CSR structure of the mask, so the forward
  product and the gradient to the layer below skip the pruned entries (:mod:`refdns.kernels.masked_gemm`).
  The structure is rebuilt only when the mask changes; the values are read from ``w`` every step (DNS
  changes every entry of ``w`` every step);
* otherwise: ``w * mask`` written into a buffer allocated once (no page faults from a fresh
  full-size temporary each step), for BLAS.

Both paths compute the same function and the same gradients to float rounding; which one runs is a
speed decision only. Only ops whose definition takes a SparseWeight (``takes_sparse_weight`` in
:data:`refdns.nets.ops.OPS`: dense) may take the sparse path; conv weights always take the dense one.
"""

from __future__ import annotations

import numpy as np

from refdns.kernels.masked_gemm import mask_csr
from refdns.layers import SparseWeight
from refdns.nets.ops import OPS, weight_key
from refdns.nets.sequential import NetSpec

# Largest density at which a fully connected weight takes the sparse path. Measured by
# validate/bench_masked_gemm.py (forward + gradient to the input at batch 64, serial Numba kernels against
# single-threaded OpenBLAS, median of 15 x 30 calls, on a 2-core machine shared with other jobs; see
# validate/results/bench_masked_gemm.md): the sparse path is faster below a crossover density of
# 0.168 / 0.184 (LeNet-300-100 ip1, 300x784; two runs), 0.189 / 0.237 (ip2, 100x300) and 0.191 / 0.303
# (LeNet-5 ip1, 500x800). 0.15 stays under all of them; DNS's fc layers spend most of their iterations
# at 1-6 %, where the sparse products cost 0.1-0.3 of the dense path's.
SPARSE_MAX_DENSITY = 0.15

# Smallest fully connected weight (M * D entries) that takes the sparse path at all. The 10-output layers
# (LeNet-300-100 ip3, 10x100; LeNet-5 ip2, 10x500) cost BLAS 6-17 us per step, and the kernels' fixed costs
# (transposes, allocation, dispatch) match that: the same benchmark measured no crossover for 10x100 and
# 0.024 for 10x500, against 0.17-0.19 for the layers of 30,000 entries and more.
SPARSE_MIN_WEIGHTS = 10_000

def choose_path(density: float, *, sparse_capable: bool,
                sparse_max_density: float = SPARSE_MAX_DENSITY) -> str:
    """Which representation of ``w * mask`` is fastest: "unmasked", "sparse" or "dense".

    Parameters
    ----------
    density : float
        Fraction of the mask that is kept, in [0, 1].
    sparse_capable : bool
        True for the weight of a fully connected layer with at least :data:`SPARSE_MIN_WEIGHTS` entries
        (conv weights have no sparse kernel; tiny layers do not gain from one).
    sparse_max_density : float
        The crossover density (default :data:`SPARSE_MAX_DENSITY`).
    """
    if density >= 1.0:
        return "unmasked"
    if sparse_capable and density <= sparse_max_density:
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
        Crossover density for the sparse path; 0 turns the sparse path off, 1 (with
        ``sparse_min_weights=0``) forces it for every masked fully connected weight.
    sparse_min_weights : int
        Fully connected weights with fewer entries always take the dense path.
    """

    def __init__(self, spec: NetSpec, *, sparse_max_density: float = SPARSE_MAX_DENSITY,
                 sparse_min_weights: int = SPARSE_MIN_WEIGHTS):
        if not 0.0 <= float(sparse_max_density) <= 1.0:
            raise ValueError(f"sparse_max_density={sparse_max_density!r} must lie in [0, 1]")
        if int(sparse_min_weights) < 0:
            raise ValueError(f"sparse_min_weights={sparse_min_weights!r} must be >= 0")
        self.sparse_max_density = float(sparse_max_density)
        self.sparse_capable = frozenset(
            weight_key(op.name) for op in spec.ops
            if OPS[op.kind].takes_sparse_weight and np.prod(op.w_shape) >= sparse_min_weights
        )
        self.paths: dict[str, str] = {}  # the path each parameter took at the last call
        self._built_from: dict[str, np.ndarray] = {}  # the mask each entry of ``paths`` was chosen for
        self._structure: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # key -> (indptr, indices)
        self._buffers: dict[str, np.ndarray] = {}

    def _rebuild(self, key: str, mask: np.ndarray) -> None:
        density = np.count_nonzero(mask) / mask.size if mask.size else 1.0
        path = choose_path(density, sparse_capable=key in self.sparse_capable,
                           sparse_max_density=self.sparse_max_density)
        self.paths[key] = path
        seen = self._built_from.get(key)
        if seen is not None and seen.shape == mask.shape and seen.dtype == mask.dtype:
            np.copyto(seen, mask)  # DNS changes masks often: no new mask-sized array each time
        else:
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
            if seen is None or seen.shape != mask.shape:
                self._rebuild(key, mask)
            elif self.paths[key] == "unmasked":
                if not mask.all():  # an all-kept mask has changed iff it lost an entry: one fast reduction
                    self._rebuild(key, mask)
            elif not _same(seen, mask):
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
