"""LeNet-300-100 (LeCun et al. 1998; the Caffe model of Han et al. 2015 and Guo et al. 2016).

784-300-100-10 fully connected, ReLU after the first two layers, Caffe layer names ip1, ip2, ip3.
266,610 parameters with biases.
"""

from refdns.nets.sequential import NetSpec, Op

SPEC = NetSpec(
    name="lenet-300-100",
    input_shape=(1, 28, 28),
    n_classes=10,
    ops=(
        Op("flatten"),
        Op("dense", "ip1", w_shape=(300, 784), b_shape=(300,)),
        Op("relu"),
        Op("dense", "ip2", w_shape=(100, 300), b_shape=(100,)),
        Op("relu"),
        Op("dense", "ip3", w_shape=(10, 100), b_shape=(10,)),
    ),
)
