"""Process-wide performance settings that the library itself never changes behind a caller's back.

:func:`tune_malloc` is called by the CLI (which owns its process) and by the benchmarks. Library code
(``refdns.train`` and friends) never calls it: a program that imports refdns keeps its own allocator settings.
:func:`limit_threads` sets the BLAS and Numba thread counts for one block (an experiment's ``threads``) and
restores them after it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager

from refdns.errors import ConfigError

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_done = False


def tune_malloc(*, heap_bytes: int = 256 << 20) -> bool:
    """Keep large temporaries on the heap instead of a fresh ``mmap`` per allocation (glibc only).

    glibc serves allocations above its mmap threshold (128 KiB at start) with a new mapping, and
    returns it to the kernel on free, so every training step's multi-megabyte temporaries (im2col
    columns, activations) page-fault afresh: about 4,400 faults per LeNet-5 step, measured; this setting
    removed them (conv+pool stack 23 ms -> 15 ms per iteration). Returns False where it does not apply.
    Numerically it changes nothing.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, heap_bytes) and mallopt(_M_TRIM_THRESHOLD, 2 * heap_bytes)
    ok = ok and mallopt(_M_TOP_PAD, 64 << 20)
    _done = bool(ok)
    return _done


@contextmanager
def limit_threads(threads: int):
    """Run the block with ``threads`` BLAS threads (threadpoolctl) and Numba threads, then restore both.

    The thread count is part of what fixes a run's numbers: a BLAS product splits its sums differently with
    a different count, so the same seed gives bit-different weights (see the README's "What is
    bit-reproducible"). On the 2-core development machine 1 thread was also the fastest for these small
    products: 2,000 LeNet-300-100 iterations took 18.7 s with 1 BLAS thread and 166.5 s with 2 on a busy
    machine, hence the default of 1. ``validate/bench_threads.py`` measures the default against each explicit
    setting (train and infer, LeNet-300-100 and LeNet-5, on the machine as it is and beside a busy loop it
    starts); there --threads 2 lost to the default everywhere (100 LeNet-300-100 iterations 3.2 s against
    78 s, 30 LeNet-5 iterations 21 s against 57 s, dense LeNet-5 inference 14 s against 20 s, load average 6
    on 2 cores; validate/results/bench_threads.md).
    """
    import numba
    from threadpoolctl import threadpool_limits

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r} must be an integer >= 1")
    most = numba.config.NUMBA_NUM_THREADS
    if threads > most:
        raise ConfigError(f"threads={threads} is more than the {most} threads Numba was started with "
                          "(NUMBA_NUM_THREADS)")
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        numba.set_num_threads(before)
