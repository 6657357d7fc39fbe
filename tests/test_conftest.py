"""The suite is honest about its data: without MNIST the real-data tests skip with the reason (the README's
second command once errored: 3 failed, 15 errors), and under CI, which has the data, such a skip fails."""

import subprocess
import sys
import textwrap

from tests.conftest import REPO


def _run(tmp_path, env_extra):
    test = tmp_path / "test_probe.py"
    test.write_text(textwrap.dedent("""
        def test_needs_mnist(mnist):
            assert mnist[0].shape[1:] == (1, 28, 28)
    """))
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F401,F403\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env_extra}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(test)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_missing_data_skips_with_the_reason(tmp_path):
    r = _run(tmp_path, {"REFDNS_DATA": str(tmp_path / "empty")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 skipped" in r.stdout and "no MNIST copy" in r.stdout


def test_missing_data_fails_where_the_data_is_required(tmp_path):
    r = _run(tmp_path, {"REFDNS_DATA": str(tmp_path / "empty"), "REFDNS_REQUIRE_DATA": "1"})
    assert r.returncode == 1 and "REFDNS_REQUIRE_DATA=1" in r.stdout
