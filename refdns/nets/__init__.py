"""Network architectures, one file each, sharing the engine in :mod:`refdns.nets.sequential` and the op table
in :mod:`refdns.nets.ops`."""

from refdns.nets import lenet5, lenet300
from refdns.nets.ops import OPS, bias_key, weight_key
from refdns.nets.sequential import (
    NetSpec,
    Op,
    backward,
    error_rate,
    forward,
    init_params,
    loss_and_grads,
    predict,
)

NETS: dict[str, NetSpec] = {lenet300.SPEC.name: lenet300.SPEC, lenet5.SPEC.name: lenet5.SPEC}


def get_spec(name: str) -> NetSpec:
    """The spec of a net by its CLI name (``lenet-300-100`` or ``lenet-5``)."""
    try:
        return NETS[name]
    except KeyError:
        raise ValueError(f"net={name!r} is not known; choose one of {sorted(NETS)}") from None


__all__ = [
    "NETS",
    "OPS",
    "NetSpec",
    "Op",
    "backward",
    "bias_key",
    "error_rate",
    "forward",
    "get_spec",
    "init_params",
    "loss_and_grads",
    "predict",
    "weight_key",
]
