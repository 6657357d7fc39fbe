"""The DNS mask update (Guo et al. 2016, eq. (3)) in one pass, in place, counting what changed.

``# DNS eq. (3): h_k(w) = 0 if |w| <= a;  T if a < |w| <= b;  1 if |w| > b``

Caffe reading (``inclusive_prune=True``): a kept entry is pruned where |w| <= a, a pruned one spliced back
where |w| > b. Distiller reading (``False``): pruned where |w| < a, spliced where |w| >= b.

The NumPy twin is :func:`hysteresis_update_ref` (boolean algebra on whole arrays) plus ``count_nonzero``
passes for the statistics; the kernel makes one pass and no temporaries. The thresholds
are rounded to the weights' dtype first, which is what NumPy 2 does when it compares a float32 array with a
Python float (NEP 50), so the two agree bit for bit, boundaries included.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@njit(cache=True)
def _hysteresis_update(mask, w, a, b, inclusive_prune):
    # mask: 1-D uint8 view of the bool mask (0/1), updated in place; w: 1-D float; a, b: in w's dtype.
    # Branch-free 0/1 arithmetic: LLVM vectorises it (2.5x faster than if/else on a 235,200-entry layer).
    # "Stays kept" is |w| > a (not "pruned" is |w| <= a), so a NaN weight is pruned, as in the twin.
    pruned = 0
    spliced = 0
    kept = 0
    for i in range(w.shape[0]):
        aw = abs(w[i])
        m = np.int64(mask[i])
        if inclusive_prune:  # loop-invariant: LLVM hoists it out of the loop
            keep = np.int64(aw > a)
            splice = np.int64(aw > b)
        else:
            keep = np.int64(aw >= a)
            splice = np.int64(aw >= b)
        new = (m & keep) | ((1 - m) & splice)  # DNS eq. (3): T stays 1 while kept, becomes 1 on a splice
        pruned += m & (1 - new)
        spliced += (1 - m) & new
        kept += new
        mask[i] = new
    return pruned, spliced, kept


def hysteresis_update(mask: np.ndarray, w: np.ndarray, a: float, b: float, *,
                      inclusive_prune: bool = True) -> tuple[int, int, int]:
    """Apply DNS eq. (3) to ``mask`` in place and count the changes.

    Parameters
    ----------
    mask : ndarray, any shape, bool, C-contiguous
        The current mask T (True = kept); overwritten with the new one.
    w : ndarray, shape of mask, float32 or float64
        The dense weights (all of W, pruned entries included).
    a, b : float
        The band, a <= b; rounded to ``w.dtype`` before comparing (as NumPy does).
    inclusive_prune : bool
        True for Caffe's boundaries (|w| == a prunes, |w| == b does not splice), False for Distiller's.

    Returns
    -------
    pruned : int
        Entries that went from kept to pruned.
    spliced : int
        Entries that went from pruned to kept.
    kept : int
        Kept entries after the update.
    """
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"mask: expected a bool ndarray, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if not isinstance(w, np.ndarray) or w.dtype not in _FLOATS:
        raise TypeError(f"w: expected a float32/float64 ndarray, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.shape != mask.shape:
        raise ValueError(f"w.shape={w.shape}: expected {mask.shape}, the mask's shape")
    if not mask.flags.c_contiguous:
        raise ValueError("mask must be C-contiguous (it is updated in place through a flat view)")
    t = w.dtype.type
    p, s, k = _hysteresis_update(mask.reshape(-1).view(np.uint8), np.ascontiguousarray(w).reshape(-1), t(a),
                                 t(b), bool(inclusive_prune))
    return int(p), int(s), int(k)


def hysteresis_update_ref(mask: np.ndarray, w: np.ndarray, a: float, b: float, *,
                          inclusive_prune: bool = True) -> tuple[int, int, int]:
    """The NumPy twin, written as boolean algebra on whole arrays: ``T' = (T & keep) | (~T & splice)``.

    (:func:`refdns.prune.dns.hysteresis` states the same rule with ``np.where``; tests/prune/test_dns.py
    checks the kernel against both.)
    """
    aw = np.abs(w)
    t = w.dtype.type
    keep = aw > t(a) if inclusive_prune else aw >= t(a)
    splice = aw > t(b) if inclusive_prune else aw >= t(b)
    new = (mask & keep) | (~mask & splice)
    pruned = int(np.count_nonzero(mask & ~new))
    spliced = int(np.count_nonzero(~mask & new))
    mask[...] = new
    return pruned, spliced, int(np.count_nonzero(new))
