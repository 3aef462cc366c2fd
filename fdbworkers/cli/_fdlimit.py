"""The open-file limit of a worker that supervises processes.

For each process it supervises, the ``--exec`` runner holds up to
:data:`DESCRIPTORS_PER_PROCESS` descriptors: both ends of the process's stdout and
stderr pipes while it starts, then their read ends and its pidfd. The usual soft
limit is 1024: a login shell's ``ulimit -n``, and systemd's default
``LimitNOFILE=1024:524288``. Under that limit a CLI worker stopped at about 330
processes. Measured with 400 jobs, 333 processes started and the other 67 failed to
start with EMFILE ("Too many open files"), again and again.

So before each start, the runner raises the soft limit to what its processes need
(:func:`raised_limit`). It doubles the limit each time, and never goes above the hard
limit, which only an administrator can raise. The processes it starts inherit the
raised soft limit. Where the hard limit is too low, a start fails with EMFILE; that
failure is logged with a hint (:func:`hint`) and retried with backoff, like any other
failed start.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["DESCRIPTORS_PER_PROCESS", "RESERVED_DESCRIPTORS", "OpenFileLimit", "raised_limit"]

#: Descriptors the worker holds per supervised process, at most: two pipes while it
#: starts (four ends), then their read ends and a pidfd (three).
DESCRIPTORS_PER_PROCESS: Final = 4
#: Descriptors kept for the rest of the worker: the database client's connections, the
#: event loop's, the output pump's epoll set, log files, the metrics server, and the
#: starts in flight (each opens an error pipe and /dev/null for a moment; the runner
#: starts at most ``SPAWNS_AT_ONCE`` at once).
RESERVED_DESCRIPTORS: Final = 256


def raised_limit(soft: int | None, hard: int | None, processes: int) -> int | None:
    """The soft limit to set before starting a process while ``processes`` already run,
    or None to leave it as it is. ``None`` as a limit means unlimited.

    The limit is enough for the running processes, the new one and
    :data:`RESERVED_DESCRIPTORS`. It is at least double the current soft limit, so that
    raises are few. It is never above ``hard``. It is never lowered."""
    need = needed(processes)
    if soft is None or soft >= need:
        return None
    target = max(need, 2 * soft)
    if hard is not None:
        target = min(target, hard)
    return target if target > soft else None


def needed(processes: int) -> int:
    """Descriptors the worker needs to start one more process while ``processes`` run."""
    return RESERVED_DESCRIPTORS + DESCRIPTORS_PER_PROCESS * (processes + 1)


def hint(soft: int | None, hard: int | None) -> str:
    """What to tell the operator when a start failed with EMFILE."""
    return (
        f"the worker's open-file limit is reached (soft {_show(soft)}, hard {_show(hard)}):"
        f" each supervised process holds up to {DESCRIPTORS_PER_PROCESS} descriptors in the"
        " worker; raise the hard limit (ulimit -Hn, or LimitNOFILE= in a systemd unit)"
    )


def _show(limit: int | None) -> str:
    return "unlimited" if limit is None else str(limit)


class OpenFileLimit:
    """Raises this process's soft ``RLIMIT_NOFILE`` as :func:`raised_limit` says. On a
    platform without ``resource`` (Windows) it does nothing."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._at_hard = False  # logged once: the hard limit stops further raises

    def limits(self) -> tuple[int | None, int | None]:
        """(soft, hard); None: unlimited, or no such limit on this platform."""
        try:
            import resource
        except ImportError:  # pragma: no cover - not POSIX
            return None, None
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        inf = resource.RLIM_INFINITY
        return (None if soft == inf else soft), (None if hard == inf else hard)

    def before_start(self, processes: int) -> None:
        """Called before a process is started, with ``processes`` already running."""
        soft, hard = self.limits()
        target = raised_limit(soft, hard, processes)
        if target is None:
            if soft is not None and soft < needed(processes):
                self._stuck("open_file_limit_at_hard", hint=hint(soft, hard))
            return
        import resource

        try:
            raw_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, raw_hard))
        except (ValueError, OSError) as e:  # e.g. above the kernel's fs.nr_open
            why = str(e)
            self._stuck("open_file_limit_not_raised", to=target, error=why, hint=hint(soft, hard))
            return
        self._log.info("open_file_limit_raised", soft=soft, to=target, hard=hard)

    def _stuck(self, event: str, **values: Any) -> None:
        """Say once that the limit cannot go higher (the failed starts say the rest)."""
        if not self._at_hard:
            self._at_hard = True
            self._log.warning(event, **values)
