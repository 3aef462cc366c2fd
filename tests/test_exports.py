"""The public API is exactly what fdbworkers/__init__.py re-exports."""

from __future__ import annotations

import subprocess
import sys

import fdbworkers


def test_all_names_exist_and_are_public() -> None:
    for name in fdbworkers.__all__:
        assert hasattr(fdbworkers, name), name
    public = {n for n in dir(fdbworkers) if not n.startswith("_")}
    # Submodules imported as a side effect are not API, except the documented one.
    modules = {n for n in public if type(getattr(fdbworkers, n)).__name__ == "module"}
    assert public - modules - {"annotations"} <= set(fdbworkers.__all__)
    assert modules <= {"testing", "cli"}


def test_import_does_not_load_libfdb_c() -> None:
    code = (
        "import sys, fdbworkers, fdbworkers.testing\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('fdb'))\n"
        "assert 'fdb.impl' not in sys.modules, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_blocking_facade_is_public() -> None:
    """Threaded programs use BlockingWorker and the blocking job, database and
    transaction it hands out (docs/asyncio.md)."""
    from fdbworkers._blocking import __all__ as blocking

    assert set(blocking) <= set(fdbworkers.__all__)
    assert {"BlockingWorker", "BlockingJob", "BlockingDatabase", "BlockingTransaction"} <= set(
        blocking
    )
