"""Deep Compression: weight sharing, Huffman coding and the ``.rdc`` compressed file.

Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding", ICLR 2016. Pruning (the first stage) is refdns's business elsewhere; this package takes a
pruned net (weights and masks) through the other two stages and into a file:

- :mod:`~refdns.compress.quantize`: per-layer k-means weight sharing (sec. 3.1-3.2);
- :mod:`~refdns.compress.shared`: shared weights from a codebook, and the centroid gradient (eq. 3);
- :mod:`~refdns.compress.finetune`: trained quantization, SGD on the centroids through the training engine
  (imported from its module: it stands on :mod:`refdns.train`, a floor above the rest of this package);
- :mod:`~refdns.compress.huffman`: canonical Huffman coding (sec. 4);
- :mod:`~refdns.compress.relindex`: the relative sparse index with filler entries (sec. 2, Fig. 2);
- :mod:`~refdns.compress.rdc`: the ``.rdc`` file (format in data/SCHEMA.md);
- :mod:`~refdns.compress.report`: bytes per stage, in the paper's Table form.
"""

from refdns.compress.huffman import canonical_codes, code_lengths, huffman_decode, huffman_encode
from refdns.compress.quantize import (
    DEFAULT_BITS,
    QuantizedLayer,
    dequantize_net,
    layer_bits,
    quantize_net,
    quantize_weights,
)
from refdns.compress.rdc import read_rdc, read_rdc_layers, write_rdc
from refdns.compress.relindex import positions_from_stream, relative_index_stream
from refdns.compress.report import compression_report, format_report
from refdns.compress.shared import centroid_grad, shared_weights

__all__ = [
    "DEFAULT_BITS",
    "QuantizedLayer",
    "canonical_codes",
    "centroid_grad",
    "code_lengths",
    "compression_report",
    "dequantize_net",
    "format_report",
    "huffman_decode",
    "huffman_encode",
    "layer_bits",
    "positions_from_stream",
    "quantize_net",
    "quantize_weights",
    "read_rdc",
    "read_rdc_layers",
    "relative_index_stream",
    "shared_weights",
    "write_rdc",
]
