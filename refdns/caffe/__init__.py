"""The DNS authors' Caffe as a peer: its ``rand()`` draws and its ``.caffemodel`` / ``.solverstate`` files.

- :mod:`refdns.caffe.glibc_rand`: glibc's ``rand()`` written out, for Caffe's mask-update draws.
- :mod:`refdns.caffe.proto`: a strict reader and writer of the few protobuf fields Caffe's files use.
"""
