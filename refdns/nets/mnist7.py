"""A small MNIST net whose exact Hessian fits in memory: the OBD/OBS study net (issue 7).

The 28x28 image is reduced to 7x7 by a 4x4/4 max-pool (part of the net, parameter-free), then a
49-24-10 MLP with a ReLU hidden layer: 1,450 parameters (1,416 weights, 34 biases), so the full Hessian is
1,450^2 float64 = 16.8 MB and an OBS removal (a rank-1 downdate) costs ~2 M multiply-adds.
"""

from refdns.nets.sequential import NetSpec, Op

SPEC = NetSpec(
    name="mnist7-24",
    input_shape=(1, 28, 28),
    n_classes=10,
    ops=(
        Op("pool", size=4, stride=4),
        Op("flatten"),
        Op("dense", "ip1", w_shape=(24, 49), b_shape=(24,)),
        Op("relu"),
        Op("dense", "ip2", w_shape=(10, 24), b_shape=(10,)),
    ),
)
