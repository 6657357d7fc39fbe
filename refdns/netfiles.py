"""Net files for inference and shipping: HDF5 checkpoints and Deep Compression's ``.rdc`` files, told apart by
their first bytes (not their names); a checkpoint compressed to ``.rdc`` and back (:mod:`refdns.compress`)."""

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
from refdns.errors import RdcError
from refdns.nets import get_spec
from refdns.nets.sequential import NetSpec, check_params
from refdns.run import RunState, TrainConfig, new_run

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
    try:
        spec = get_spec(net_name)
    except ValueError as e:
        raise RdcError(f"{path}: {e}") from None
    params, masks = dequantize_net(layers)
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


