"""Shared fixtures: hypothesis profiles, a fixed-seed rng per test, and real MNIST from REFDNS_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def data_dir() -> Path | None:
    """Where the real MNIST files are: $REFDNS_DATA, else the shared folder beside the clone."""
    env = os.environ.get("REFDNS_DATA")
    if env:
        return Path(env)
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20161205)


@pytest.fixture(scope="session")
def mnist():
    """(x_train, y_train, x_test, y_test) of real MNIST; skipped with a reason when no copy is reachable."""
    from refdns.datasets import load_mnist

    d = data_dir()
    if d is None:
        pytest.skip("no MNIST copy: set REFDNS_DATA to a folder holding mnist/ (see data/README.md)")
    x_train, y_train = load_mnist("train", data_dir=d, download=False)
    x_test, y_test = load_mnist("test", data_dir=d, download=False)
    return x_train, y_train, x_test, y_test
