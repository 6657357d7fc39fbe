"""refdns.testing: the replay protocol, with tiny pure-NumPy candidates (one right, one wrong at a known
step)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from refdns import golden, testing

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
DENSE = GOLDEN_DIR / "lenet-300-100-dense.h5"
DNS = GOLDEN_DIR / "lenet-300-100-dns.h5"


def numpy_lenet300(*, momentum_on: bool = True, splice: bool = True):
    """LeNet-300-100 with Caffe's SGD (and DNS's Caffe reading when the golden is DNS), written from the
    papers in plain NumPy: a candidate as a user would write one."""

    def candidate(start: testing.Start):
        sgd = start.config["train"]["sgd"]
        w = {k: v.astype(np.float32) for k, v in start.params.items()}
        m = dict(start.masks)
        v = dict(start.velocity)
        layers = start.layers
        dns = start.method == "dns"
        th = {}

        def step(inp: testing.StepInput):
            out = {}
            if dns:
                if not th:
                    for n in layers:
                        x = np.concatenate(
                            [
                                (w[n + ".weight"] * m[n + ".weight"]).ravel(),
                                (w[n + ".bias"] * m[n + ".bias"]).ravel(),
                            ]
                        ).astype(np.float64)
                        x = np.abs(x[x != 0])
                        mu = x.mean()
                        std = np.sqrt(max(np.mean(x * x) - mu * mu, 0.0))
                        t = max(mu + start.config["method"]["layers"][n]["c_rate"] * std, 0.0)
                        th[n] = {"mu": mu, "std": std, "t": t, "a": 0.9 * t, "b": 1.1 * t}
                for i, n in enumerate(layers):
                    if inp.fired[i]:
                        for k in (n + ".weight", n + ".bias"):
                            aw = np.abs(w[k]).astype(np.float64)
                            grow = aw > th[n]["b"] if splice else np.zeros_like(m[k])
                            m[k] = np.where(m[k], aw > th[n]["a"], grow)
                out["thresholds"] = {q: [th[n][q] for n in layers] for q in ("a", "b", "mu", "std", "t")}
            we = {k: w[k] * m[k] for k in w}
            h0 = inp.inputs.reshape(len(inp.inputs), -1)
            a1 = h0 @ we["ip1.weight"].T + we["ip1.bias"]
            r1 = np.maximum(a1, 0)
            a2 = r1 @ we["ip2.weight"].T + we["ip2.bias"]
            r2 = np.maximum(a2, 0)
            z = r2 @ we["ip3.weight"].T + we["ip3.bias"]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            n_batch = len(inp.labels)
            loss = -np.mean(np.log(p[np.arange(n_batch), inp.labels]))
            dz = p.copy()
            dz[np.arange(n_batch), inp.labels] -= 1
            dz /= n_batch
            g = {"ip3.weight": dz.T @ r2, "ip3.bias": dz.sum(0)}
            d2 = (dz @ we["ip3.weight"]) * (a2 > 0)
            g |= {"ip2.weight": d2.T @ r1, "ip2.bias": d2.sum(0)}
            d1 = (d2 @ we["ip2.weight"]) * (a1 > 0)
            g |= {"ip1.weight": d1.T @ h0, "ip1.bias": d1.sum(0)}
            mu_ = sgd["momentum"] if momentum_on else 0.0
            for k in w:
                bias = k.endswith(".bias")
                lr = inp.lr * (sgd["bias_lr_mult"] if bias else 1.0)
                wd = sgd["weight_decay"] * (sgd["bias_decay_mult"] if bias else 1.0)
                v[k] = (mu_ * v[k] + lr * (g[k] + wd * w[k])).astype(np.float32)
                w[k] = w[k] - v[k]
            return out | {
                "masks": dict(m),
                "activations": [h0, a1, r1, a2, r2, z],
                "loss": loss,
                "grads": g,
                "params": dict(w),
            }

        return step

    return candidate


def test_a_right_numpy_candidate_passes(tmp_path):
    report = testing.assert_matches_golden(DENSE, numpy_lenet300(), tmp_path=tmp_path)
    assert report.ok and len(report.tensors) > 20
    cand = tmp_path / "candidate-lenet-300-100-dense.h5"
    with h5py.File(cand) as f:
        assert f["steps/0002/params/ip1/weight"].shape == (300, 784)  # stored whole, sampled by verify
        assert "refdns.testing" in f.attrs["producer"]
    assert golden.verify(DENSE, cand).ok  # the file stands alone: `refdns verify` reads it


def test_a_candidate_without_momentum_fails_at_step_1_with_the_step_and_tensor_named():
    # v starts at 0, so step 0 is the same with or without momentum; step 1's update is not
    with pytest.raises(AssertionError) as e:
        testing.assert_matches_golden(DENSE, numpy_lenet300(momentum_on=False))
    first = str(e.value).splitlines()[0]
    assert "first at step 1, tensor params/ip1/bias at index (" in first and "golden" in first
    assert "| params/ip1/weight |" in str(e.value)


def test_dns_replay_takes_the_draws_and_a_no_splice_candidate_fails_where_the_golden_first_splices():
    assert testing.check_candidate(DNS, numpy_lenet300()).ok
    with h5py.File(DNS) as f:
        first_splice = next(
            t for t in range(int(f.attrs["steps"])) if f[f"steps/{t:04d}/surgery/spliced"][()].sum() > 0
        )
    report = testing.check_candidate(DNS, numpy_lenet300(splice=False))
    assert report.divergence[0] == first_splice and report.divergence[1].startswith("masks/")


def test_protocol_inputs_and_refusals(tmp_path):
    start = testing.read_start(DNS)
    assert start.method == "dns" and start.layers == ("ip1", "ip2", "ip3")
    assert start.params["ip1.weight"].dtype == np.float32 and start.masks["ip1.weight"].dtype == bool
    seen = []

    def probe(start):
        def step(inp):
            seen.append(inp)
            return {"nonsense": 1}

        return step

    with pytest.raises(golden.TraceError, match="nonsense"):
        testing.replay(DNS, probe, tmp_path / "x.h5")
    assert seen[0].fired.dtype == bool and seen[0].fired.shape == (3,)
    assert set(seen[0].thresholds) == {"a", "b", "mu", "std", "t"}
    assert not (tmp_path / "x.h5").exists()  # atomic: a failed replay leaves nothing

    def partial(start):
        return lambda inp: {"loss": 0.0}

    report = testing.check_candidate(DENSE, partial, only=["masks"])
    assert not report.ok and "missing" in report.tensors[0].note


def test_the_harness_hands_an_obs_candidate_the_hessian_batch_at_the_prune_step_only():
    """LeNet-5's OBS golden through the harness: the prune step (1) carries the surgeon's one-image Hessian
    batch, the others none; a candidate that returns the golden's masks passes on them, one that keeps a
    pruned weight is caught at the prune step."""
    obs = GOLDEN_DIR / "lenet-5-obs.h5"
    with h5py.File(obs) as g:
        golden_masks = [{f"{n}.{k}": g[f"steps/{t:04d}/masks/{n}/{k}"][()].astype(bool)
                         for n in g[f"steps/{t:04d}/masks"] for k in g[f"steps/{t:04d}/masks/{n}"]}
                        for t in range(int(g.attrs["steps"]))]
    seen = []

    def masks_of_the_golden(flip):
        def candidate(start):
            def step(inp):
                seen.append(inp)
                m = {k: v.copy() for k, v in golden_masks[inp.step].items()}
                if flip and inp.step >= 1:
                    m["ip1.weight"][0, np.flatnonzero(~m["ip1.weight"][0])[0]] = True
                return {"masks": m}

            return step

        return candidate

    assert testing.check_candidate(obs, masks_of_the_golden(False), only=["masks"]).ok
    assert [s.hessian is not None for s in seen] == [False, True, False]
    x, y = seen[1].hessian
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32 and y.shape == (1,)
    report = testing.check_candidate(obs, masks_of_the_golden(True), only=["masks"])
    assert report.divergence == (1, "masks/ip1/weight")
