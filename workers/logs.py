"""Structured logs: structlog renders every line, ours and the standard library's, with what is being done.

:func:`configure` is called once per process by each entry point (the
worker, the API's ``get_app``, ``threeport up``): JSON lines when stderr is
not a terminal or ``THREEPORT_LOG_FORMAT=json``, coloured console lines in a
terminal, at ``THREEPORT_LOG_LEVEL``. Lines logged through :mod:`logging`
(ours, Dramatiq's, nats-py's, peewee's) go through the same processors, so
every line carries what :mod:`structlog.contextvars` holds in its thread: the
API binds ``request_id`` per request, :class:`MessageContext` binds a
Dramatiq message's ids while a worker thread processes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator, Mapping, Optional, TextIO

import dramatiq
import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, reset_contextvars

__all__ = [
    # Configuration
    "configure",
    "configure_from_env",
    "LEVEL_ENV",
    "FORMAT_ENV",
    # Context
    "bound",
    "MessageContext",
    "add_message_context",
    "message_context",
]

LEVEL_ENV = "THREEPORT_LOG_LEVEL"
FORMAT_ENV = "THREEPORT_LOG_FORMAT"
FORMATS = ("json", "console")

#: What every line gets, whichever logger made it.
_SHARED_PROCESSORS = (
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.ExtraAdder(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
)

_handler: Optional[logging.Handler] = None


def configure(
    *, level: str | int = "info", format: Optional[str] = None, stream: Optional[TextIO] = None
) -> logging.Handler:
    """Render every log line of this process to ``stream`` (stderr) as JSON or for a terminal.

    ``format`` is ``json`` or ``console``; by default JSON unless ``stream``
    is a terminal. Calling it again replaces the handler the last call
    installed (and no other); returns the new one.
    """
    global _handler
    stream = stream or sys.stderr
    chosen = _format(format or ("console" if _is_terminal(stream) else "json"))
    numeric_level = _level(level)
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=list(_SHARED_PROCESSORS),
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_renderers(chosen, stream)],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    _handler = handler
    return handler


def configure_from_env(environ: Mapping[str, str] = os.environ, stream: Optional[TextIO] = None) -> logging.Handler:
    """:func:`configure` from ``THREEPORT_LOG_LEVEL`` (default ``info``) and ``THREEPORT_LOG_FORMAT``."""
    return configure(
        level=environ.get(LEVEL_ENV) or "info",
        format=(environ.get(FORMAT_ENV) or "").lower() or None,
        stream=stream,
    )


def _renderers(chosen: str, stream: TextIO) -> list:
    if chosen == "json":
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    # Local variables stay out of tracebacks: they may hold credentials.
    formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
    return [structlog.dev.ConsoleRenderer(colors=_is_terminal(stream), exception_formatter=formatter)]


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def env_problem(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """What is wrong with ``THREEPORT_LOG_LEVEL`` or ``THREEPORT_LOG_FORMAT``, or None (for a check at start-up)."""
    try:
        _level(environ.get(LEVEL_ENV) or "info")
    except ValueError as exc:
        return f"{LEVEL_ENV}: {exc}"
    try:
        _format((environ.get(FORMAT_ENV) or "json").lower())
    except ValueError as exc:
        return f"{FORMAT_ENV}: {exc}"
    return None


def _format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"unknown log format {name!r}: use one of {', '.join(FORMATS)}")
    return name


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    numeric = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning, error or critical")
    return numeric


# Context ------------------------------------------------------------------------------
@contextlib.contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Every line logged by this thread inside the block carries ``values``; what was bound before comes back after."""
    tokens = bind_contextvars(**values)
    try:
        yield
    finally:
        reset_contextvars(**tokens)


def message_context(message: dramatiq.Message) -> dict[str, Any]:
    """The ids a message's log lines carry: message id, queue, actor, attempt, and the object it is about."""
    context: dict[str, Any] = {
        "message_id": message.message_id,
        "queue": message.queue_name,
        "actor": message.actor_name,
        # Dramatiq's retry count: 0 on the first attempt.
        "attempt": message.options.get("retries", 0),
    }
    for key in ("kind", "object_id"):
        if key in message.kwargs:
            context[key] = message.kwargs[key]
    return context


class MessageContext(dramatiq.Middleware):
    """Binds :func:`message_context` while a worker thread processes a message.

    Dramatiq runs one message at a time per worker thread, so the context is
    the thread's: cleared before a message and after it. Add it first
    (:func:`add_message_context`), so that it binds before the other
    middleware and clears after them, and their lines carry the ids too.
    """

    def before_process_message(self, broker, message) -> None:
        clear_contextvars()
        bind_contextvars(**message_context(message))

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        clear_contextvars()

    after_skip_message = after_process_message


def add_message_context(broker: dramatiq.Broker) -> MessageContext:
    """Add :class:`MessageContext` to ``broker`` ahead of every other middleware."""
    middleware = MessageContext()
    first = broker.middleware[0] if broker.middleware else None
    broker.add_middleware(middleware, before=type(first) if first is not None else None)
    return middleware
