"""Logging as a library does it: fdbworkers never configures logging for the process.

Every module logs through :func:`get_logger`, a structlog-style logger (``log.info(
"event", key=value)``, ``log.bind(...)``) that decides *at each call* where the line goes:

* the application configured structlog (``structlog.configure``; the ``fdbworkers`` CLI
  does): the line follows that configuration, like any ``structlog.get_logger()`` line;
* otherwise (the default): the line goes to the standard library's ``logging``, to the
  logger ``fdbworkers.<module>``, so the application's handlers, levels and formats
  apply. The message is ``event key=value ...``; the fields are also on the record as
  ``record.fdbworkers`` (a dict) for structured handlers. The package's logger has a
  ``NullHandler``: with no logging set up, nothing is printed (no stdout, no stderr).

Deciding per call, not when the logger is made, matters: module-level loggers and
loggers bound in constructors exist before the application (or the CLI) configured
anything.

fdbworkers itself never imports structlog: an application that configured it has
imported it, so the first route is taken only when ``structlog`` is already loaded (it
costs a few MB of memory, and imports ``rich`` when that is installed).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

ROOT_LOGGER = "fdbworkers"

logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _Stdlib:
    """The stdlib route: ``event k=v ...`` as the message, the fields as
    ``extra={"fdbworkers": {...}}``, exc_info passed on; nothing is formatted for a
    level the logger does not log."""

    __slots__ = ("_context", "_logger")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._logger = logging.getLogger(name)
        self._context = context

    def log(self, method: str, event: str, kw: dict[str, Any]) -> None:
        level = _LEVELS[method]
        if not self._logger.isEnabledFor(level):
            return
        fields_dict = {**self._context, **kw}
        exc_info = fields_dict.pop("exc_info", method == "exception")
        fields = " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields_dict.items()
        )
        message = f"{event} {fields}" if fields else event
        self._logger.log(
            level,
            message,
            extra={"fdbworkers": {"event": event, **fields_dict}},
            exc_info=exc_info or None,
            stacklevel=4,  # the line that called log.info(...)
        )


class Logger:
    """A structlog-like bound logger routed per call (see the module doc)."""

    __slots__ = ("_context", "_name", "_stdlib", "_structlog", "_structlog_key")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context
        self._stdlib: Any = None
        self._structlog: Any = None
        self._structlog_key: tuple[int, ...] | None = None

    def bind(self, **values: Any) -> Logger:
        return Logger(self._name, {**self._context, **values})

    def new(self, **values: Any) -> Logger:
        return Logger(self._name, dict(values))

    def _configured_structlog(self) -> Any:
        """The structlog logger when the application configured structlog, else None."""
        structlog = sys.modules.get("structlog")
        if structlog is None or not structlog.is_configured():
            return None
        cfg = structlog.get_config()
        key = (
            id(cfg["processors"]),
            id(cfg["wrapper_class"]),
            id(cfg["logger_factory"]),
            id(cfg["context_class"]),
        )
        if self._structlog is None or key != self._structlog_key:
            self._structlog = structlog.get_logger(self._name).bind(**self._context)
            self._structlog_key = key
        return self._structlog

    def _log(self, method: str, event: str, kw: dict[str, Any]) -> None:
        target = self._configured_structlog()
        if target is not None:
            getattr(target, method)(event, **kw)
            return
        if self._stdlib is None:
            self._stdlib = _Stdlib(self._name, self._context)
        self._stdlib.log(method, event, kw)

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, kw)

    warn = warning

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._log("exception", event, kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._log("critical", event, kw)


def get_logger(name: str = ROOT_LOGGER, **context: Any) -> Logger:
    """A logger for ``name`` (``fdbworkers`` or ``fdbworkers.<part>``)."""
    return Logger(name, dict(context))
