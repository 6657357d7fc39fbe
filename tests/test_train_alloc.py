"""The training loop requests no new memory per step once warm: zero minor page faults over many steps.

A fresh multi-megabyte temporary per step (an im2col matrix, an activation, a batch gathered with fancy
indexing) is served by glibc from a new mapping, or from heap pages it trimmed on the previous free, and
every page of it faults on first touch: a LeNet-5 step used to cost about 2,100 minor faults without
allocator tuning. Every array the step needs now lives in the run's buffers (refdns.layers.workspace,
refdns.effective, the batch gather in refdns.train), so after warm-up the count is exactly zero.

The count is taken between two steps of one ``train()`` call (through ``on_step``), so what a call does
once on entry (progress and history records) is not counted as a step's. It runs in a fresh interpreter, so no other test's process-wide allocator setting
(refdns.perf.tune_malloc) can hide a fault. It counts faults, not time: it cannot be flaky through load.
Small Python objects (ints, tuples, the grads dict) come from pymalloc pools that steady-state reuses, as
long as nothing creeps: a tuple built from a generator every step (``NetSpec.layers`` was one) leaves one
more tuple on CPython's free list per step, one page every 64 steps, and this test caught it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import require_data

SCRIPT = r"""
import json, resource, sys
import numpy as np
from refdns.datasets import load_mnist
from refdns.nets import get_spec
from refdns.run import TrainConfig, new_run
from refdns.train import train

data_dir, nets, warm, steps = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
x, y = load_mnist("train", data_dir=data_dir, download=False)
out = {}
for net in nets:
    cfg = TrainConfig(iterations=warm + steps, test_interval=0, display_interval=10_000)
    state = new_run(get_spec(net), len(x), cfg, seed=0)
    marks = [0, 0]  # fault counts after step `warm` and after step `warm + steps`, inside one train() call

    def on_step(st, loss, lr):
        if st.iteration == warm:
            marks[0] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        elif st.iteration == warm + steps:
            marks[1] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    train(state, x, y, cfg, on_step=on_step)
    out[net] = marks[1] - marks[0]
print(json.dumps(out))
"""


# Warm-up: the first ~20 steps still settle once (allocator free lists, lazily made buffers); then none.
WARM, STEPS = 50, 100  # both inside the first epoch (937 batches)


@pytest.mark.parametrize("net", ["lenet-300-100", "lenet-5"])
def test_a_warm_training_step_makes_no_page_fault(net):
    data = require_data()
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
                                                            "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")}
    env.update(OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(data), net, str(WARM), str(STEPS)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    faults = json.loads(res.stdout.strip().splitlines()[-1])[net]
    assert faults == 0, f"{net}: {faults} minor page faults over {STEPS} warm training steps"
