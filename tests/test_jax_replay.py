"""The JAX replay (validate/jax_crosscheck.py) passes the goldens and catches a wrong variant at its step."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="JAX not installed (optional)"
)


@pytest.mark.parametrize(("name", "wrong"), [("dns", None), ("dns", "ddof1"), ("han", "han-momentum")])
def test_jax_replay(name, wrong):
    sys.path.insert(0, str(REPO / "validate"))
    import jax_crosscheck
    import torch_crosscheck

    row = torch_crosscheck.run(
        REPO / "data" / "golden" / f"lenet-300-100-{name}.h5",
        wrong,
        framework="jax",
        make=jax_crosscheck.candidate,
    )
    assert row["ok"], row["report"]
