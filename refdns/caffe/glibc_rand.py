"""glibc's ``rand()``, written out, so refdns can make the DNS authors' Caffe mask-update draws anywhere.

The authors' DNS layers (``compress_inner_product_layer.cpp``, ``compress_conv_layer.cpp``) decide whether
to update a mask with ``r = static_cast<float>(rand()) / static_cast<float>(RAND_MAX)``, C ``rand()`` never
seeded, i.e. glibc's default stream (the same as after ``srand(1)``). Calling libc through ctypes would tie
a run to the C library of the machine it runs on (musl, macOS and MSVC have other generators); this module
is glibc's generator itself, so the stream is the same everywhere.

glibc's ``rand()`` is ``random()`` with its default TYPE_3 state (stdlib/random_r.c): an additive lagged
Fibonacci generator of degree 31 and separation 3 on 32-bit words,

    ``r[i] = r[i-31] + r[i-3]  (mod 2**32)``,  output ``r[i] >> 1``  (0 .. RAND_MAX = 2**31 - 1),

seeded by ``srand(seed)``: ``r[0] = seed`` (as int32; 0 is taken as 1), ``r[i] = 16807 * r[i-1] mod
(2**31 - 1)`` for i = 1..30 (Schrage's method, C truncating division), ``r[31..33] = r[0..2]``, and the
first 310 outputs ``r[34..343]`` discarded: the first ``rand()`` is ``r[344] >> 1``.

State
-----
The state is the last 31 words of the sequence (uint32) in a ring, plus the ring position of the oldest one
(``r[i-31]``, which the next output overwrites). :meth:`GlibcRand.get_state` returns both as plain data, so a
checkpoint can hold them and :meth:`GlibcRand.set_state` continues the stream exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RAND_MAX = 2147483647  # glibc: 2**31 - 1
DEGREE = 31  # TYPE_3: rand_deg
SEPARATION = 3  # TYPE_3: rand_sep
_DISCARD = 10 * DEGREE  # srandom_r: kc = rand_deg * 10 outputs thrown away after seeding
_MASK32 = 0xFFFFFFFF
_RAND_MAX_F32 = np.float32(float(RAND_MAX))  # (float)RAND_MAX rounds to 2**31


@dataclass(frozen=True)
class GlibcRandState:
    """A snapshot of :class:`GlibcRand`.

    Attributes
    ----------
    table : ndarray, shape (31,), uint32
        The last 31 words of the sequence, in a ring.
    pos : int
        Ring index of the oldest word, ``r[i-31]``; the next output is
        ``(table[pos] + table[(pos + 28) % 31]) >> 1`` (mod 2**32).
    """

    table: np.ndarray
    pos: int

    def __post_init__(self):
        table = np.asarray(self.table)
        if table.shape != (DEGREE,):
            raise ValueError(f"table has shape {table.shape}, expected ({DEGREE},)")
        if table.dtype.kind not in "ui":
            raise ValueError(f"table has dtype {table.dtype}, expected an integer dtype (uint32)")
        if table.size and (int(table.min()) < 0 or int(table.max()) > _MASK32):
            raise ValueError("table values must lie in 0 .. 2**32 - 1 (uint32 words)")
        pos_is_int = isinstance(self.pos, (int, np.integer)) and not isinstance(self.pos, bool)
        if not pos_is_int or not 0 <= self.pos < DEGREE:
            raise ValueError(f"pos={self.pos!r} must be an int in 0 .. {DEGREE - 1}")
        table = table.astype(np.uint32)
        table.flags.writeable = False
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "pos", int(self.pos))


def _seed_table(seed: int) -> list[int]:
    """The 31 words ``srandom_r`` writes before discarding, as Python ints in 0 .. 2**32 - 1."""
    seed &= _MASK32  # srand takes an unsigned int
    if seed == 0:
        seed = 1
    word = seed - (1 << 32) if seed >= 1 << 31 else seed  # int32_t word = seed
    words = [seed]
    for _ in range(1, DEGREE):
        # C's / and % truncate toward zero (word may be negative for seeds >= 2**31).
        hi = abs(word) // 127773 * (1 if word >= 0 else -1)
        lo = word - hi * 127773
        word = 16807 * lo - 2836 * hi  # = 16807 * word mod (2**31 - 1), without overflowing 31 bits
        if word < 0:
            word += 2147483647
        words.append(word & _MASK32)
    return words


class GlibcRand:
    """glibc ``rand()`` after ``srand(seed)``; ``GlibcRand()`` is the never-seeded stream (seed 1).

    Examples
    --------
    >>> g = GlibcRand(1)
    >>> [g.rand() for _ in range(3)]
    [1804289383, 846930886, 1681692777]
    """

    def __init__(self, seed: int = 1):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed={seed!r} must be an int (srand takes an unsigned int)")
        if not 0 <= int(seed) <= _MASK32:
            raise ValueError(f"seed={seed!r} must lie in 0 .. 2**32 - 1 (srand takes an unsigned int)")
        self._table = _seed_table(int(seed))
        # glibc starts fptr at state[rand_sep] and rptr at state[0]: read as a ring of the last 31 words,
        # r[31..33] are r[0..2] (in slots 0..2) and the oldest word, r[3], is in slot 3.
        self._pos = SEPARATION
        for _ in range(_DISCARD):
            self._next_word()

    def _next_word(self) -> int:
        t = self._table
        p = self._pos
        # r[i] = r[i-31] + r[i-3]: r[i-31] sits at p, r[i-3] three places before the ring's end (p + 28).
        w = (t[p] + t[(p + DEGREE - SEPARATION) % DEGREE]) & _MASK32
        t[p] = w
        self._pos = p + 1 if p + 1 < DEGREE else 0
        return w

    def rand(self) -> int:
        """The next ``rand()``: an int in 0 .. RAND_MAX."""
        return self._next_word() >> 1

    def rand_n(self, n: int) -> np.ndarray:
        """The next ``n`` values of ``rand()``.

        Returns
        -------
        r : ndarray, shape (n,), int64
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n={n!r} must be a non-negative int")
        return np.fromiter((self._next_word() >> 1 for _ in range(int(n))), dtype=np.int64, count=int(n))

    def uniform(self) -> np.float32:
        """The next Caffe DNS draw, ``(float)rand() / (float)RAND_MAX``, in [0, 1]."""
        # scalar twin of rand_to_float32: int -> float64 is exact below 2**53; float64 -> float32 rounds once
        return np.float32(float(self.rand())) / _RAND_MAX_F32

    def uniform_n(self, n: int) -> np.ndarray:
        """The next ``n`` Caffe DNS draws; ndarray, shape (n,), float32."""
        return rand_to_float32(self.rand_n(n))

    def get_state(self) -> GlibcRandState:
        return GlibcRandState(table=np.array(self._table, dtype=np.uint32), pos=self._pos)

    def set_state(self, state: GlibcRandState) -> None:
        if not isinstance(state, GlibcRandState):
            raise TypeError(f"state must be a GlibcRandState, got {type(state).__name__}")
        self._table = [int(v) for v in state.table]
        self._pos = state.pos

    @classmethod
    def from_state(cls, state: GlibcRandState) -> GlibcRand:
        g = cls.__new__(cls)
        g.set_state(state)
        return g


def rand_to_float32(r: np.ndarray) -> np.ndarray:
    """``static_cast<float>(r) / static_cast<float>(RAND_MAX)`` for ``rand()`` values ``r``, as C computes it.

    ``(float)r`` rounds to nearest (ties to even): going through float64, which holds every value up to
    RAND_MAX exactly, rounds once, whatever the platform's int64 -> float32 cast does. ``(float)RAND_MAX`` is
    2**31 exactly; the quotient is an IEEE float32 division, correctly rounded.

    Parameters
    ----------
    r : ndarray, int, values in 0 .. RAND_MAX

    Returns
    -------
    u : ndarray, same shape, float32, in [0, 1]
    """
    r = np.asarray(r)
    if r.dtype.kind not in "ui":
        raise TypeError(f"r has dtype {r.dtype}, expected integers (rand() values)")
    if r.size and (int(r.min()) < 0 or int(r.max()) > RAND_MAX):
        raise ValueError(f"r must lie in 0 .. RAND_MAX = {RAND_MAX}")
    num = r.astype(np.float64).astype(np.float32)  # (float)rand(): one rounding, from an exact float64
    return num / _RAND_MAX_F32


def caffe_uniform(seed: int, n: int) -> np.ndarray:
    """The first ``n`` DNS draws ``(float)rand() / (float)RAND_MAX`` after ``srand(seed)``.

    ``caffe_uniform(1, n)`` is the stream of the authors' Caffe as released (``rand()`` never seeded).

    Returns
    -------
    u : ndarray, shape (n,), float32
    """
    return GlibcRand(seed).uniform_n(n)
