"""glibc rand() written out, against the known sequence and against the real C library.

ctypes (and a C compiler, when there is one) appear here only, as oracles: the library never calls libc.
"""

import ctypes
import ctypes.util
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.caffe.glibc_rand import (
    RAND_MAX,
    GlibcRand,
    GlibcRandState,
    caffe_uniform,
    rand_to_float32,
)

# glibc's first ten rand() values after srand(1) (or with no srand at all).
GLIBC_SEED1 = [1804289383, 846930886, 1681692777, 1714636915, 1957747793,
               424238335, 719885386, 1649760492, 596516649, 1189641421]

# Seeds that exercise srandom_r's corners: 0 (taken as 1), int32 overflow (seed >= 2**31 is a negative
# int32 word, so C's truncating division differs from Python's floor division), 127773 (Schrage's q) and
# 2**31 - 1.
SEEDS = [0, 1, 2, 7, 42, 127773, 2147483647, 2**31, 2**31 + 5, 2**32 - 1]


def _glibc():
    """The C library through ctypes, or a skip when it is not glibc (another libc has another rand())."""
    name = ctypes.util.find_library("c")
    if name is None:
        pytest.skip("no C library found by ctypes")
    libc = ctypes.CDLL(name)
    try:
        version = libc.gnu_get_libc_version
    except AttributeError:
        pytest.skip(f"{name} is not glibc: its rand() is another generator")
    version.restype = ctypes.c_char_p
    libc.srand.argtypes = [ctypes.c_uint]
    libc.rand.restype = ctypes.c_int
    return libc


def _libc_rand(seed: int, n: int) -> list[int]:
    libc = _glibc()
    libc.srand(seed)
    return [libc.rand() for _ in range(n)]


def test_first_values_for_seed_1_are_glibcs():
    assert GlibcRand(1).rand_n(10).tolist() == GLIBC_SEED1
    assert GlibcRand().rand_n(10).tolist() == GLIBC_SEED1  # never seeded == srand(1)
    assert GlibcRand(0).rand_n(10).tolist() == GLIBC_SEED1  # srand(0) acts as srand(1)


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_libc_for_10000_values(seed):
    assert GlibcRand(seed).rand_n(10_000).tolist() == _libc_rand(seed, 10_000)


def test_rand_and_rand_n_are_one_stream():
    a = GlibcRand(5)
    b = GlibcRand(5)
    singles = [a.rand() for _ in range(100)]
    assert b.rand_n(37).tolist() + b.rand_n(63).tolist() == singles
    assert b.rand_n(0).shape == (0,)


def test_values_lie_in_0_to_rand_max():
    r = GlibcRand(3).rand_n(10_000)
    assert r.dtype == np.int64
    assert 0 <= r.min() and r.max() <= RAND_MAX


@given(seed=st.integers(0, 2**32 - 1), before=st.integers(0, 200), after=st.integers(1, 100))
def test_state_round_trip_continues_the_stream(seed, before, after):
    g = GlibcRand(seed)
    g.rand_n(before)
    state = g.get_state()
    expected = g.rand_n(after)
    assert state.table.dtype == np.uint32 and state.table.shape == (31,)
    assert GlibcRand.from_state(state).rand_n(after).tolist() == expected.tolist()
    h = GlibcRand(99)
    h.set_state(state)
    assert h.rand_n(after).tolist() == expected.tolist()
    # the saved state is a snapshot: drawing on does not change it
    assert GlibcRand.from_state(state).rand_n(after).tolist() == expected.tolist()


def test_state_survives_plain_data():
    """What a checkpoint holds (a uint32 array and an int) is enough to rebuild the generator."""
    g = GlibcRand(11)
    g.rand_n(1234)
    s = g.get_state()
    rebuilt = GlibcRandState(table=np.array(s.table.tolist(), dtype=np.int64), pos=int(s.pos))
    assert GlibcRand.from_state(rebuilt).rand_n(50).tolist() == g.rand_n(50).tolist()


@pytest.mark.parametrize("table, pos, match", [
    (np.zeros(30, np.uint32), 0, "shape"),
    (np.zeros(31, np.float32), 0, "dtype"),
    (np.full(31, -1, np.int64), 0, "uint32"),
    (np.full(31, 2**32, np.int64), 0, "uint32"),
    (np.zeros(31, np.uint32), 31, "pos"),
    (np.zeros(31, np.uint32), -1, "pos"),
    (np.zeros(31, np.uint32), True, "pos"),
    (np.zeros(31, np.uint32), 1.0, "pos"),
])
def test_bad_states_are_refused(table, pos, match):
    with pytest.raises(ValueError, match=match):
        GlibcRandState(table=table, pos=pos)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.0, True, "1"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises((TypeError, ValueError), match="seed"):
        GlibcRand(seed)


def test_set_state_wants_a_state():
    with pytest.raises(TypeError, match="GlibcRandState"):
        GlibcRand().set_state((np.zeros(31, np.uint32), 0))


# ---- (float)rand() / (float)RAND_MAX ----------------------------------------------------------------------

def test_uniform_is_numpys_float32_division():
    r = GlibcRand(1).rand_n(10_000)
    expected = np.array([np.float32(v) / np.float32(RAND_MAX) for v in r.tolist()], dtype=np.float32)
    got = caffe_uniform(1, 10_000)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    g = GlibcRand(1)
    singles = np.array([g.uniform() for _ in range(10_000)], dtype=np.float32)
    assert np.array_equal(singles.view(np.uint32), got.view(np.uint32))
    assert isinstance(g.uniform(), np.float32)


def test_float_cast_rounds_to_nearest_even():
    # 2**24 + 1 is a tie between 2**24 and 2**24 + 2: even wins; 2**24 + 3 goes up to 2**24 + 4.
    r = np.array([0, 1, 2**24 + 1, 2**24 + 3, RAND_MAX - 63, RAND_MAX - 64, RAND_MAX], dtype=np.int64)
    u = rand_to_float32(r)
    scale = np.float32(2.0**-31)
    expected = [0.0, np.float32(1) * scale, np.float32(2**24) * scale, np.float32(2**24 + 4) * scale, 1.0,
                np.float32(2**31 - 128) * scale, 1.0]
    assert u.tolist() == [float(v) for v in expected]


def test_rand_to_float32_refuses_what_rand_never_returns():
    with pytest.raises(ValueError, match="RAND_MAX"):
        rand_to_float32(np.array([RAND_MAX + 1]))
    with pytest.raises(ValueError, match="RAND_MAX"):
        rand_to_float32(np.array([-1]))
    with pytest.raises(TypeError, match="integers"):
        rand_to_float32(np.array([0.5]))


@pytest.mark.parametrize("seed", [1, 7, 2**31 + 5])
def test_uniform_matches_c_float_arithmetic_through_libc(seed):
    """(float)r by libc's strtof (correctly rounded), / 2**31 by libm's ldexpf: (float)RAND_MAX is 2**31."""
    libc = _glibc()
    libc.strtof.restype = ctypes.c_float
    libc.strtof.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.ldexpf.restype = ctypes.c_float
    libm.ldexpf.argtypes = [ctypes.c_float, ctypes.c_int]
    r = _libc_rand(seed, 10_000)
    c = np.array([libm.ldexpf(libc.strtof(str(v).encode(), None), -31) for v in r], dtype=np.float32)
    got = caffe_uniform(seed, 10_000)
    assert np.array_equal(got.view(np.uint32), c.view(np.uint32))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to build the C oracle")
@pytest.mark.parametrize("seed", [1, 7])
def test_uniform_matches_the_c_expression_compiled(tmp_path, seed):
    """The authors' expression compiled: bits of static_cast<float>(rand()) / static_cast<float>(RAND_MAX)."""
    _glibc()
    src = tmp_path / "draw.c"
    src.write_text(
        "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
        "int main(int argc, char **argv) {\n"
        "  srand((unsigned)strtoul(argv[1], 0, 10));\n"
        "  for (int i = 0; i < 10000; ++i) {\n"
        "    float r = (float)rand() / (float)RAND_MAX;\n"
        "    unsigned b; memcpy(&b, &r, 4); printf(\"%u\\n\", b);\n"
        "  }\n  return 0;\n}\n")
    exe = tmp_path / "draw"
    subprocess.run(["cc", "-O0", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe), str(seed)], check=True, capture_output=True, text=True).stdout
    bits = np.array([int(v) for v in out.split()], dtype=np.uint32)
    assert np.array_equal(caffe_uniform(seed, 10_000).view(np.uint32), bits)
