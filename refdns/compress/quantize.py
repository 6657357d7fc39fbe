"""Weight sharing by k-means, one codebook per layer.

Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding", ICLR 2016, sec. 3.1-3.2. The kept weights W = {w_1, ..., w_n} of a layer are partitioned into
k = 2^bits clusters C = {c_1, ..., c_k} minimising the within-cluster sum of squares, eq. (2):

    argmin_C sum_{i=1}^{k} sum_{w in c_i} |w - c_i|^2

with the centroids initialised linearly: "Linear initialization linearly spaces the centroids between the
[min, max] of the original weights", the initialisation the paper found best (Fig. 5, Table 6: it keeps the
few large weights, which matter most, as their own centroids). Weights are not shared across layers.
Defaults follow the paper's LeNet experiments: 8 bits for conv layers, 5 bits for fully connected ones.

The clustering is Lloyd's algorithm from :func:`scipy.cluster.vq.kmeans2` (``minit='matrix'`` with the
linear initialisation), run one iteration at a time until the centroids stop changing exactly (a fixed
point: no weight changes cluster), at most ``max_iter`` = 300 iterations. Nothing is random, so the result
is deterministic. From a linear initialisation 1-D Lloyd converges slowly (centroids creep into the dense
middle of the distribution): on 235,200 Gaussian weights with 32 clusters it took 449 iterations (about
45 ms each here) and lowered the mean squared error 3x from the first iteration's; a pruned layer
(8 % kept) converges in well under a second. Afterwards

- centroids are rounded to float32 (the stored dtype), and each kept weight is assigned to its nearest
  float32 centroid (a tie goes to the smaller one), so ``codebook[indices]`` is exactly the weight the net
  will compute with;
- centroids that end up with no members (k-means leaves some empty, linear initialisation puts a few in
  sparse tails) and duplicates after rounding are dropped: the codebook holds **at most** 2^bits entries,
  sorted ascending, every one used.

**Fallbacks** (documented, never a crash inside k-means):

- a layer whose kept weights take at most 2^bits distinct values (in particular one with fewer kept
  weights than clusters) is not clustered: its codebook is the sorted distinct values and the quantisation
  is exact;
- a layer with every weight pruned gets an empty codebook and no indices.

The bias is not quantised (the paper shares weights only); :class:`QuantizedLayer` carries it raw, with
its mask.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2

from refdns.compress.shared import shared_weights
from refdns.config import check_number
from refdns.errors import CompressError, ConfigError
from refdns.nets.sequential import NetSpec, check_params

#: Bits per cluster index by layer kind, Deep Compression sec. 3 (LeNet: 8 bits conv, 5 bits fc).
DEFAULT_BITS = {"conv": 8, "dense": 5}

#: Widest cluster index: a codebook of up to 2^16 = 65536 centroids.
MAX_BITS = 16

KINDS = ("dense", "conv")


def check_bits(name: str, bits: object) -> int:
    """Raise ConfigError unless ``bits`` is an int in [1, :data:`MAX_BITS`]; returns it as an int."""
    if isinstance(bits, np.integer):
        bits = int(bits)
    check_number(name, bits, lo=1, hi=MAX_BITS, integer=True)
    return int(bits)  # type: ignore[arg-type]


def linear_init(values: np.ndarray, n_clusters: int) -> np.ndarray:
    """Deep Compression's linear initialisation: ``n_clusters`` centroids evenly spaced over [min, max].

    Returns
    -------
    centroids : ndarray, shape (n_clusters,), float64
    """
    v = np.asarray(values, dtype=np.float64)
    return np.linspace(v.min(), v.max(), int(n_clusters))


def _nearest(codebook: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of a sorted, distinct ``codebook`` for every value (ties: the smaller)."""
    cb = codebook.astype(np.float64)
    midpoints = (cb[:-1] + cb[1:]) / 2  # (K - 1,)
    return np.searchsorted(midpoints, values.astype(np.float64), side="left")


def _lloyd(values: np.ndarray, init: np.ndarray, max_iter: int) -> np.ndarray:
    """Centroids after Lloyd's iterations from ``init`` until they stop changing (or ``max_iter``)."""
    centroids = init
    with warnings.catch_warnings():
        # kmeans2 warns about every cluster left empty and keeps its old centroid: that is the behaviour
        # wanted here (empty clusters are dropped afterwards), so the warning is noise.
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        for _ in range(max_iter):
            new, _labels = kmeans2(values, centroids, iter=1, minit="matrix", missing="warn")
            if np.array_equal(new, centroids):
                break
            centroids = new
    return centroids


def quantize_weights(w: np.ndarray, mask: np.ndarray, bits: int, *, max_iter: int = 300,
                     name: str = "w") -> tuple[np.ndarray, np.ndarray]:
    """Cluster the kept weights of one layer into at most 2^bits shared values.

    Parameters
    ----------
    w : ndarray, any shape, float32 (float64 is rounded to float32 first)
        The layer's weight; pruned entries are ignored but must still be finite.
    mask : ndarray, bool, shape of ``w``
        True where the weight is kept.
    bits : int in [1, 16]
        Width of a cluster index: at most 2^bits clusters.
    max_iter : int
        Cap on Lloyd iterations (they stop earlier, as soon as the centroids no longer move).
    name : str
        Used in error messages.

    Returns
    -------
    codebook : ndarray, shape (K,), float32
        Sorted ascending, distinct, every entry used; K <= 2^bits (see the module's fallbacks).
    indices : ndarray, shape (nnz,), int32
        Cluster of each kept weight, in row-major order of ``mask`` (the order of ``w[mask]``).

    Raises
    ------
    ConfigError
        ``bits`` or ``max_iter`` out of range.
    CompressError
        ``mask`` not bool or of another shape, or ``w`` holding NaN or Inf.
    """
    bits = check_bits(f"{name} bits", bits)
    check_number("max_iter", max_iter, lo=1, integer=True)
    w = np.asarray(w)
    mask = np.asarray(mask)
    if w.dtype not in (np.float32, np.float64):
        raise CompressError(f"{name} must be float32, got dtype {w.dtype}")
    if mask.dtype != np.bool_ or mask.shape != w.shape:
        raise CompressError(f"{name}'s mask must be a bool array of shape {w.shape}, got {mask.dtype} "
                            f"{mask.shape}")
    w32 = w.astype(np.float32)
    if not np.isfinite(w32).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(w32))[0])
        raise CompressError(f"{name} holds NaN or Inf (first at {bad}, after rounding to float32); "
                            "cannot quantise it")
    kept = w32[mask]  # (nnz,) row-major
    n_clusters = 1 << bits
    if kept.size == 0:  # fallback: every weight pruned
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int32)
    distinct = np.unique(kept)
    if distinct.size <= n_clusters:  # fallback: few distinct values, exact
        return distinct.astype(np.float32), np.searchsorted(distinct, kept).astype(np.int32)
    # Eq. (2) by Lloyd's algorithm from the linear initialisation, in float64.
    centroids = _lloyd(kept.astype(np.float64), linear_init(kept, n_clusters), int(max_iter))
    codebook = np.unique(centroids.astype(np.float32))  # sorted; rounding may merge neighbours
    indices = _nearest(codebook, kept)
    used = np.bincount(indices, minlength=codebook.size) > 0
    renumber = np.cumsum(used) - 1  # old cluster -> new cluster among the used ones
    return codebook[used], renumber[indices].astype(np.int32)


@dataclass(frozen=True)
class QuantizedLayer:
    """One parametric layer after weight sharing: codebook, cluster indices, mask, and the raw bias.

    The weight it stands for is ``shared_weights(codebook, indices, mask)`` (:attr:`weight`). The net
    computes with ``weight`` and ``bias * bias_mask``.
    """

    name: str
    kind: str  # "dense" or "conv"
    bits: int  # cluster-index width the codebook was built for: len(codebook) <= 2^bits
    codebook: np.ndarray  # (K,) float32, sorted ascending, distinct, finite
    indices: np.ndarray  # (nnz,) int32 in [0, K)
    mask: np.ndarray  # bool, shape of the weight: (M, D) dense, (F, C, KH, KW) conv
    bias: np.ndarray  # (M,) or (F,) float32, finite, stored as is (pruned entries included)
    bias_mask: np.ndarray  # bool, shape of ``bias``

    def __post_init__(self):
        where = f"layer {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise CompressError(f"layer name must be a non-empty str, got {self.name!r}")
        if self.kind not in KINDS:
            raise CompressError(f"{where}: kind={self.kind!r} must be one of {KINDS}")
        check_bits(f"{where} bits", self.bits)
        cb = self.codebook
        if not isinstance(cb, np.ndarray) or cb.dtype != np.float32 or cb.ndim != 1:
            raise CompressError(f"{where}: codebook must be a 1-D float32 array")
        if cb.size > 1 << self.bits:
            raise CompressError(f"{where}: {cb.size} centroids do not fit {self.bits}-bit indices")
        if not np.isfinite(cb).all():
            raise CompressError(f"{where}: the codebook holds NaN or Inf")
        if self.mask.ndim != (2 if self.kind == "dense" else 4):
            raise CompressError(f"{where}: a {self.kind} weight mask must be "
                                f"{'2' if self.kind == 'dense' else '4'}-D, got shape {self.mask.shape}")
        idx = np.asarray(self.indices)
        if idx.dtype != np.int32:
            raise CompressError(f"{where}: indices must be int32, got {idx.dtype}")
        shared_weights(cb, idx, self.mask)  # validates mask dtype, index count and range
        b, bm = self.bias, self.bias_mask
        if not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.shape != (self.mask.shape[0],):
            raise CompressError(f"{where}: bias must be float32 of shape ({self.mask.shape[0]},), got "
                                f"{getattr(b, 'dtype', type(b).__name__)} {getattr(b, 'shape', '')}")
        if not np.isfinite(b).all():
            raise CompressError(f"{where}: the bias holds NaN or Inf")
        if not isinstance(bm, np.ndarray) or bm.dtype != np.bool_ or bm.shape != b.shape:
            raise CompressError(f"{where}: bias_mask must be a bool array of shape {b.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def n_clusters(self) -> int:
        return int(self.codebook.size)

    @property
    def weight(self) -> np.ndarray:
        """The shared weight, ndarray of ``shape``, float32, exactly 0 where pruned."""
        return shared_weights(self.codebook, self.indices, self.mask)


def layer_bits(spec: NetSpec, bits: dict[str, int] | None = None) -> dict[str, int]:
    """Index width of every layer of ``spec``: :data:`DEFAULT_BITS` by kind, overridden per layer name.

    Raises
    ------
    ConfigError
        ``bits`` names a layer ``spec`` does not have, or a width outside [1, 16].
    """
    bits = {} if bits is None else bits
    if not isinstance(bits, dict):
        raise ConfigError(f"bits must be a dict {{layer: bits}} or None, got {bits!r}")
    unknown = sorted(set(bits) - set(spec.layer_names))
    if unknown:
        raise ConfigError(f"bits names layers {unknown} that {spec.name} does not have "
                          f"(layers: {list(spec.layer_names)})")
    return {op.name: check_bits(f"bits[{op.name!r}]", bits.get(op.name, DEFAULT_BITS[op.kind]))
            for op in spec.layers}


#: Keys of :func:`expand_bits` that name a group of layers rather than one layer.
BIT_GROUPS = {"all": KINDS, "conv": ("conv",), "fc": ("dense",), "dense": ("dense",)}


def expand_bits(spec: NetSpec, given: dict[str, int] | None) -> dict[str, int]:
    """Per-layer index widths from widths given by group (``all``, ``conv``, ``fc``) or by layer name.

    A layer name overrides its group, and ``conv`` / ``fc`` override ``all``, whatever the order they come
    in; layers nobody names keep :data:`DEFAULT_BITS`. This is the command line's ``--bits conv=8,ip1=4``.

    Raises
    ------
    ConfigError
        A key that is neither a group nor a layer of ``spec`` (a layer named like a group is ambiguous and
        refused too), or a width outside [1, 16].
    """
    given = {} if given is None else dict(given)
    clash = sorted(set(BIT_GROUPS) & set(spec.layer_names))
    if clash:
        raise ConfigError(f"{spec.name} has layers named {clash}, which --bits reads as layer groups")
    unknown = sorted(set(given) - set(BIT_GROUPS) - set(spec.layer_names))
    if unknown:
        raise ConfigError(f"bits names {unknown}, neither a layer of {spec.name} {list(spec.layer_names)} "
                          f"nor a group {sorted(BIT_GROUPS)}")
    per_layer: dict[str, int] = {}
    for group in ("all", "conv", "fc", "dense"):  # the more specific group wins
        if group in given:
            for op in spec.layers:
                if op.kind in BIT_GROUPS[group]:
                    per_layer[op.name] = given[group]
    per_layer |= {k: v for k, v in given.items() if k in spec.layer_names}
    return layer_bits(spec, per_layer)


def quantize_net(spec: NetSpec, params: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None,
                 *, bits: dict[str, int] | None = None, max_iter: int = 300) -> tuple[QuantizedLayer, ...]:
    """Weight sharing for every parametric layer of a (pruned) net.

    Parameters
    ----------
    spec : NetSpec
    params : dict of ndarray
        ``"<layer>.weight"`` / ``"<layer>.bias"``, float32, Caffe layouts.
    masks : dict of ndarray (bool), optional
        Same keys; missing means all kept (a dense net).
    bits : dict {layer: int}, optional
        Per-layer index widths over :data:`DEFAULT_BITS` (8 conv, 5 fc).
    max_iter : int
        Cap on Lloyd iterations per layer.

    Returns
    -------
    layers : tuple of QuantizedLayer, in ``spec`` order
    """
    check_params(spec, params)
    widths = layer_bits(spec, bits)
    out = []
    for op in spec.layers:
        wk, bk = f"{op.name}.weight", f"{op.name}.bias"
        if masks is None:
            mw, mb = np.ones(op.w_shape, dtype=bool), np.ones(op.b_shape, dtype=bool)
        else:
            missing = [k for k in (wk, bk) if k not in masks]
            if missing:
                raise CompressError(f"masks lack {missing}")
            mw, mb = np.asarray(masks[wk]), np.asarray(masks[bk])
        codebook, indices = quantize_weights(params[wk], mw, widths[op.name], max_iter=max_iter, name=wk)
        bias = np.asarray(params[bk]).astype(np.float32)
        if not np.isfinite(bias).all():
            raise CompressError(f"{bk} holds NaN or Inf; cannot compress it")
        out.append(QuantizedLayer(op.name, op.kind, widths[op.name], codebook, indices, mw.copy(), bias,
                                  mb.copy()))
    return tuple(out)


def dequantize_net(layers: tuple[QuantizedLayer, ...] | list[QuantizedLayer]
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(params, masks)`` keyed ``"<layer>.weight"`` / ``"<layer>.bias"``: shared weights, raw biases."""
    params: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for la in layers:
        params[f"{la.name}.weight"] = la.weight
        params[f"{la.name}.bias"] = la.bias.copy()
        masks[f"{la.name}.weight"] = la.mask.copy()
        masks[f"{la.name}.bias"] = la.bias_mask.copy()
    return params, masks
