"""The package's layers, as docs/architecture.md draws them, checked from the imports.

* the pure core imports no I/O library (no trio or anyio, no fdb, no sockets, no structlog);
* nothing outside ``cli/`` imports the CLI;
* no module imports a module of a higher layer, so there are no circles;
* every module of the package is in the layer table of docs/architecture.md.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from fdbworkers._core.states import TRANSITIONS, WorkerState, allowed

PKG = Path(__file__).resolve().parent.parent / "fdbworkers"
DOCS = PKG.parent / "docs"

#: Lowest first. A module may import only from its own layer or a lower one.
LAYERS: list[tuple[str, list[str]]] = [
    ("errors", ["fdbworkers._errors", "fdbworkers._log"]),
    ("core", ["fdbworkers._core"]),
    ("seam", ["fdbworkers._db", "fdbworkers._loop"]),
    ("backends", ["fdbworkers._backends"]),
    ("store", ["fdbworkers._store"]),
    (
        "worker",
        [
            "fdbworkers._worker_options",
            "fdbworkers._worker_base",
            "fdbworkers._worker_neighbours",
            "fdbworkers._worker_membership",
            "fdbworkers._worker_lease",
            "fdbworkers._worker",
        ],
    ),
    ("runner", ["fdbworkers._runner"]),
    (
        "shell",
        [
            "fdbworkers._metrics",
            "fdbworkers._blocking",
            "fdbworkers._blocking_db",
            "fdbworkers._fleet",
            "fdbworkers._simulation",
            "fdbworkers._sim_faults",
            "fdbworkers.testing",
            "fdbworkers.__init__",
        ],
    ),
    ("cli", ["fdbworkers.cli", "fdbworkers.__main__"]),
]
#: Imports the pure core may make outside the package (no I/O, no event loop).
CORE_ALLOWED = {
    "__future__",
    "array",
    "base64",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "msgpack",
    "numbers",
    "numpy",
    "struct",
    "types",
    "typing",
    "uuid",
    "weakref",  # no I/O: plans and maps shared while some worker holds them (_core/memo.py)
    "zlib",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        out[".".join(rel.parts)] = path
    return out


def _imports(mod: str, path: Path) -> list[str]:
    """Every module ``mod`` imports, absolute, TYPE_CHECKING blocks included."""
    tree = ast.parse(path.read_text())
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.append(base)
            # `from . import x` / `from .pkg import mod`: the submodule is imported too
            found += [f"{base}.{a.name}" for a in node.names]
    return found


def _layer(mod: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(mod == p or mod.startswith(p + ".") for p in prefixes):
            return i
    return None


MODULES = _modules()


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if _layer(m) is None and m != "fdbworkers"] == []


def test_no_import_runs_up_a_layer() -> None:
    wrong = []
    for mod, path in MODULES.items():
        here = _layer(mod) if mod != "fdbworkers" else _layer("fdbworkers.__init__")
        for target in _imports(mod, path):
            if target not in MODULES and not target.startswith("fdbworkers."):
                continue
            there = _layer(target)
            if there is not None and here is not None and there > here:
                wrong.append(f"{mod} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]})")
    assert wrong == []


def test_no_circles_between_modules() -> None:
    graph = {
        m: {t for t in _imports(m, p) if t in MODULES and t != m and not m.startswith(t + ".")}
        for m, p in MODULES.items()
    }
    # The package __init__ files re-export; a module importing its own package is fine.
    graph = {m: {t for t in ts if MODULES[t].name != "__init__.py"} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycle.extend([*stack[stack.index(t) :], t] if t in stack else [m, t])
                return True
            if t not in state and visit(t, [*stack, t]):
                return True
        state[m] = 2
        return False

    for m in graph:
        if m not in state and visit(m, [m]):
            break
    assert cycle == []


def test_the_core_is_pure() -> None:
    bad = []
    for mod, path in MODULES.items():
        if _layer(mod) != 1:
            continue
        for target in _imports(mod, path):
            top = target.split(".")[0]
            if top == "fdbworkers":
                if _layer(target) not in (0, 1):
                    bad.append(f"{mod} imports {target}")
            elif top not in CORE_ALLOWED:
                bad.append(f"{mod} imports {target}")
    assert bad == []


def test_importing_the_core_loads_no_io_library() -> None:
    code = (
        "import sys\n"
        "import fdbworkers._core.keys, fdbworkers._core.assign, fdbworkers._core.insight\n"
        "import fdbworkers._core.liveness, fdbworkers._core.states, fdbworkers._core.tuples\n"
        "import fdbworkers._core.claims, fdbworkers._core.insight_plan, fdbworkers._core.records\n"
        "bad = [m for m in ('trio', 'anyio', 'asyncio', 'fdb', 'structlog', 'socket',\n"
        "                   'threading', 'rich', 'click') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    # Importing a subpackage runs fdbworkers/__init__.py, which loads the whole public
    # API; so load the core's files without the package's __init__.
    loader = (
        "import importlib.util, sys, types\n"
        f"pkg = types.ModuleType('fdbworkers'); pkg.__path__ = [{str(PKG)!r}]\n"
        "sys.modules['fdbworkers'] = pkg\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", loader + code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_only_the_fdb_backend_imports_fdb() -> None:
    users = [
        m
        for m, p in MODULES.items()
        if any(t == "fdb" or t.startswith("fdb.") for t in _imports(m, p))
    ]
    assert users == ["fdbworkers._backends.fdb"]


def test_the_layer_table_lists_every_module() -> None:
    doc = (DOCS / "architecture.md").read_text()
    table = doc[doc.index("## Layers") : doc.index("## ", doc.index("## Layers") + 3)]
    missing = []
    for mod, path in MODULES.items():
        rel = path.relative_to(PKG).as_posix()
        if path.name == "__init__.py" and mod != "fdbworkers":
            rel = path.parent.relative_to(PKG).as_posix() + "/"
        if rel not in table and rel.removesuffix("/__init__.py") not in table:
            missing.append(rel)
    assert missing == []


def test_docs_links_point_to_existing_files() -> None:
    root = PKG.parent
    broken = []
    for md in [root / "README.md", *DOCS.glob("*.md"), *root.glob("examples/**/*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(root)} -> {target}")
    assert broken == []


def test_docs_named_in_code_and_docs_exist() -> None:
    """Every document that code or docs name by its path under docs/ must exist."""
    root = PKG.parent
    named = set()
    for path in [*root.glob("**/*.py"), *root.glob("**/*.md")]:
        if ".venv" in path.parts or ".git" in path.parts:
            continue
        named |= set(re.findall(r"\bdocs/[\w.-]+\.md\b", path.read_text(errors="replace")))
    assert sorted(n for n in named if not (root / n).exists()) == []


# --- the worker's state machine -------------------------------------------------------


def test_the_state_table_is_closed_and_left_is_final() -> None:
    assert set(TRANSITIONS) == set(WorkerState)
    assert TRANSITIONS[WorkerState.LEFT] == frozenset()
    reachable = {WorkerState.STARTING}
    frontier = [WorkerState.STARTING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(WorkerState)
    assert allowed(WorkerState.ACTIVE, WorkerState.ACTIVE)
    assert not allowed(WorkerState.LEFT, WorkerState.ACTIVE)


@pytest.mark.parametrize("seed", range(6))
def test_the_simulation_makes_only_allowed_transitions(seed: int) -> None:
    import structlog

    from fdbworkers.testing import SimConfig, Simulation

    async def main() -> list[tuple[str, str]]:
        with structlog.testing.capture_logs() as logs:
            report = await Simulation(seed, SimConfig(workers=4, jobs=12, duration=90.0)).run()
        report.raise_for_violations()
        unexpected = [e for e in logs if e["event"] == "worker_state_unexpected"]
        assert unexpected == [], f"seed {seed}: {unexpected}"
        return [(e["old"], e["new"]) for e in logs if e["event"] == "worker_state"]

    seen = trio.run(main, clock=MockClock(autojump_threshold=0))
    for old, new in seen:
        assert allowed(WorkerState(old), WorkerState(new)), f"seed {seed}: {old} -> {new}"
