"""Named tolerances, one place for every numeric threshold the tests use.

Two kinds:

- Gradient checks (float64 only): analytic gradients against central differences.
- Comparisons of one quantity computed two ways (e.g. im2col against a loop reference, or a float32 run
  against a float64 oracle). Different summation orders differ by rounding, which grows with the number
  of summed terms and their size, so ``atol`` is meant to be scaled by the magnitude of the expected
  values: use :func:`assert_close`, which does that.
"""

from __future__ import annotations

import numpy as np

# Central-difference step h. Every layer except softmax is piecewise linear in each input, so the
# difference quotient is exact away from kinks and only rounding matters (error ~ eps * |L| / h):
# a larger h is more accurate. 1e-5 keeps that rounding near 1e-9 for the test sizes while staying
# 100x below KINK_MARGIN; softmax's truncation error is ~h**2 = 1e-10.
GRADCHECK_STEP = 1e-5

# Largest accepted gradcheck error, as defined in tests.gradcheck.rel_error.
GRADCHECK_RTOL = 1e-6

# Denominator floor of tests.gradcheck.rel_error: gradients smaller than this are compared in absolute
# terms. Without a floor an analytic gradient that cancels to exactly 0 is compared with pure rounding
# noise of the difference quotient, which is a relative error of 1.
GRADCHECK_FLOOR = 1.0

# Inputs of kinked layers stay this far from a kink (ReLU at 0, max-pool ties): 100 steps of h, so a
# central difference never straddles one.
KINK_MARGIN = 100 * GRADCHECK_STEP

# Same computation, different summation order: |a - e| <= atol * scale + rtol * |e| with
# scale = max(1, max|e|). float32 allows ~100 ulp of the scale (a few hundred summed products).
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
ATOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def tolerance(dtype: np.dtype | type) -> tuple[float, float]:
    """(rtol, atol) for comparing results computed in ``dtype``."""
    dt = np.dtype(dtype)
    return RTOL[dt], ATOL[dt]


def assert_close(actual: np.ndarray, expected: np.ndarray, *, dtype: np.dtype | type | None = None) -> None:
    """Assert ``|actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|`` element-wise.

    ``dtype`` picks the tolerances; it defaults to ``actual.dtype`` (pass the lower precision of the two
    when comparing against a float64 oracle).
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    rtol, atol = tolerance(actual.dtype if dtype is None else dtype)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(
        actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol * scale
    )
