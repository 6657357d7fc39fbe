"""Network architectures, one file each, sharing the engine in :mod:`refdns.nets.sequential` and the op table
in :mod:`refdns.nets.ops`.

A *family* is one of the known nets (:data:`NETS`); a member of it has the same ops, names and geometry and
may have fewer units per hidden layer (a thinned net, :mod:`refdns.thin`). :func:`spec_record` and
:func:`spec_from_record` turn a member into the JSON-ready record checkpoints store (data/SCHEMA.md) and back.
"""

import dataclasses

import numpy as np

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


def family_of(spec: NetSpec) -> str:
    """The known net ``spec`` is a member of: same ops, layer names and geometry; unit counts may differ."""
    def bare(op: Op) -> Op:
        return dataclasses.replace(op, w_shape=(), b_shape=())

    for name, base in NETS.items():
        same_io = base.input_shape == spec.input_shape and base.n_classes == spec.n_classes
        if same_io and len(base.ops) == len(spec.ops) and all(
                bare(a) == bare(b) for a, b in zip(base.ops, spec.ops, strict=True)):
            return name
    raise ValueError(f"net {spec.name!r} is not a member of a known family ({sorted(NETS)})")


def spec_record(spec: NetSpec) -> dict:
    """JSON-ready: ``{"family", "name", "layers": {layer: {"weight": shape, "bias": shape}}}``."""
    return {"family": family_of(spec), "name": spec.name,
            "layers": {op.name: {"weight": list(op.w_shape), "bias": list(op.b_shape)} for op in spec.layers}}


Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # {layer: (weight shape, bias shape)}


def spec_with_shapes(family: str, name: str, shapes: Shapes) -> NetSpec:
    """A member of ``family`` named ``name`` whose layers have ``shapes`` ({layer: (w_shape, b_shape)}).

    Raises ValueError naming the layer when the shapes are not a net of that family: a missing or extra layer,
    another kernel size or rank, an empty layer, a bias that does not match its weight, a first layer that
    does not read the input, an output layer that does not give the classes, or layers that do not chain.
    """
    base = get_spec(family)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} must be a non-empty str")
    if set(shapes) != set(base.layer_names):
        raise ValueError(f"{name}: layers {sorted(shapes)} are not {family}'s {list(base.layer_names)}")
    ops = []
    for op in base.ops:
        if op.name not in shapes:
            ops.append(op)
            continue
        w, b = (tuple(int(d) for d in s) for s in shapes[op.name])
        if len(w) != len(op.w_shape) or w[2:] != op.w_shape[2:]:
            raise ValueError(f"{name}: layer {op.name} weight shape {w} is not a {family} {op.kind} "
                             f"(like {op.w_shape}, fewer units allowed)")
        if min(w) < 1 or b != (w[0],):
            raise ValueError(f"{name}: layer {op.name} has weight {w} and bias {b}: need >= 1 unit, "
                             "bias (F,)")
        ops.append(dataclasses.replace(op, w_shape=w, b_shape=b))
    spec = NetSpec(name, base.input_shape, base.n_classes, tuple(ops))
    last = spec.layers[-1]
    if last.w_shape[0] != base.layers[-1].w_shape[0]:
        raise ValueError(f"{name}: output layer {last.name} gives {last.w_shape[0]} outputs, not "
                         f"{family}'s {base.layers[-1].w_shape[0]} classes")
    zeros = {k: np.zeros(s, np.float32) for k, s in spec.param_shapes().items()}
    try:  # one zero image through the net: every layer must read what the one before it gives
        forward(spec, zeros, np.zeros((1, *spec.input_shape), np.float32))
    except ValueError as e:
        raise ValueError(f"{name}: the layers of this {family} do not chain: {e}") from None
    return spec


def spec_from_record(record: dict) -> NetSpec:
    """The net a :func:`spec_record` describes (ValueError naming what is wrong)."""
    try:
        family, name, layers = record["family"], record["name"], record["layers"]
        shapes = {str(k): (tuple(v["weight"]), tuple(v["bias"])) for k, v in layers.items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"net record {record!r} lacks family/name/layers (weight, bias): {e}") from None
    spec = spec_with_shapes(family, name, shapes)
    if name in NETS:
        if spec != NETS[name]:
            raise ValueError(f"net record names {name!r} but its shapes are not {name}'s")
        return NETS[name]  # the one object, as get_spec gives it
    return spec


def resolve_spec(name: str, shapes: Shapes) -> NetSpec:
    """A net by name and layer shapes: a known net, or a member named ``<family>-...`` (a thinned one)."""
    if name in NETS:
        spec = NETS[name]
        expected = {op.name: (op.w_shape, op.b_shape) for op in spec.layers}
        if expected != shapes:
            diff = [f"{k} missing" if k not in shapes else f"{k} not in a {name}" if k not in expected
                    else f"{k} is {shapes[k]}, a {name}'s is {expected[k]}"
                    for k in list(expected) + [k for k in shapes if k not in expected]
                    if expected.get(k) != shapes.get(k)]
            raise ValueError(f"its layers are not a {name}'s: " + "; ".join(diff[:3])
                             + ("; ..." if len(diff) > 3 else ""))
        return spec
    family = [f for f in NETS if name.startswith(f + "-")]
    if not family:
        raise ValueError(f"net={name!r} is not known; choose one of {sorted(NETS)} (or a thinned <net>-...)")
    return spec_with_shapes(max(family, key=len), name, shapes)


__all__ = [
    "NETS",
    "family_of",
    "resolve_spec",
    "spec_from_record",
    "spec_record",
    "spec_with_shapes",
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
