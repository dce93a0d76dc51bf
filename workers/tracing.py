"""Optional OpenTelemetry tracing, and the only module that imports ``opentelemetry``.

One trace follows a change from the client to the outside world: the API's
server span (continuing the client's W3C ``traceparent``), the outbox row,
which keeps that context under the payload key :data:`models.outbox.TRACE_KEY`,
the Dramatiq message, which carries it as its ``traceparent`` (and
``tracestate``) options, the worker's consumer span (:class:`MessageTracing`),
the reconcile span, and the adapters' client spans to AWS and Kubernetes.

Tracing is off until :func:`configure` (or :func:`configure_from_env`, which
each entry point calls once) turns it on. Off, every helper here checks one
global and returns (opentelemetry is not even imported), so a process without
the ``tracing`` extra or without the ``OTEL_*`` variables runs as before.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any, Mapping, Optional

import dramatiq

from models import outbox

__all__ = [
    # Configuration
    "configure",
    "configure_from_env",
    "shutdown",
    "enabled",
    # Spans
    "span",
    "begin",
    "OpenSpan",
    "MessageTracing",
    "add_message_tracing",
    # Propagation
    "carrier",
    "FIELDS",
]

logger = logging.getLogger(__name__)

#: The W3C trace-context fields carried in HTTP headers, outbox rows and message options.
FIELDS = ("traceparent", "tracestate")
#: ``OTEL_TRACES_EXPORTER`` values this module knows (``none`` turns tracing off).
EXPORTERS = ("otlp", "console")
_KINDS = ("internal", "server", "client", "producer", "consumer")


class _State:
    """What :func:`configure` set up: the provider, its tracer, and the pieces of opentelemetry used here."""

    def __init__(self, provider: Any, service_name: str) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("threeport")
        self.service_name = service_name
        self.context = context
        self.trace = trace
        self.propagator = TraceContextTextMapPropagator()
        self.kinds = {name: getattr(trace.SpanKind, name.upper()) for name in _KINDS}
        self.error = trace.Status(trace.StatusCode.ERROR)


_state: Optional[_State] = None


# Configuration ------------------------------------------------------------------------
def configure(*exporters: Any, service_name: str = "threeport", batch: bool = True) -> None:
    """Trace this process: finished spans go to ``exporters`` (OpenTelemetry ``SpanExporter`` objects).

    ``batch=False`` exports each span as it ends (what tests want), instead of
    in batches from a background thread. Calling it again replaces the earlier
    setup (which is shut down first). ``OTEL_TRACES_SAMPLER`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` apply as the SDK reads them.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    global _state
    shutdown()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _state = _State(provider, service_name)
    outbox.set_trace_context(carrier)
    atexit.unregister(shutdown)
    atexit.register(shutdown)  # once, whatever the number of calls: the last spans go out at exit


def configure_from_env(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """:func:`configure` when the standard variables ask for traces; whether this process is traced now.

    On with ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, comma-separated;
    ``none`` is off) or, without it, with ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OTLP over HTTP/protobuf); off with
    ``OTEL_SDK_DISABLED=true``. ``OTEL_SERVICE_NAME`` overrides
    ``service_name``. Without the ``tracing`` extra installed it logs a
    warning and stays off.
    """
    names = _exporter_names(environ)
    if not names:
        return False
    try:
        exporters = [_exporter(name, environ) for name in names]
    except ImportError as exc:
        logger.warning("Tracing is asked for but OpenTelemetry is missing (%s): pip install 'threeport[tracing]'.", exc)
        return False
    exporters = [exporter for exporter in exporters if exporter is not None]
    if not exporters:
        return False
    service_name = environ.get("OTEL_SERVICE_NAME") or service_name
    configure(*exporters, service_name=service_name)
    logger.info("Tracing on: spans of %r go to %s.", service_name, "+".join(names))
    return True


def shutdown() -> None:
    """Export what is left and stop tracing this process (a no-op when it is not traced)."""
    global _state
    state, _state = _state, None
    if state is None:
        return
    outbox.set_trace_context(None)
    state.provider.shutdown()


def enabled() -> bool:
    """Whether this process is traced."""
    return _state is not None


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    listed = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if listed:
        return [] if "none" in listed else listed
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        logger.warning("OTEL_TRACES_EXPORTER %r is not one of %s: ignored.", name, ", ".join(EXPORTERS))
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        logger.warning("OTLP protocol %r is not available: spans go as http/protobuf.", protocol)
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)  # headers, timeout, certificates: the OTEL_* variables


# Propagation ------------------------------------------------------------------------------
def carrier() -> dict[str, str]:
    """The current trace context as W3C fields (``traceparent``, maybe ``tracestate``); empty when there is none."""
    state = _state
    found: dict[str, str] = {}
    if state is not None:
        state.propagator.inject(found)
    return found


def _extracted(state: _State, headers: Optional[Mapping[str, Any]]) -> Any:
    """The context the W3C fields in ``headers`` (any case) name; None (the current one) without them."""
    if headers is None:
        return None
    fields = {}
    for name in FIELDS:
        value = headers.get(name) or headers.get(name.upper())
        if isinstance(value, str):
            fields[name] = value
    return state.propagator.extract(fields) if fields else None


# Spans -------------------------------------------------------------------------------------
class _NoSpan:
    """What the helpers hand out while tracing is off: takes attributes and drops them."""

    def __enter__(self) -> "_NoSpan":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass


_NO_SPAN = _NoSpan()


def span(name: str, *, kind: str = "internal", attributes: Optional[Mapping[str, Any]] = None) -> Any:
    """A context manager: a span current for the block, a child of the current one.

    It records an exception leaving the block and marks the span failed. Off,
    it is a shared no-op object, so ``with span(...) as s: s.set_attribute(...)``
    costs next to nothing.
    """
    state = _state
    if state is None:
        return _NO_SPAN
    return state.tracer.start_as_current_span(name, kind=state.kinds[kind], attributes=_clean(attributes))


class OpenSpan:
    """A span begun in one hook and ended in another (Falcon's, Dramatiq's middleware), current in between.

    Both hooks must run in the same thread, as Falcon's and Dramatiq's do.
    """

    def __init__(self, state: _State, span: Any, token: object) -> None:
        self._state = state
        self._span = span
        self._token = token

    def set_attribute(self, key: str, value: Any) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def rename(self, name: str) -> None:
        self._span.update_name(name)

    def end(self, *, error: Optional[BaseException] = None, failed: bool = False) -> None:
        """End the span (failed when ``error`` or ``failed``) and make the context before it current again."""
        if error is not None:
            self._span.record_exception(error)
        if error is not None or failed:
            self._span.set_status(self._state.error)
        self._span.end()
        self._state.context.detach(self._token)


def begin(
    name: str,
    *,
    kind: str = "internal",
    attributes: Optional[Mapping[str, Any]] = None,
    headers: Optional[Mapping[str, Any]] = None,
) -> Optional[OpenSpan]:
    """Start a span and make it current until :meth:`OpenSpan.end`; None while tracing is off.

    With ``headers`` holding W3C fields (``traceparent``, ``tracestate``, in
    any case), the span continues that trace; otherwise it is a child of the
    current span, or starts a trace.
    """
    state = _state
    if state is None:
        return None
    parent = _extracted(state, headers)
    started = state.tracer.start_span(name, context=parent, kind=state.kinds[kind], attributes=_clean(attributes))
    token = state.context.attach(state.trace.set_span_in_context(started, parent))
    return OpenSpan(state, started, token)


def _clean(attributes: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    """Attributes without the None values (which OpenTelemetry refuses)."""
    if not attributes:
        return None
    return {key: value for key, value in attributes.items() if value is not None}


# The worker's side ------------------------------------------------------------------------------
class MessageTracing(dramatiq.Middleware):
    """A consumer span around each message a worker thread processes, continuing the trace in its options.

    The span (``process <queue>``) is current while the actor runs, so the
    reconcile span and the adapters' spans are its children. Add it with
    :func:`add_message_tracing`, just after the log context, so that it
    encloses the other middleware.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if _state is None:
            return
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.queue_name,
            "messaging.message.id": message.message_id,
            "dramatiq.actor": message.actor_name,
            "dramatiq.attempt": message.options.get("retries", 0),
        }
        opened = begin(f"process {message.queue_name}", kind="consumer", attributes=attributes, headers=message.options)
        self._local.current = (message.message_id, opened)

    def after_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message, *, result: Any = None, exception: Any = None
    ) -> None:
        opened = self._take(message)
        if opened is not None:
            opened.end(error=exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        opened = self._take(message)
        if opened is not None:
            opened.set_attribute("dramatiq.skipped", True)
            opened.end()

    def _take(self, message: dramatiq.Message) -> Optional[OpenSpan]:
        """This thread's span for ``message`` (None when its ``before`` hook did not run), forgotten."""
        current = getattr(self._local, "current", None)
        if current is None or current[0] != message.message_id:
            return None
        self._local.current = None
        return current[1]


def add_message_tracing(broker: dramatiq.Broker) -> MessageTracing:
    """Add :class:`MessageTracing` to ``broker`` after the log context (first without one)."""
    from .logs import MessageContext

    middleware = MessageTracing()
    if any(isinstance(m, MessageContext) for m in broker.middleware):
        broker.add_middleware(middleware, after=MessageContext)
    elif broker.middleware:
        broker.add_middleware(middleware, before=type(broker.middleware[0]))
    else:
        broker.add_middleware(middleware)
    return middleware
