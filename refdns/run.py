"""The home of a run: its configuration, everything that determines its future, and what it leaves behind.

:class:`RunState` is what :mod:`refdns.train` advances one step at a time and what :mod:`refdns.checkpoint`
stores. All randomness comes from ``np.random.Generator`` streams held in it, split from the seed by
:func:`new_run`, so a run is fixed by its seed, and a resumed run continues the very same streams: each
stream restores itself from plain arrays and ints (:meth:`BatchStream.state_dict`,
:meth:`BatchStream.from_state`, :func:`generator_from_state`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refdns.config import check_number
from refdns.effective import EffectiveParams
from refdns.layers import Workspace
from refdns.nets.sequential import NetSpec, init_params
from refdns.optim import SGDConfig, zeros_like_params
from refdns.prune.base import MaskUpdate, all_ones_masks

DATA_ORDERS = ("shuffled", "caffe")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train; defaults are Caffe's MNIST recipe (10,000 iterations at batch 64)."""

    iterations: int = 10_000
    batch_size: int = 64
    test_interval: int = 1_000
    display_interval: int = 100
    sgd: SGDConfig = field(default_factory=SGDConfig)
    # "shuffled": a fresh permutation each epoch; "caffe": the training set in file order, batch after batch,
    # wrapping (Caffe's LMDB data layer, which the DNS authors trained with). DNS's result moves with it.
    data_order: str = "shuffled"

    def __post_init__(self):
        check_number("iterations", self.iterations, lo=0, integer=True)
        check_number("batch_size", self.batch_size, lo=1, integer=True)
        check_number("test_interval", self.test_interval, lo=0, integer=True)
        check_number("display_interval", self.display_interval, lo=1, integer=True)
        if self.data_order not in DATA_ORDERS:
            raise ValueError(f"data_order={self.data_order!r} must be one of {DATA_ORDERS}")
        if isinstance(self.sgd, dict):
            object.__setattr__(self, "sgd", SGDConfig(**self.sgd))
        if not isinstance(self.sgd, SGDConfig):
            raise TypeError(f"sgd must be an SGDConfig, got {type(self.sgd).__name__}")


def generator_from_state(state: Mapping[str, Any]) -> np.random.Generator:
    """The generator whose ``bit_generator.state`` is ``state`` (a NumPy bit-generator state dict)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"rng state must be a bit-generator state dict, got {type(state).__name__}")
    name = state.get("bit_generator")
    bitgen_cls = getattr(np.random, str(name), None)
    if not (isinstance(bitgen_cls, type) and issubclass(bitgen_cls, np.random.BitGenerator)):
        raise ValueError(f"unknown bit generator {name!r} in rng state")
    bg = bitgen_cls()
    bg.state = dict(state)
    return np.random.Generator(bg)


class BatchStream:
    """Mini-batches that wrap across epochs, like Caffe's data layer reading on and on.

    ``order="shuffled"``: each epoch in a fresh order drawn from ``rng``. ``order="caffe"``: the examples in
    file order every epoch (``perm`` is ``arange(n)``, ``rng`` is never drawn from), as Caffe's LMDB data
    layer reads them: batch 938 of MNIST at batch size 64 is examples 59968..59999 then 0..31.

    Its whole state is ``perm`` (this epoch's order), ``pos`` (the next index into it), ``n``,
    ``batch_size``, ``order`` and the generator ``rng`` that draws the next epochs' orders: :meth:`state_dict`
    gives it as plain values, :meth:`from_state` continues from them bit-exactly.
    """

    STATE_KEYS = ("perm", "pos", "n", "batch_size", "bit_generator", "order")

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        rng: np.random.Generator,
        perm: np.ndarray | None = None,
        pos: int = 0,
        order: str = "shuffled",
    ):
        """A new stream draws its first epoch's order from ``rng``; given ``perm`` and ``pos`` it continues
        that epoch instead (:meth:`from_state`)."""
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the {n} training examples")
        if order not in DATA_ORDERS:
            raise ValueError(f"order={order!r} must be one of {DATA_ORDERS}")
        self.n = n
        self.batch_size = batch_size
        self.rng = rng
        self.order = order
        self.perm = self._epoch_order() if perm is None else perm
        self.pos = pos

    def _epoch_order(self) -> np.ndarray:
        if self.order == "caffe":
            return np.arange(self.n, dtype=np.int64)
        return self.rng.permutation(self.n)

    def _next_epoch(self) -> None:
        """The next epoch's order, written over the current one: ``rng.permutation(n)`` is ``arange(n)``
        shuffled, so sorting the old order back to ``arange(n)`` and shuffling it in place draws the same
        order from the same stream without a new n-element array (and its page faults) each epoch."""
        if self.order == "caffe":
            return  # file order again
        self.perm.sort()
        self.rng.shuffle(self.perm)

    def next_indices(self) -> np.ndarray:
        """The next batch's example indices (a new small array: the order itself is reused next epoch)."""
        end = self.pos + self.batch_size
        if end <= self.n:
            idx = self.perm[self.pos : end].copy()
            self.pos = end
            return idx
        head = self.perm[self.pos :].copy()
        self._next_epoch()
        self.pos = self.batch_size - len(head)
        return np.concatenate([head, self.perm[: self.pos]])

    def state_dict(self) -> dict[str, Any]:
        """``perm`` (int64 array, a copy), ``pos``, ``n``, ``batch_size`` (ints), ``bit_generator`` (the
        generator's state dict, JSON-ready) and ``order``."""
        return {
            "perm": np.array(self.perm, dtype=np.int64, copy=True),
            "pos": int(self.pos),
            "n": int(self.n),
            "batch_size": int(self.batch_size),
            "bit_generator": self.rng.bit_generator.state,
            "order": self.order,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> BatchStream:
        """The stream :meth:`state_dict` described; ValueError names the first field that cannot be one.

        A state without ``order`` (written before refdns had data orders) is a shuffled stream."""
        keys = set(state) | {"order"}
        if keys != set(cls.STATE_KEYS):
            raise ValueError(f"state has keys {sorted(keys)}, expected {sorted(cls.STATE_KEYS)}")
        perm = np.asarray(state["perm"])
        n, pos, batch_size = state["n"], state["pos"], state["batch_size"]
        for name, value in (("n", n), ("pos", pos), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name}={value!r} must be an int")
        n, pos, batch_size = int(n), int(pos), int(batch_size)
        if perm.dtype != np.int64 or perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
            raise ValueError(f"perm ({perm.shape} {perm.dtype}) is not a permutation of 0..{n - 1} (int64)")
        if not 0 <= pos <= n:
            raise ValueError(f"pos={pos} outside [0, {n}]")
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size={batch_size} outside [1, {n}]")
        order = state.get("order", "shuffled")
        if order not in DATA_ORDERS:
            raise ValueError(f"order={order!r} must be one of {DATA_ORDERS}")
        if order == "caffe" and not np.array_equal(perm, np.arange(n)):
            raise ValueError("perm of a caffe-order stream must be 0..n-1 in file order")
        rng = generator_from_state(state["bit_generator"])
        return cls(n, batch_size, rng=rng, perm=np.array(perm, copy=True), pos=pos, order=order)


@dataclass
class History:
    """What a run leaves behind, besides its parameters."""

    loss: list[tuple[int, float]] = field(default_factory=list)  # (iteration, training loss)
    lr: list[tuple[int, float]] = field(default_factory=list)
    test_error: list[tuple[int, float]] = field(default_factory=list)
    mask_updates: list[MaskUpdate] = field(default_factory=list)  # one per layer update


@dataclass
class RunState:
    """Everything that determines the future of a run (and what a checkpoint stores)."""

    spec: NetSpec
    params: dict[str, np.ndarray]
    velocity: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    iteration: int
    data: BatchStream
    mask_rng: np.random.Generator
    method_state: dict[str, np.ndarray] = field(default_factory=dict)
    history: History = field(default_factory=History)
    seed: int | None = None
    # Per-run scratch (buffers, sparse index structures), rebuilt on demand; not state, never saved.
    workspace: EffectiveParams | None = field(default=None, repr=False, compare=False)
    # The training step's activation, cache and gradient buffers (refdns.layers.workspace); likewise.
    scratch: Workspace | None = field(default=None, repr=False, compare=False)


def new_run(
    spec: NetSpec,
    n_train: int,
    cfg: TrainConfig,
    *,
    seed: int,
    params: dict[str, np.ndarray] | None = None,
    masks: dict[str, np.ndarray] | None = None,
    dtype=np.float32,
) -> RunState:
    """A fresh run: params from Caffe xavier init (or the given ones, copied), zero velocity.

    The seed's generator is split with ``spawn`` into three independent streams: initialisation, data order
    and mask draws, so (for example) a different init never changes the batch order.
    """
    init_rng, data_rng, mask_rng = np.random.default_rng(seed).spawn(3)
    if params is None:
        params = init_params(spec, rng=init_rng, dtype=dtype)
    else:
        params = {k: np.array(v, dtype=dtype, copy=True) for k, v in params.items()}
    if masks is None:
        masks = all_ones_masks(params)
    else:
        masks = {k: np.array(m, dtype=bool) for k, m in masks.items()}
    return RunState(
        spec=spec,
        params=params,
        velocity=zeros_like_params(params),
        masks=masks,
        iteration=0,
        data=BatchStream(n_train, cfg.batch_size, rng=data_rng, order=cfg.data_order),
        mask_rng=mask_rng,
        seed=seed,
    )


def effective_params(params: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``W * T`` for every parameter (a fresh array; ``params`` is untouched)."""
    return {k: params[k] * masks[k] if not masks[k].all() else params[k] for k in params}
