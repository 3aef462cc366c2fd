"""The ``fdbworkers`` command line: operators' view of roles, members, jobs and events,
the generic ``--exec`` worker, the dev server and the demo. See docs/cli.md."""

from ._app import cli, main

__all__ = ["cli", "main"]
