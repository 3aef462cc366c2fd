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
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

ROOT_LOGGER = "fdbworkers"

logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())


def _to_stdlib(logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
    """The last processor of the stdlib route: ``event k=v ...`` as the message, the
    fields as ``extra={"fdbworkers": {...}}``, exc_info passed on."""
    exc_info = event_dict.pop("exc_info", None)
    event = str(event_dict.pop("event", ""))
    fields = " ".join(
        f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in event_dict.items()
    )
    message = f"{event} {fields}" if fields else event
    kwargs: dict[str, Any] = {"extra": {"fdbworkers": {"event": event, **event_dict}}}
    if exc_info:
        kwargs["exc_info"] = exc_info
    return (message,), kwargs


_STDLIB_PROCESSORS: list[Any] = [structlog.stdlib.filter_by_level, _to_stdlib]


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

    def _target(self) -> Any:
        if structlog.is_configured():
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
        if self._stdlib is None:
            self._stdlib = structlog.wrap_logger(
                logging.getLogger(self._name),
                processors=_STDLIB_PROCESSORS,
                wrapper_class=structlog.stdlib.BoundLogger,
                context_class=dict,
            ).bind(**self._context)
        return self._stdlib

    def debug(self, event: str, **kw: Any) -> None:
        self._target().debug(event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._target().info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._target().warning(event, **kw)

    warn = warning

    def error(self, event: str, **kw: Any) -> None:
        self._target().error(event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._target().exception(event, **kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._target().critical(event, **kw)


def get_logger(name: str = ROOT_LOGGER, **context: Any) -> Logger:
    """A logger for ``name`` (``fdbworkers`` or ``fdbworkers.<part>``)."""
    return Logger(name, dict(context))
