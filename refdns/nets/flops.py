"""Floating-point operations of a forward pass, per parametric layer (conv and fully connected).

The count of Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional Neural Networks for Resource
Efficient Inference" (ICLR 2017, Sec. 2.3, used for their FLOPs regularisation), per image:

    # conv: FLOPs = 2 H W (C_in K^2 + 1) C_out        (H x W the output map, K x K the kernel)
    # fc:   FLOPs = (2 I - 1) O                        (I inputs, O outputs)

i.e. a multiply and an add per weight, plus the bias add (conv; the fc form counts I multiplies and I - 1
adds, with no bias). ReLU, max-pooling and flatten are not counted (they are compares and copies; the
authors do not count them either). A net with fewer units than its spec (a structured-pruned one before
thinning) is counted by giving the units each layer keeps: the next layer's inputs shrink to match, so the
count is that of the thinned net.
"""

from __future__ import annotations

import numpy as np

from refdns.nets.sequential import NetSpec, forward


def _output_hw(spec: NetSpec) -> dict[str, tuple[int, ...]]:
    """Per parametric layer: its output's per-image shape (one forward of a zero image)."""
    params = {k: np.zeros(s, dtype=np.float32) for k, s in spec.param_shapes().items()}
    _, cache = forward(spec, params, np.zeros((1, *spec.input_shape), np.float32), keep_outputs=True)
    names = spec.layer_names
    return {op.name: cache.outputs[i].shape[1:] for i, op in enumerate(spec.ops) if op.name in names}


def layer_flops(spec: NetSpec, units: dict[str, int] | None = None) -> dict[str, int]:
    """FLOPs of one image's forward pass through each parametric layer (Molchanov et al.'s count).

    Parameters
    ----------
    spec : NetSpec
    units : {layer: units kept}, optional
        Layers not named keep all their units. A layer's inputs are the previous layer's kept units (times
        the spatial block each one fills in a flattened map).

    Returns
    -------
    {layer: FLOPs}, in layer order, Python ints
    """
    units = units or {}
    layers = spec.layers
    unknown = sorted(set(units) - set(spec.layer_names))
    if unknown:
        raise ValueError(f"units: {spec.name} has no layer(s) {unknown}")
    shapes = _output_hw(spec)
    out: dict[str, int] = {}
    prev_full = prev_kept = None
    for op in layers:
        full = op.w_shape[0]
        kept = int(units.get(op.name, full))
        if not 0 <= kept <= full:
            raise ValueError(f"units[{op.name!r}]={kept} must be in [0, {full}]")
        if len(op.w_shape) == 4:  # conv: (F, C, K, K)
            c_in = op.w_shape[1] if prev_full is None else prev_kept
            h_w = int(np.prod(shapes[op.name][1:]))
            k2 = op.w_shape[2] * op.w_shape[3]
            out[op.name] = 2 * h_w * (c_in * k2 + 1) * kept
        else:  # fc: (O, I); after a conv + flatten each unit of the previous layer fills a block of inputs
            i_in = op.w_shape[1] if prev_full is None else op.w_shape[1] // prev_full * prev_kept
            out[op.name] = max(2 * i_in - 1, 0) * kept
        prev_full, prev_kept = full, kept
    return out


def net_flops(spec: NetSpec, units: dict[str, int] | None = None) -> int:
    """Sum of :func:`layer_flops` over the layers: one image's forward pass."""
    return sum(layer_flops(spec, units).values())
