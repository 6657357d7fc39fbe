"""Net files for inference and shipping: HDF5 checkpoints and Deep Compression's ``.rdc`` files, told apart by
their first bytes (not their names); a checkpoint compressed to ``.rdc`` and back (:mod:`refdns.compress`);
a structured-pruned checkpoint thinned into a smaller one (:mod:`refdns.thin`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refdns import checkpoint
from refdns.compress import (
    QuantizedLayer,
    compression_report,
    dequantize_net,
    quantize_net,
    read_rdc_layers,
    write_rdc,
)
from refdns.compress.quantize import expand_bits
from refdns.compress.rdc import MAGIC as RDC_MAGIC
from refdns.errors import ConfigError, RdcError
from refdns.nets import resolve_spec
from refdns.nets.sequential import NetSpec, check_params
from refdns.run import RunState, TrainConfig, new_run
from refdns.thin import ThinReport, thin_masked

#: Training-set size the batch order of a decompressed net is drawn for (MNIST's; a later run may redraw it).
N_TRAIN = 60_000


@dataclass(frozen=True)
class LoadedNet:
    """A net read for inference: from an HDF5 checkpoint or a compressed ``.rdc`` file."""

    spec: NetSpec
    params: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    method: str  # the checkpoint's method, or "deep-compression" for an .rdc file
    file_format: str  # "checkpoint" or "rdc"


def is_rdc(path: str | Path) -> bool:
    """Whether ``path`` starts with the ``.rdc`` magic number (its suffix is not consulted)."""
    with open(path, "rb") as fh:
        return fh.read(len(RDC_MAGIC)) == RDC_MAGIC


def read_compressed(path: str | Path) -> tuple[NetSpec, tuple[QuantizedLayer, ...], dict[str, np.ndarray],
                                               dict[str, np.ndarray]]:
    """Read an ``.rdc`` file and check its layers against the net it names: ``(spec, layers, params, masks)``.

    Raises
    ------
    RdcError
        A damaged file (see :func:`refdns.compress.read_rdc_layers`), a net refdns does not know, or layers
        that are not that net's (missing, extra or of another shape).
    """
    net_name, layers, _ = read_rdc_layers(path)
    params, masks = dequantize_net(layers)
    shapes = {la.name: (tuple(params[f"{la.name}.weight"].shape), tuple(params[f"{la.name}.bias"].shape))
              for la in layers}
    try:  # a known net, or a thinned member of one (its layer shapes say how many units it kept)
        spec = resolve_spec(net_name, shapes)
    except ValueError as e:
        raise RdcError(f"{path}: {e}") from None
    try:
        check_params(spec, params)
    except ValueError as e:
        raise RdcError(f"{path}: its layers are not a {spec.name}: {e}") from None
    kinds = {op.name: op.kind for op in spec.layers}
    wrong = [la.name for la in layers if la.kind != kinds[la.name]]
    if wrong:
        raise RdcError(f"{path}: layers {wrong} are stored with another kind than {spec.name}'s")
    return spec, layers, params, masks


def load_net(path: str | Path) -> LoadedNet:
    """A checkpoint or an ``.rdc`` file, told apart by the file's magic number."""
    if is_rdc(path):
        spec, _, params, masks = read_compressed(path)
        return LoadedNet(spec, params, masks, "deep-compression", "rdc")
    ck = checkpoint.load(path)
    return LoadedNet(ck.state.spec, ck.state.params, ck.state.masks, ck.method, "checkpoint")


def compress_checkpoint(path: str | Path, out: str | Path, *, bits: dict[str, int] | None = None
                        ) -> tuple[tuple[QuantizedLayer, ...], list[dict[str, Any]]]:
    """Deep Compression's weight sharing and Huffman coding of a (pruned) checkpoint, written to ``out``.

    ``bits`` as :func:`refdns.compress.quantize.expand_bits` reads them (groups or layer names). Returns the
    quantised layers and the byte report (:func:`refdns.compress.compression_report`; its total
    ``rdc_bytes`` is the size of ``out``).
    """
    st = checkpoint.load(path).state
    widths = expand_bits(st.spec, bits)
    layers = quantize_net(st.spec, st.params, st.masks, bits=widths)
    write_rdc(out, st.spec.name, layers)
    return layers, compression_report(layers, net_name=st.spec.name)


def decompress_to_checkpoint(path: str | Path, out: str | Path) -> RunState:
    """An ``.rdc`` file as an HDF5 checkpoint: the quantised weights bit for bit, the masks, the raw biases.

    The checkpoint starts a fresh run (iteration 0, zero velocity, seed 0), so it can be evaluated,
    exported or trained on like any other.
    """
    spec, _, params, masks = read_compressed(path)
    state = new_run(spec, N_TRAIN, TrainConfig(), seed=0, params=params, masks=masks)
    checkpoint.save(out, state, method="deep-compression",
                    config={"net": spec.name, "seed": 0, "decompressed_from": str(path)})
    return state




def thin_checkpoint(path: str | Path, out: str | Path) -> tuple[RunState, ThinReport]:
    """Cut the fully pruned filters and neurons out of a checkpoint's net; write the smaller net to ``out``.

    The new checkpoint holds the thinned net (its layer shapes in the ``spec`` attribute, so every command
    that reads a checkpoint loads it), the effective weights ``w * mask`` of what remains and their masks, and
    starts a fresh run (iteration 0, zero velocity, the source's seed). When nothing can be removed the source
    run is written unchanged (``report.changed`` is False and its message says so).
    """
    ck = checkpoint.load(path)
    st = ck.state
    try:
        new_spec, params, masks, report = thin_masked(st.spec, st.params, st.masks)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    if not report.changed:
        checkpoint.save(out, st, method=ck.method, config=ck.config)
        return st, report
    seed = 0 if st.seed is None else st.seed
    state = new_run(new_spec, N_TRAIN, TrainConfig(), seed=seed, params=params, masks=masks)
    checkpoint.save(out, state, method="thin",
                    config={"net": new_spec.name, "seed": seed, "thinned_from": str(path),
                            "source_method": ck.method, "source_iteration": st.iteration,
                            "units": {r.layer: [r.units_before, r.units_after] for r in report.layers}})
    return state, report
