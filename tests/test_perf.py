import resource

import numpy as np

from refdns.nets import get_spec
from refdns.perf import tune_malloc
from refdns.prune.base import PruningMethod
from refdns.run import TrainConfig, new_run
from refdns.train import train_step


def test_tuned_malloc_stops_per_step_page_faults_and_changes_no_number(rng):
    """A LeNet-5 step's large temporaries stop page-faulting (counted, not timed); results are identical."""
    x = rng.random((64, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    cfg = TrainConfig()
    reference = new_run(get_spec("lenet-5"), 64, cfg, seed=0)
    for _ in range(3):
        train_step(reference, x, y, cfg, PruningMethod())
    assert tune_malloc()
    state = new_run(get_spec("lenet-5"), 64, cfg, seed=0)
    for _ in range(2):
        train_step(state, x, y, cfg, PruningMethod())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train_step(state, x, y, cfg, PruningMethod())
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 200, faults  # ~2,500 per step without it
    assert all(np.array_equal(state.params[k], reference.params[k]) for k in state.params)
