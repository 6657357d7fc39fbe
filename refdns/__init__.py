"""refdns: the framework-free reference implementation of neural-network pruning.

Dynamic Network Surgery (Guo, Yao, Chen, NeurIPS 2016) at its centre, with Han et al.'s iterative
pruning, Optimal Brain Damage and Optimal Brain Surgeon beside it; NumPy for readability, Numba where
speed matters, no deep-learning framework.
"""

__version__ = "0.1.0"
