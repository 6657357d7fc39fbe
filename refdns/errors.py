"""Named errors. Each says what was wrong and how to fix it.

All of them derive from :class:`RefdnsError`; the data and config errors also derive from
``ValueError`` so that callers who catch the builtin keep working.
"""

from __future__ import annotations


class RefdnsError(Exception):
    """Base class of every error refdns raises on purpose."""


class ConfigError(RefdnsError, ValueError):
    """A setting is out of range, of the wrong type, or unknown."""


class DataError(RefdnsError, ValueError):
    """A dataset file is missing, corrupt or not what it claims to be."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """No copy of a dataset file could be found or downloaded."""


class ChecksumError(DataError):
    """A dataset file's SHA-256 does not match the published original's."""


class CorruptFileError(DataError):
    """A file is truncated or its compression is damaged."""


class IDXFormatError(DataError):
    """An IDX file's header (magic number, dimensions) does not match its payload."""


class DownloadError(DataError):
    """Every mirror failed to deliver a dataset file."""


class CheckpointError(RefdnsError, ValueError):
    """A checkpoint file cannot be read or does not match the expected schema."""


class NonFiniteError(RefdnsError, FloatingPointError):
    """A loss, gradient or parameter became NaN or Inf during a run.

    Carries ``step`` and ``where`` (layer or tensor name) so the failing place is known.
    """

    def __init__(self, message: str, *, step: int | None = None, where: str | None = None):
        super().__init__(message)
        self.step = step
        self.where = where


class SingularHessianError(RefdnsError, ArithmeticError):
    """A Hessian (or its inverse) is singular or too ill-conditioned to use without damping."""

    def __init__(self, message: str, *, layer: str | None = None, step: int | None = None):
        super().__init__(message)
        self.layer = layer
        self.step = step


class TraceError(RefdnsError, ValueError):
    """A golden trace (or a candidate trace) cannot be read or does not follow the trace schema."""


class InterchangeError(RefdnsError, ValueError):
    """An ``.npz`` weight file has missing or unexpected keys, wrong shapes or dtypes, or non-finite values.
    """


class SparseFormatError(RefdnsError, ValueError):
    """A sparse (CSR) matrix is malformed: wrong index dtype, lengths, pointers or out-of-range columns."""


class OutputError(RefdnsError, ValueError):
    """An output path would overwrite an input or another output, is not a regular file, already exists
    without ``--force``, or cannot be written."""


class CompressError(RefdnsError, ValueError):
    """Deep Compression cannot proceed: non-finite weights, a mask or codebook that does not fit its layer."""


class RdcError(CompressError):
    """An ``.rdc`` compressed file is truncated, damaged (checksum), of an unknown version, or no .rdc."""


class CaffeFormatError(RefdnsError, ValueError):
    """A Caffe ``.caffemodel`` or ``.solverstate`` file is damaged, or does not hold what the net needs.

    Raised for broken protobuf framing (varint overflow, truncated fields, wrong wire types), blobs whose
    shape does not match their data, NaN or Inf values, mask blobs that are not 0/1, and missing layers or
    wrongly shaped blobs when mapping onto a refdns net.
    """
