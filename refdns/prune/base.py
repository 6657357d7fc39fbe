"""The one interface every pruning method implements.

A method owns two decisions and nothing else:

1. **Which entries are masked**: :meth:`PruningMethod.update_masks` is called before every forward pass
   and may change the masks in place (DNS's prune/splice; a one-shot method changes them once).
2. **What the gradient does to masked entries** (:attr:`PruningMethod.grad_through_mask`):
   - ``True`` (DNS, Guo et al. eq. (2)): dL/d(W*T) is applied to *every* entry of W, pruned ones included,
     so a pruned weight can grow back and be spliced in again; momentum and weight decay act on all of W.
   - ``False`` (Han et al., magnitude and random baselines): masked entries are held at exactly zero: the
     gradient is masked, and so is the momentum buffer, or momentum would revive them.

The training loop (:mod:`refdns.train`) applies the mask to form ``w_eff = w * mask``, runs the hand-written
forward/backward on ``w_eff`` and then follows the method's gradient rule. Adding a method means adding one
file in :mod:`refdns.prune` with a frozen config and a subclass of :class:`PruningMethod` that sets ``name``
and ``config_type`` and implements its rule (and, to be offered by ``reproduce``, :meth:`PruningMethod.recipe`);
everything else (construction, ``config_dict``, overrides) is written once in the base. :func:`methods` finds it (so ``refdns reproduce --method NAME``
runs it with no edit elsewhere), and :meth:`PruningMethod.schedule_iterations` tells the pipeline how long
the method trains when its schedule fixes that (Han's rounds; 0 for a one-shot prune without retraining).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from refdns.config import to_dict
from refdns.errors import ConfigError
from refdns.nets.sequential import NetSpec


@dataclass(frozen=True)
class Recipe:
    """A method's default settings for a net: its config, plus the solver's base lr and the pruning phase's
    length (``iterations=None``: the method's own schedule decides, see
    :meth:`PruningMethod.schedule_iterations`). ``note`` says how it differs from the paper's or authors'."""

    config: Any
    base_lr: float = 0.01
    iterations: int | None = None
    note: str = ""


@dataclass(frozen=True)
class MaskUpdate:
    """One layer's mask update at one iteration: a row of a run's history (and of its checkpoint).

    Counts are entries of the layer's weights and biases together (OBD and OBS: weights only).

    Attributes
    ----------
    iteration : int
        The iteration whose forward pass first used the new masks.
    layer : str
        The Caffe layer name, e.g. ``"ip1"``.
    pruned, spliced : int
        Entries this update switched off, and switched back on (DNS's splicing; 0 for the other methods).
    kept, total : int
        Entries on after the update, and all entries.
    """

    iteration: int
    layer: str
    pruned: int
    spliced: int
    kept: int
    total: int

    def __post_init__(self):
        if not isinstance(self.layer, str) or not self.layer:
            raise TypeError(f"layer={self.layer!r} must be a non-empty str")
        for name in ("iteration", "pruned", "spliced", "kept", "total"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TypeError(f"{name}={value!r} must be a non-negative int")
        if self.total < 1 or self.kept > self.total:
            raise ValueError(f"kept={self.kept}, total={self.total} must satisfy kept <= total, total >= 1")

    @property
    def density(self) -> float:
        """``kept / total``, the fraction of the layer's entries left on."""
        return self.kept / self.total

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (the checkpoint's columns; ``density`` is not a field)."""
        return dataclasses.asdict(self)


class PruningMethod:
    """Base class: no pruning (all-ones masks, nothing ever changes).

    A subclass sets ``name``, ``config_type`` (its frozen config dataclass) and ``grad_through_mask``, and
    implements its rule in :meth:`update_masks`; construction, :meth:`config_dict` and
    :meth:`with_overrides` are written once, here. Default settings per net come from :meth:`recipe`, whose
    ``variants`` name the recipes a method offers (``"refdns"`` first, the default).
    """

    name: str = "dense"
    grad_through_mask: bool = True
    config_type: type | None = None
    variants: tuple[str, ...] = ("refdns",)
    # A one-shot method sets its masks once, before training; a run of zero iterations still applies them
    # (pruning without retraining). Any other method changes nothing in zero iterations.
    one_shot: bool = False

    def __init__(self, config: Any = None):
        if self.config_type is not None and not isinstance(config, self.config_type):
            raise TypeError(f"config must be a {self.config_type.__name__}, got {type(config).__name__}")
        self.config = config

    @classmethod
    def recipe(cls, net: str, variant: str = "refdns") -> Recipe:
        """refdns's default settings for ``net`` (what ``refdns reproduce`` runs)."""
        raise ConfigError(f"method {cls.name!r} has no default recipe for {net!r}")

    @classmethod
    def from_recipe(cls, net: str, variant: str = "refdns") -> PruningMethod:
        """The method configured with :meth:`recipe`'s settings."""
        return cls(cls.recipe(net, variant).config)

    def with_overrides(self, **changes: Any) -> PruningMethod:
        """A copy of the method whose config has ``changes`` applied (validated by the config itself)."""
        if not changes:
            return self
        return self._rebuild(dataclasses.replace(self.config, **changes))

    def _rebuild(self, config: Any) -> PruningMethod:
        return type(self)(config)

    def config_dict(self) -> dict[str, Any]:
        """The method's full configuration, JSON-ready, stored in every checkpoint."""
        if self.config is None:
            return {}
        return to_dict(self.config) | {"method": self.name}

    def schedule_iterations(self) -> int | None:
        """Training iterations the method's own schedule needs, or None when the caller chooses (DNS)."""
        return None

    def lr_iteration(self, iteration: int) -> int:
        """The iteration the lr policy reads at ``iteration`` (Han: each retraining restarts the policy)."""
        return iteration

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Method state arrays (saved in checkpoints). Called once when a run starts."""
        return {}

    def update_masks(
        self,
        iteration: int,
        params: dict[str, np.ndarray],
        masks: dict[str, np.ndarray],
        state: dict[str, np.ndarray],
        rng: np.random.Generator,
    ) -> list[MaskUpdate]:
        """Change ``masks`` (and ``state``) in place before the forward pass of ``iteration``.

        Returns one :class:`MaskUpdate` per layer that was updated, e.g.
        ``MaskUpdate(iteration=12, layer="ip1", pruned=40, spliced=3, kept=72_000, total=235_500)``;
        an empty list when nothing was updated.
        """
        return []

    def penalty_grads(
        self, iteration: int, params: dict[str, np.ndarray], masks: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray] | None:
        """The gradient of a penalty the method adds to the loss at ``iteration`` (SSL's group lasso), keyed
        like ``params`` (only the penalised ones), in their dtype; added to dL/dW_eff before the gradient rule
        and the SGD step. None (the default): no penalty."""
        return None

    def trace_state(
        self, spec: NetSpec, state: dict[str, np.ndarray], records: list[MaskUpdate]
    ) -> dict[str, np.ndarray]:
        """The tensors a golden trace (:mod:`refdns.golden`) records for this method after one step.

        ``state`` is the method state after the step, ``records`` the step's mask updates. Returns arrays by
        dataset path inside the step's group (e.g. ``"thresholds/a"``); per-layer arrays are in
        ``spec.layer_names`` order. The unpruned base records nothing.
        """
        return {}


def methods() -> dict[str, type[PruningMethod]]:
    """Every pruning method in :mod:`refdns.prune`, by name (importing each module of the package once)."""
    import refdns.prune as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    found: dict[str, type[PruningMethod]] = {}
    stack = list(PruningMethod.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls.__module__.startswith(package.__name__ + ".") and cls.name:
            found.setdefault(cls.name, cls)
        stack.extend(cls.__subclasses__())
    return dict(sorted(found.items()))


def reproducible_methods() -> dict[str, type[PruningMethod]]:
    """The methods ``refdns reproduce`` can run: those with a default recipe (OBD and OBS need Hessian data
    and are studied through validate/obd_obs_study.py instead)."""
    return {n: c for n, c in methods().items() if c.recipe.__func__ is not PruningMethod.recipe.__func__}


def check_variant(cls: type[PruningMethod], variant: str) -> None:
    """Refuse a recipe variant the method does not offer, naming the ones it does."""
    if variant not in cls.variants:
        raise ConfigError(f"recipe {variant!r} does not exist for --method {cls.name}; it offers {list(cls.variants)}")


def all_ones_masks(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A bool mask of ones for every parameter (weights and biases)."""
    return {k: np.ones(v.shape, dtype=bool) for k, v in params.items()}


def surgery_trace(layers: list[str], records: list[MaskUpdate]) -> dict[str, np.ndarray]:
    """One step's mask updates per layer, in ``layers`` order, for :meth:`PruningMethod.trace_state`.

    ``surgery/fired`` (uint8) is 1 for a layer updated this step; ``surgery/pruned`` and ``surgery/spliced``
    (int64) count its entries switched off and on (0 where it was not updated).
    """
    by_layer = {r.layer: r for r in records}
    updated = [by_layer.get(n) for n in layers]
    return {
        "surgery/fired": np.array([r is not None for r in updated], dtype=np.uint8),
        "surgery/pruned": np.array([0 if r is None else r.pruned for r in updated], dtype=np.int64),
        "surgery/spliced": np.array([0 if r is None else r.spliced for r in updated], dtype=np.int64),
    }


class OneShotOnData(PruningMethod):
    """Base of the methods that prune once, at ``config.at_iteration``, from curvature measured on (x, y).

    Subclasses (OBD, OBS) set ``name``, ``config_type`` and implement :meth:`update_masks`; pruned weights
    then stay exactly 0 and masks only shrink (``grad_through_mask = False``).
    """

    name = ""  # an abstract base, not a method of its own (methods() skips it)
    grad_through_mask = False
    one_shot = True

    def __init__(self, config, x: np.ndarray, y: np.ndarray):
        super().__init__(config)
        self.x, self.y = x, y

    def _rebuild(self, config) -> OneShotOnData:
        return type(self)(config, self.x, self.y)

    def config_dict(self) -> dict[str, Any]:
        return super().config_dict() | {"hessian_samples": len(self.x)}

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec = spec
        return {}

    def _weight_records(
        self, iteration: int, old: dict[str, np.ndarray], new: dict[str, np.ndarray]
    ) -> list[MaskUpdate]:
        """One mask update per layer's weight for a one-shot prune from ``old`` to ``new`` masks."""
        records = []
        for op in self.spec.layers:
            key = op.name + ".weight"
            records.append(MaskUpdate(iteration=int(iteration), layer=op.name,
                                      pruned=int(np.count_nonzero(old[key] & ~new[key])), spliced=0,
                                      kept=int(np.count_nonzero(new[key])), total=int(new[key].size)))
        return records
