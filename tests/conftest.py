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


NO_DATA = "no MNIST copy: set REFDNS_DATA to a folder holding mnist/ (see data/README.md)"


def _has_mnist(folder: Path) -> bool:
    return any((folder / "mnist").glob("train-images-idx3-ubyte*")) or any(folder.glob("train-images-idx3-ubyte*"))


def data_dir() -> Path | None:
    """Where the real MNIST files are: $REFDNS_DATA, else the shared folder beside the clone; None when
    neither holds them."""
    env = os.environ.get("REFDNS_DATA")
    folder = Path(env) if env else SHARED_DATA
    return folder if folder.is_dir() and _has_mnist(folder) else None


def require_data() -> Path:
    """The MNIST folder, or skip the test with the reason; with REFDNS_REQUIRE_DATA=1 (CI, which has the
    data) a missing copy fails the test instead, so no real-data test can silently not run there."""
    d = data_dir()
    if d is None:
        if os.environ.get("REFDNS_REQUIRE_DATA") == "1":
            pytest.fail(NO_DATA + " (REFDNS_REQUIRE_DATA=1: the real-data tests must run here)")
        pytest.skip(NO_DATA)
    return d


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20161205)


@pytest.fixture(scope="session")
def mnist():
    """(x_train, y_train, x_test, y_test) of real MNIST; skipped with a reason when no copy is reachable."""
    from refdns.datasets import load_mnist

    d = require_data()
    x_train, y_train = load_mnist("train", data_dir=d, download=False)
    x_test, y_test = load_mnist("test", data_dir=d, download=False)
    return x_train, y_train, x_test, y_test
