"""The thread setting: applied to BLAS and Numba for the block, restored after, refused when impossible."""

import numba
import pytest
from threadpoolctl import threadpool_info

from refdns.errors import ConfigError
from refdns.perf import limit_threads


def _blas_threads():
    return {p["internal_api"]: p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def test_limit_threads_sets_blas_and_numba_and_restores_them():
    before_numba, before_blas = numba.get_num_threads(), _blas_threads()
    with limit_threads(1):
        assert numba.get_num_threads() == 1
        assert all(n == 1 for n in _blas_threads().values())
    assert numba.get_num_threads() == before_numba and _blas_threads() == before_blas


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, numba.config.NUMBA_NUM_THREADS + 1])
def test_impossible_thread_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="threads"):
        with limit_threads(bad):
            pass
