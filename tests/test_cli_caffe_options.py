"""--data-order, --draws and --srand-seed reach the experiment's settings (argv only, no training)."""

import pytest

from refdns.cli import build_parser
from refdns.cli.training import _experiment
from refdns.errors import ConfigError


def _exp(*argv):
    args = build_parser().parse_args(list(argv))
    method = args.method if args.command == "reproduce" else None
    return _experiment(args, method)


def test_dns_takes_caffe_order_and_draws():
    exp = _exp(
        "reproduce",
        "--method",
        "dns",
        "--net",
        "lenet-300-100",
        "--recipe",
        "authors",
        "--data-order",
        "caffe",
        "--draws",
        "caffe",
        "--srand-seed",
        "7",
    )
    assert exp.train.data_order == "caffe" and exp.dense.data_order == "caffe"
    assert exp.method.config.draws == "caffe" and exp.method.config.srand_seed == 7


def test_defaults_stay_shuffled_and_numpy():
    exp = _exp("reproduce", "--method", "dns", "--net", "lenet-300-100")
    assert exp.train.data_order == "shuffled" and exp.method.config.draws == "numpy"
    assert _exp("train", "--net", "lenet-300-100").train.data_order == "shuffled"


def test_caffe_draws_need_the_caffe_reading():
    with pytest.raises(ConfigError, match="reading='caffe'"):
        _exp(
            "reproduce",
            "--method",
            "dns",
            "--net",
            "lenet-300-100",
            "--draws",
            "caffe",
            "--reading",
            "distiller",
        )
