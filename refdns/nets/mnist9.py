"""A small MNIST net whose exact Hessian fits in memory: the OBD/OBS study net (issue 7).

The 28x28 image is reduced to 9x9 by a 3x3/3 max-pool (part of the net, parameter-free; the last row and
column are dropped by the floor rule), then an 81-20-10 MLP with a ReLU hidden layer: 1,850 parameters
(1,820 weights, 30 biases). Its full Hessian is 1,850^2 float64 = 27 MB and one OBS removal (a rank-1
downdate) costs ~3.4 M multiply-adds. Trained with refdns's Caffe solver at base_lr 0.05 for 10,000
iterations it reaches about 7.7 % test error (measured while choosing it; 4x4 pooling to 7x7 gave 12-13 %).
"""

from refdns.nets.sequential import NetSpec, Op

SPEC = NetSpec(
    name="mnist9-20",
    input_shape=(1, 28, 28),
    n_classes=10,
    ops=(
        Op("pool", size=3, stride=3),
        Op("flatten"),
        Op("dense", "ip1", w_shape=(20, 81), b_shape=(20,)),
        Op("relu"),
        Op("dense", "ip2", w_shape=(10, 20), b_shape=(10,)),
    ),
)
