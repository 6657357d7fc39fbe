"""The house's floors: imports run downhill only, and there is no cycle (function-level imports included).

    errors/config/atomic/perf/datasets, kernels -> layers -> nets -> prune, hessian, optim, effective, sparse,
    interchange, compress, caffe, thin -> run (and compress.finetune, a training loop of its own) -> train ->
    checkpoint -> golden, pipeline, testing, runfile, sweep, report, ... -> cli

A module imports only from its own floor or below. A new module must be given a floor here, so where it sits
in the house is a decision, not an accident.
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

FLOORS = [
    ("refdns.errors", "refdns.config", "refdns.atomic", "refdns.perf", "refdns.datasets", "refdns.kernels",
     "refdns.__init__"),
    ("refdns.layers",),
    ("refdns.nets",),
    ("refdns.prune", "refdns.hessian", "refdns.optim", "refdns.effective", "refdns.sparse", "refdns.interchange",
     "refdns.compress", "refdns.caffe", "refdns.thin"),
    ("refdns.run", "refdns.compress.finetune"),
    ("refdns.train",),
    ("refdns.checkpoint",),
    ("refdns.golden", "refdns.pipeline", "refdns.netfiles", "refdns.testing", "refdns.report", "refdns.sweep", "refdns.runfile",
     "refdns.stats", "refdns.sensitivity"),
    ("refdns.cli", "refdns.__main__"),
]


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for base, pkg in (("refdns", "refdns"), ("kernels", "refdns.kernels")):
        for p in (REPO / base).rglob("*.py"):
            parts = [x for x in p.relative_to(REPO / base).with_suffix("").parts if x != "__init__"]
            out[".".join([pkg, *parts])] = p
    return out


def floor(module: str) -> int:
    """The floor of the longest name in FLOORS that is ``module`` or a package holding it."""
    if module == "refdns":
        return 0
    found = [(len(n), i) for i, names in enumerate(FLOORS) for n in names
             if module == n or module.startswith(n + ".")]
    if not found:
        raise AssertionError(f"{module} has no floor in tests/test_house.py: decide where it belongs")
    return max(found)[1]


def graph() -> dict[str, set[str]]:
    mods = modules()
    g: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for x in names:
                while x and x not in mods:
                    x = x.rpartition(".")[0]
                if x and x != m and x not in ("refdns", "refdns.kernels") and not m.startswith(x + "."):
                    g[m].add(x)
    return g


def test_every_module_has_a_floor_and_imports_run_downhill():
    g = graph()
    uphill = [f"{m} (floor {floor(m)}) imports {d} (floor {floor(d)})"
              for m, deps in sorted(g.items()) for d in sorted(deps) if floor(d) > floor(m)]
    assert not uphill, "\n".join(uphill)


def test_there_is_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for d in g[m]:
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)
