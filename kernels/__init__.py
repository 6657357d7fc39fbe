"""Numba kernels (installed as ``refdns.kernels``), each op module beside its NumPy twin.

Code outside this package calls only the public wrappers of the op modules and :func:`check_csr`: a caller
that keeps a CSR matrix checks it once with :func:`check_csr` and may then pass ``check_weights=False`` on
every call.
"""

from refdns.kernels._check import check_csr

__all__ = ["check_csr"]
