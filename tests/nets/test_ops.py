"""The op table: every kind defined once, and every engine reaching the ops only through it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import refdns
from refdns import hessian
from refdns.effective import EffectiveParams
from refdns.nets import NETS, get_spec, init_params, loss_and_grads
from refdns.nets.mnist9 import SPEC as MNIST9
from refdns.nets.ops import OP_KINDS, OPS, PARAM_KINDS, OpKind, bias_key, weight_key
from refdns.sparse import SparseNet

STEPS = ("forward", "backward", "r_forward", "r_backward", "obd_backward", "sparse_forward")
ENGINES = ("nets/sequential.py", "hessian.py", "sparse.py", "effective.py")


def test_every_kind_a_net_uses_is_in_the_table_with_every_step():
    used = {op.kind for spec in (*NETS.values(), MNIST9) for op in spec.ops}
    assert used <= set(OPS)
    assert OP_KINDS == tuple(OPS) and PARAM_KINDS == ("dense", "conv")
    for kind, definition in OPS.items():
        assert definition.kind == kind
        for step in STEPS:  # each kind overrides every step: none is left to the base's NotImplementedError
            assert getattr(type(definition), step) is not getattr(OpKind, step), (kind, step)


def test_parameter_keys_have_one_spelling():
    assert weight_key("ip1") == "ip1.weight" and bias_key("ip1") == "ip1.bias"
    spec = get_spec("lenet-5")
    keys = [k for op in spec.layers for k in (weight_key(op.name), bias_key(op.name))]
    assert list(spec.param_shapes()) == keys


@pytest.mark.parametrize("engine", ENGINES)
def test_no_engine_switches_on_the_op_kind(engine):
    source = (Path(refdns.__file__).parent / engine).read_text()
    assert not re.search(r"\.kind\s*(==|!=|\bin\b|\bnot in\b)", source), engine
    assert not re.search(r"\bkind\s*(==|!=)\s*['\"]", source), engine
    assert "OPS[" in source  # it looks ops up in the table instead


@pytest.fixture
def calls(monkeypatch):
    """Replace every table entry by a subclass that records ``(step, op index key, result)`` per call."""
    log: list[tuple[str, int, object]] = []

    def recording(step, method):
        def wrapper(self, op, *args, **kwargs):
            result = method(self, op, *args, **kwargs)
            log.append((step, id(op), result))
            return result

        return wrapper

    for kind, definition in list(OPS.items()):
        cls = type(definition)
        methods = {step: recording(step, getattr(cls, step)) for step in STEPS}
        monkeypatch.setitem(OPS, kind, type(f"Recording{cls.__name__}", (cls,), methods)())
    return log


def _visited(log, step, spec) -> list[int]:
    """Indices into ``spec.ops`` of the ops ``step`` was called on, in call order."""
    index = {id(op): i for i, op in enumerate(spec.ops)}
    return [index[key] for s, key, _ in log if s == step]


def _problem(name, rng, dtype=np.float32):
    spec = get_spec(name)
    params = init_params(spec, rng=rng, dtype=dtype)
    return spec, params, rng.random((2, 1, 28, 28)).astype(dtype), rng.integers(0, 10, 2)


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_training_engine_runs_every_op_through_the_table(name, rng, calls):
    spec, params, x, y = _problem(name, rng)
    loss_and_grads(spec, params, x, y)
    n, first = len(spec.ops), spec.first_layer_index
    assert _visited(calls, "forward", spec) == list(range(n))
    assert _visited(calls, "backward", spec) == list(range(n - 1, first - 1, -1))


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_effective_params_take_the_table_s_sparse_weight_path(name, rng, calls):
    spec, params, x, y = _problem(name, rng)
    masks = {k: rng.random(v.shape) < 0.1 for k, v in params.items()}
    eff = EffectiveParams(spec, sparse_min_weights=0)
    assert eff.sparse_capable == {weight_key(op.name) for op in spec.layers if op.kind == "dense"}
    loss_and_grads(spec, eff(params, masks), x, y)
    assert eff.paths[weight_key(spec.layers[-1].name)] == "sparse"
    assert _visited(calls, "forward", spec) == list(range(len(spec.ops)))


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_hessian_engine_runs_every_op_through_the_table(name, rng, calls):
    spec, params, x, y = _problem(name, rng, np.float64)
    n, first = len(spec.ops), spec.first_layer_index
    hessian.hvp(spec, params, x[:1], y[:1], rng.normal(size=spec.n_params()))
    assert _visited(calls, "forward", spec) == list(range(n))
    assert _visited(calls, "r_forward", spec) == list(range(n))
    assert _visited(calls, "r_backward", spec) == list(range(n - 1, first - 1, -1))
    hessian.obd_diagonal(spec, params, x, y)
    assert _visited(calls, "obd_backward", spec) == list(range(n - 1, first - 1, -1))
    calls.clear()
    hessian.loss_and_gradient(spec, params, x, y)
    assert _visited(calls, "backward", spec) == list(range(n - 1, first - 1, -1))


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_sparse_engine_runs_every_op_through_the_table(name, rng, calls):
    spec, params, x, _ = _problem(name, rng)
    masks = {k: rng.random(v.shape) < 0.2 for k, v in params.items()}
    net = SparseNet.from_params(spec, params, masks)
    net.forward(x, path="layers")
    index = {id(op): i for i, op in enumerate(spec.ops)}
    covered = []
    for _, key, (_, fused) in (c for c in calls if c[0] == "sparse_forward"):
        covered += range(index[key], index[key] + 1 + fused)  # an op and the ones it ran fused
    assert covered == list(range(len(spec.ops)))
    if name == "lenet-5":  # both max-pools run inside their convolutions, the ReLU inside ip1's product
        assert _visited(calls, "sparse_forward", spec) == [0, 2, 4, 5, 7]
