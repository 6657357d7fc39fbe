"""Hand-written layers: ``<layer>_forward(...) -> (out, cache)`` and ``<layer>_backward(dout, cache)``.

Pure functions on NumPy arrays, one family per module; see STYLE.md for the contract.
"""

from refdns.layers.activation import ReluCache, relu_backward, relu_forward
from refdns.layers.conv import Conv2dCache, conv2d_backward, conv2d_forward
from refdns.layers.dense import DenseCache, dense_backward, dense_forward
from refdns.layers.flatten import FlattenCache, flatten_backward, flatten_forward
from refdns.layers.loss import softmax, softmax_cross_entropy
from refdns.layers.pool import MaxPoolCache, maxpool_backward, maxpool_forward, maxpool_select
from refdns.layers.workspace import Workspace
from refdns.layers.sparse_dense import (
    SparseDenseCache,
    SparseWeight,
    sparse_dense_backward,
    sparse_dense_forward,
)

__all__ = [
    "Conv2dCache",
    "DenseCache",
    "FlattenCache",
    "MaxPoolCache",
    "ReluCache",
    "SparseDenseCache",
    "SparseWeight",
    "Workspace",
    "conv2d_backward",
    "conv2d_forward",
    "dense_backward",
    "dense_forward",
    "flatten_backward",
    "flatten_forward",
    "maxpool_backward",
    "maxpool_forward",
    "maxpool_select",
    "relu_backward",
    "relu_forward",
    "softmax",
    "softmax_cross_entropy",
    "sparse_dense_backward",
    "sparse_dense_forward",
]
