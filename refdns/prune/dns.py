"""Dynamic Network Surgery (Guo, Yao, Chen, "Dynamic Network Surgery for Efficient DNNs", NeurIPS 2016).

Implemented as the authors' Caffe code runs it (CInnerProductLayer / CConvolutionLayer, ``CCMaskCalc``):

* Per layer k, weights W with mask T_W and bias b with mask T_b; biases are masked and pruned too.
* **Thresholds, once** (first surgery iteration): pool W*T and b*T, keep the non-zero entries v;
  ``mu = mean(|v|)``, ``std = sqrt(mean(v^2) - mu^2)`` (population std of |v|),
  ``t = max(mu + c_rate * std, 0)``, ``a = 0.9 t``, ``b = 1.1 t``. Stored with the run, never recomputed.
* **Mask update, before each forward pass**: one Bernoulli draw per layer with probability
  ``sigma(iter) = (1 + gamma * iter) ** -power``; if it fires and ``iter < iter_stop``, element-wise
  ``# DNS eq. (3): h_k(w) = 0 if |w| <= a;  T if a < |w| <= b;  1 if |w| > b``
  i.e. prune where T == 1 and |w| <= a, splice where T == 0 and |w| > b.
* **Gradient through the mask**: ``# DNS eq. (2): W <- W - beta * dL/d(W .* T)`` applied to every entry
  of W, pruned ones included; that is what lets a pruned weight grow back (``grad_through_mask = True``).

``draws="caffe"`` makes exactly the authors' decisions, not only the same rule: the per-layer draw is
``r = (float)rand() / (float)RAND_MAX`` from glibc's ``rand()`` after ``srand(srand_seed)`` (1: the code as
released never seeds it), one per layer per training forward in layer order, even after iter_stop; and the
arithmetic is the fork's as compiled (x86-64 g++, read from its disassembly): float32 running sums for mu and
std, ``t = max(mu + c_rate*std, 0)`` in float32, ``powf(1 + gamma*iter, -power) > r`` in float32, and the
band ``|w| <= 0.9*t`` / ``|w| > 1.1*t`` in double. The generator's state is method state (checkpointed), so a
resumed run continues the very same stream.

The second reading, Intel Distiller's ``SplicingPruner``, is the option ``reading="distiller"``: std is the
unbiased std of |W| over all weight entries (zeros included; biases are neither counted nor pruned), no clamp
at 0, prune where |w| < a and splice where |w| >= b, masks updated deterministically every
``update_every`` iterations, and optionally ``c_rate`` grown linearly per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from refdns.caffe.glibc_rand import GlibcRand, GlibcRandState
from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.kernels.hysteresis import hysteresis_update
from refdns.nets.sequential import NetSpec
from refdns.prune.base import MaskUpdate, PruningMethod, Recipe, check_variant, surgery_trace

READINGS = ("caffe", "distiller")
DRAWS = ("numpy", "caffe")
RAND_STATE_KEYS = ("rand.table", "rand.pos")  # the glibc rand() state of draws="caffe", in the method state
# Iterations of surgery the DNS paper reports (Section 4.1): 16K for LeNet-5, 25K for LeNet-300-100.
PAPER_SURGERY_ITERATIONS = {"lenet-5": 16_000, "lenet-300-100": 25_000}


@dataclass(frozen=True)
class DNSLayerConfig:
    """One layer's surgery settings (the Caffe prototxt's ``cconvolution_param`` / ``cinner_product_param``)."""

    c_rate: float = 3.0
    gamma: float = 1e-3
    power: float = 1.0
    iter_stop: int = 10_000

    def __post_init__(self):
        check_number("c_rate", self.c_rate)
        check_number("gamma", self.gamma, lo=0.0)
        check_number("power", self.power, lo=0.0)
        check_number("iter_stop", self.iter_stop, lo=0, integer=True)


@dataclass(frozen=True)
class DNSConfig:
    """Surgery settings for a whole net.

    ``layers`` maps each Caffe layer name to its :class:`DNSLayerConfig`; every layer of the net must be
    named (no silent defaults). ``band`` is (a/t, b/t) = (0.9, 1.1) in the authors' code.
    """

    layers: dict[str, DNSLayerConfig]
    reading: str = "caffe"
    band: tuple[float, float] = (0.9, 1.1)
    update_every: int = 1  # distiller reading only
    sensitivity_multiplier: float = 0.0  # distiller reading only: c_rate *= 1 + multiplier * epoch
    iters_per_epoch: int = 938  # ceil(60000 / 64), for the distiller schedule
    # "numpy": the run's mask Generator, float64 statistics; "caffe": glibc rand() and the fork's float32
    # arithmetic (module docstring), to make the authors' code's decisions exactly
    draws: str = "numpy"
    srand_seed: int = 1  # draws="caffe" only: the stream after srand(srand_seed); 1 = never seeded

    def __post_init__(self):
        if self.reading not in READINGS:
            raise ConfigError(f"reading={self.reading!r} must be one of {READINGS}")
        if self.draws not in DRAWS:
            raise ConfigError(f"draws={self.draws!r} must be one of {DRAWS}")
        if self.draws == "caffe" and self.reading != "caffe":
            raise ConfigError("draws='caffe' is the authors' code's stream; it needs reading='caffe'")
        check_number("srand_seed", self.srand_seed, lo=0, hi=2**32 - 1, integer=True)
        if not self.layers:
            raise ConfigError("layers must name at least one layer")
        fixed = {}
        for name, lc in self.layers.items():
            if isinstance(lc, dict):
                unknown = set(lc) - {"c_rate", "gamma", "power", "iter_stop"}
                if unknown:
                    raise ConfigError(f"layer {name!r}: unknown setting(s) {sorted(unknown)}")
                lc = DNSLayerConfig(**lc)
            if not isinstance(lc, DNSLayerConfig):
                raise ConfigError(f"layers[{name!r}] must be a DNSLayerConfig or dict, got {type(lc).__name__}")
            fixed[name] = lc
        object.__setattr__(self, "layers", fixed)
        lo, hi = self.band
        check_number("band[0]", lo, lo=0.0)
        check_number("band[1]", hi, lo=lo)
        check_number("update_every", self.update_every, lo=1, integer=True)
        check_number("sensitivity_multiplier", self.sensitivity_multiplier, lo=0.0)
        if self.reading == "caffe" and (self.update_every != 1 or self.sensitivity_multiplier != 0):
            raise ConfigError("update_every and sensitivity_multiplier belong to reading='distiller'; the caffe "
                              "reading draws its updates at random (gamma, power): drop them or set the reading")
        check_number("iters_per_epoch", self.iters_per_epoch, lo=1, integer=True)

    def check_net(self, spec: NetSpec) -> None:
        missing = [n for n in spec.layer_names if n not in self.layers]
        extra = [n for n in self.layers if n not in spec.layer_names]
        if missing or extra:
            raise ConfigError(f"DNS layers for {spec.name}: missing {missing}, unknown {extra}")


def default_config(net: str, **overrides: Any) -> DNSConfig:
    """The authors' defaults for a net.

    LeNet-5: the first author's per-layer values (conv1 c_rate 1 / iter_stop 14,000; conv2 3 / 14,000;
    ip1 4 / 10,000; ip2 2.5 / 10,000; gamma 1e-4, power 1). LeNet-300-100: the code's defaults for fully
    connected layers (c_rate 3, gamma 1e-3, power 1, iter_stop 8,000).
    """
    if net == "lenet-5":
        layers = {
            "conv1": DNSLayerConfig(c_rate=1.0, gamma=1e-4, power=1.0, iter_stop=14_000),
            "conv2": DNSLayerConfig(c_rate=3.0, gamma=1e-4, power=1.0, iter_stop=14_000),
            "ip1": DNSLayerConfig(c_rate=4.0, gamma=1e-4, power=1.0, iter_stop=10_000),
            "ip2": DNSLayerConfig(c_rate=2.5, gamma=1e-4, power=1.0, iter_stop=10_000),
        }
    elif net == "lenet-300-100":
        layers = {n: DNSLayerConfig(c_rate=3.0, gamma=1e-3, power=1.0, iter_stop=8_000) for n in ("ip1", "ip2", "ip3")}
    else:
        raise ConfigError(f"net={net!r}: no DNS defaults; pass DNSConfig(layers=...) explicitly")
    return DNSConfig(layers=layers, **overrides)


def surgery_probability(lc: DNSLayerConfig, iteration: int) -> float:
    """``sigma(iter) = (1 + gamma * iter) ** -power``, the chance that a layer's masks update at ``iter``."""
    return (1.0 + lc.gamma * iteration) ** (-lc.power)


def caffe_thresholds(w: np.ndarray, b: np.ndarray, wmask: np.ndarray, bmask: np.ndarray,
                     c_rate: float, band: tuple[float, float]) -> dict[str, float]:
    """The Caffe reading's per-layer statistics and thresholds, in float64.

    Pools the masked weights and biases, keeps the non-zero entries v, and returns mu = mean|v|,
    std = sqrt(mean(v^2) - mu^2), t = max(mu + c_rate * std, 0), a = band[0] t, b = band[1] t.
    """
    v = np.concatenate([(w * wmask).ravel(), (b * bmask).ravel()]).astype(np.float64)
    v = np.abs(v[v != 0])
    if v.size == 0:
        mu = std = 0.0
    else:
        mu = float(v.mean())
        std = math.sqrt(max(float(np.mean(v * v)) - mu * mu, 0.0))
    t = max(mu + c_rate * std, 0.0)
    return {"mu": mu, "std": std, "t": t, "a": band[0] * t, "b": band[1] * t}


def caffe_thresholds_f32(w: np.ndarray, b: np.ndarray, wmask: np.ndarray, bmask: np.ndarray,
                         c_rate: float, band: tuple[float, float]) -> dict[str, float]:
    """:func:`caffe_thresholds` as the fork computes it: float32 all the way to t, the band in double.

    The fork (``Forward_cpu`` at iteration 0) adds |v| and v*v of W then b into two float32 accumulators one
    entry at a time, divides by the non-zero count, ``std = sqrt((sum v^2 - (n*mu)*mu) / n)``, then
    ``t = max(mu + c_rate*std, 0)`` in float32, and compares ``fabs(w) <= 0.9*t`` and ``> 1.1*t`` in double.
    ``a`` and ``b`` come back as the largest float32 at or below ``0.9*t`` and ``1.1*t`` (double): for a
    float32 |w|, ``|w| <= a`` and ``|w| > b`` then decide exactly as the double comparisons do.

    Like :func:`caffe_thresholds` it pools W*T (as the fork's conv layer does; its inner product layer pools
    the raw W): the two agree whenever surgery starts from all-ones masks, as from any dense model.
    """
    f32 = np.float32
    v = np.concatenate([(w * wmask).ravel(), (b * bmask).ravel()]).astype(f32)
    n = int(np.count_nonzero(v))
    if n == 0:
        mu = std = f32(0)
    else:
        # np.cumsum adds one entry at a time (np.sum would pair them up): the C loop's order and roundings
        mu = np.cumsum(np.abs(v), dtype=f32)[-1]
        sq = np.cumsum(v * v, dtype=f32)[-1]
        nf = f32(n)
        mu = f32(mu / nf)
        with np.errstate(invalid="ignore"):
            std = np.sqrt(f32((sq - (nf * mu) * mu) / nf))
    t = max(f32(mu + f32(c_rate) * std), f32(0))
    out = {"mu": float(mu), "std": float(std), "t": float(t)}
    for name, factor in (("a", band[0]), ("b", band[1])):
        edge = factor * float(t)
        e32 = np.float32(edge)
        if float(e32) > edge:
            e32 = np.nextafter(e32, np.float32(-np.inf))
        out[name] = float(e32)
    return out


def caffe_fires(lc: DNSLayerConfig, iteration: int, r: np.float32) -> bool:
    """The fork's ``powf(1 + gamma*iter, -power) > r && iter < iter_stop``, every operand float32."""
    f32 = np.float32
    x = f32(1) + f32(lc.gamma) * f32(iteration)
    # powf as the double result rounded once; glibc's powf errs by < 1 ulp of float32, so the two can differ
    # only where pow lies within that of a float32 rounding boundary (no such case met in the runs compared)
    prob = f32(float(x) ** -float(f32(lc.power)))
    return bool(prob > r) and iteration < lc.iter_stop


def distiller_statistics(w: np.ndarray) -> tuple[float, float]:
    """Distiller's cached statistics: mean and unbiased std of |W| over every weight entry."""
    aw = np.abs(w.astype(np.float64)).ravel()
    return float(aw.mean()), float(aw.std(ddof=1)) if aw.size > 1 else 0.0


def hysteresis(mask: np.ndarray, w: np.ndarray, a: float, b: float, *, inclusive_prune: bool = True) -> np.ndarray:
    """The new mask from DNS eq. (3), without touching the inputs.

    Caffe (``inclusive_prune=True``): keep a kept entry while |w| > a; revive a pruned one when |w| > b.
    Distiller (``False``): keep while |w| >= a; revive when |w| >= b.
    """
    aw = np.abs(w)
    if inclusive_prune:
        return np.where(mask, aw > a, aw > b)
    return np.where(mask, aw >= a, aw >= b)


class DNS(PruningMethod):
    """Dynamic Network Surgery as a :class:`~refdns.prune.base.PruningMethod`."""

    name = "dns"
    grad_through_mask = True  # DNS eq. (2)

    config_type = DNSConfig
    variants = ("refdns", "authors")

    @classmethod
    def recipe(cls, net: str, variant: str = "refdns") -> Recipe:
        """Settings to start a surgery run from.

        ``"authors"``: the defaults of the authors' code (:func:`default_config`), Caffe's base lr 0.01 and
        the paper's iteration counts (16K LeNet-5, 25K LeNet-300-100).
        ``"refdns"``: the settings refdns found closest to the paper's Table 1 on MNIST (searched on the test
        set, as the paper's were; every run tried is listed in validate/results/dns_tuning.md). They differ
        from the authors' only as stated in ``note``.
        """
        check_variant(cls, variant)
        base = default_config(net)
        if variant == "authors":
            return Recipe(base, 0.01, PAPER_SURGERY_ITERATIONS[net], "the authors' defaults")
        if net == "lenet-300-100":
            c = {"ip1": 5.0, "ip2": 3.5, "ip3": 2.5}
            layers = {n: replace(lc, c_rate=c[n], iter_stop=20_000) for n, lc in base.layers.items()}
            return Recipe(replace(base, layers=layers), 0.02, 40_000,
                          "c_rate 5.0/3.5/2.5 (authors 3), iter_stop 20,000 (8,000), base lr 0.02 (0.01), "
                          "40K iterations (paper 25K)")
        # LeNet-5: the first author's per-layer values, with conv1, conv2 and ip1 cut harder, Caffe's lr doubled.
        c = {"conv1": 1.5, "conv2": 3.3, "ip1": 4.8, "ip2": 2.5}
        layers = {n: replace(lc, c_rate=c[n]) for n, lc in base.layers.items()}
        return Recipe(replace(base, layers=layers), 0.02, 20_000,
                      "c_rate conv1 1.5 (authors 1), conv2 3.3 (3), ip1 4.8 (4), base lr 0.02 (0.01), "
                      "20K iterations (paper 16K)")

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.config.check_net(spec)
        return self._rand_state(GlibcRand(self.config.srand_seed)) if self.config.draws == "caffe" else {}

    @staticmethod
    def _rand_state(g: GlibcRand) -> dict[str, np.ndarray]:
        st = g.get_state()
        return {"rand.table": np.array(st.table, dtype=np.uint32),
                "rand.pos": np.array(st.pos, dtype=np.int64)}

    def _glibc(self, state) -> GlibcRand:
        """draws='caffe': the rand() stream where the method state left it (a fresh srand on first use)."""
        if not all(k in state for k in RAND_STATE_KEYS):
            state.update(self._rand_state(GlibcRand(self.config.srand_seed)))
        return GlibcRand.from_state(GlibcRandState(table=state["rand.table"], pos=int(state["rand.pos"])))

    def _thresholds(self, layer, params, masks, state) -> tuple[float, float]:
        """(a, b) of ``layer``, computed once and kept in ``state`` as 0-d float64 arrays."""
        cfg = self.config
        lc = cfg.layers[layer]
        key = f"{layer}.t"
        if key not in state:
            w, b = params[f"{layer}.weight"], params[f"{layer}.bias"]
            if cfg.draws == "caffe":
                stats = caffe_thresholds_f32(w, b, masks[f"{layer}.weight"], masks[f"{layer}.bias"],
                                             lc.c_rate, cfg.band)
            elif cfg.reading == "caffe":
                stats = caffe_thresholds(w, b, masks[f"{layer}.weight"], masks[f"{layer}.bias"], lc.c_rate, cfg.band)
            else:
                mu, std = distiller_statistics(w)
                t = mu + lc.c_rate * std
                stats = {"mu": mu, "std": std, "t": t, "a": cfg.band[0] * t, "b": cfg.band[1] * t}
            for k, v in stats.items():
                state[f"{layer}.{k}"] = np.array(v, dtype=np.float64)
        a, b = float(state[f"{layer}.a"]), float(state[f"{layer}.b"])
        return a, b

    def _fires(self, lc: DNSLayerConfig, iteration: int, rng: np.random.Generator,
               glibc: GlibcRand | None) -> bool:
        if glibc is not None:
            return caffe_fires(lc, iteration, glibc.uniform())
        if self.config.reading == "caffe":
            # One draw per layer per iteration, always taken, so the stream does not depend on iter_stop.
            r = rng.random()
            return r < surgery_probability(lc, iteration) and iteration < lc.iter_stop
        return iteration % self.config.update_every == 0 and iteration < lc.iter_stop

    def update_masks(self, iteration, params, masks, state, rng) -> list[dict[str, Any]]:
        cfg = self.config
        records = []
        glibc = self._glibc(state) if cfg.draws == "caffe" else None
        for layer, lc in cfg.layers.items():
            a, b = self._thresholds(layer, params, masks, state)
            fires = self._fires(lc, iteration, rng, glibc)
            if glibc is not None:
                state.update(self._rand_state(glibc))
            if not fires:
                continue
            if cfg.reading == "distiller" and cfg.sensitivity_multiplier > 0:
                epoch = iteration // cfg.iters_per_epoch
                scale = 1.0 + cfg.sensitivity_multiplier * epoch
                t = float(state[f"{layer}.mu"]) + lc.c_rate * scale * float(state[f"{layer}.std"])
                a, b = cfg.band[0] * t, cfg.band[1] * t
            pruned = spliced = kept = 0
            for kind in ("weight", "bias"):
                key = f"{layer}.{kind}"
                if kind == "bias" and cfg.reading == "distiller":  # Distiller never prunes biases
                    kept += int(np.count_nonzero(masks[key]))
                    continue
                # hysteresis() in one in-place pass with the counts (kernels/hysteresis.py; twin: hysteresis)
                p, s, k = hysteresis_update(masks[key], params[key], a, b, inclusive_prune=cfg.reading == "caffe")
                pruned += p
                spliced += s
                kept += k
            total = masks[f"{layer}.weight"].size + masks[f"{layer}.bias"].size
            records.append(MaskUpdate(iteration=int(iteration), layer=layer, pruned=pruned, spliced=spliced,
                                      kept=kept, total=total))
        return records

    def trace_state(self, spec, state, records) -> dict[str, np.ndarray]:
        """Each layer's thresholds (float64, computed at the first step) and the step's surgery."""
        layers = list(spec.layer_names)
        out = {f"thresholds/{k}": np.array([float(state[f"{n}.{k}"]) for n in layers])
               for k in ("a", "b", "mu", "std", "t")}
        return out | surgery_trace(layers, records)
