"""LeNet-5, Caffe variant (examples/mnist/lenet_train_test.prototxt).

conv1 20@5x5 -> maxpool 2x2/2 -> conv2 50@5x5 -> maxpool 2x2/2 -> ip1 800->500 -> ReLU -> ip2 500->10.
No ReLU after the convolutions (as in Caffe's model). Cross-correlation, stride 1, no padding, floor
pooling; flatten in NCHW (C, H, W) order. 431,080 parameters with biases.
"""

from refdns.nets.sequential import NetSpec, Op

SPEC = NetSpec(
    name="lenet-5",
    input_shape=(1, 28, 28),
    n_classes=10,
    ops=(
        Op("conv", "conv1", w_shape=(20, 1, 5, 5), b_shape=(20,), stride=1, pad=0),  # (N, 20, 24, 24)
        Op("pool", size=2, stride=2),  # (N, 20, 12, 12)
        Op("conv", "conv2", w_shape=(50, 20, 5, 5), b_shape=(50,), stride=1, pad=0),  # (N, 50, 8, 8)
        Op("pool", size=2, stride=2),  # (N, 50, 4, 4)
        Op("flatten"),  # (N, 800)
        Op("dense", "ip1", w_shape=(500, 800), b_shape=(500,)),
        Op("relu"),
        Op("dense", "ip2", w_shape=(10, 500), b_shape=(10,)),
    ),
)
