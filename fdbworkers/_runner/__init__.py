"""The job runner: runs a handler for every job a worker owns, with fencing tokens.

``job`` holds what a handler sees (Job, OwnershipChange, RunnerStatistics), ``admin``
adds and removes jobs, ``runner`` is JobRunner and ``run_jobs`` (hooked into the worker
on import); docs/architecture.md lists the rest."""
