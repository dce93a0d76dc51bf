"""Tracing end to end: an HTTP request, its outbox row, the message, the reconcile, and the adapters' calls.

The API is served over real HTTP, publishing to the session's NATS; a real
Dramatiq worker runs the reconcile actor with the tracing middleware; the
adapters talk to moto and the Kubernetes stand-in. Spans of this process go
to the SDK's in-memory exporter, one at a time as they end; a ``threeport
worker`` process configured by the ``OTEL_*`` variables sends its spans over
OTLP/HTTP to a receiver on loopback.
"""

from __future__ import annotations

import functools
import http.server
import threading
import uuid
from typing import Iterator

import dramatiq
import httpx
import pytest
from dramatiq import Worker
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from api.app import create_app
from api.settings import Settings, hash_token
from models import Outbox, WorkloadDefinition, store
from models.aws import AwsAccount
from models.outbox import TRACE_KEY
from tasks.actor import declare_actors
from tasks.aws_adapter import Aws, AwsNotFound, RetryPolicy
from tasks.kubernetes_adapter import Cluster, Credentials, KubernetesNotFound
from tasks.kubernetes_adapter import RetryPolicy as KubeRetryPolicy
from workers import tracing
from workers.outbox_relay import message_for, publish_rows
from workers.relay import Relay

from .aws import ACCESS_KEYS, ACCOUNT_ID
from .live_api import served
from .reconciling import reconciled, wait_for

TOKEN = "tracing-test-token"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"
#: A client's trace: version 00, trace id, parent span id, sampled.
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRUST = '{"Version": "2012-10-17", "Statement": []}'


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, every span exported to memory as it ends."""
    exporter = InMemorySpanExporter()
    tracing.configure(exporter, service_name="threeport-test", batch=False)
    yield exporter
    tracing.shutdown()


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps the bodies POSTed to ``/v1/traces``."""

    received: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.received.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    _Collector.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def collected_spans(service_name: str) -> list:
    """The spans the collector received from ``service_name``."""
    found = []
    for body in _Collector.received:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            if attributes.get("service.name") == service_name:
                found.extend(span for scope in resource_spans.scope_spans for span in scope.spans)
    return found


class SeenOptions(dramatiq.Middleware):
    """Keeps the options of every message the worker processes."""

    def __init__(self) -> None:
        self.options: list[dict] = []

    def before_process_message(self, broker, message) -> None:
        self.options.append(dict(message.options))


@pytest.fixture
def seen(database, broker, locks) -> Iterator[SeenOptions]:
    """A worker with the tracing middleware (as ``threeport worker`` adds it) running the reconcile actor."""
    tracing.add_message_tracing(broker)
    middleware = SeenOptions()
    broker.add_middleware(middleware)
    declare_actors(broker, locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    yield middleware
    worker.stop()


def serve_api(broker, *, fast_path: bool = True):
    """The API on a loopback port; without ``fast_path`` its rows wait for the relay."""
    settings = Settings(token_hashes=frozenset({hash_token(TOKEN)}))
    publish = functools.partial(publish_rows, broker) if fast_path else None
    return served(create_app(settings, publish=publish))


def post_definition(url: str, name: str, **headers: str) -> dict:
    answer = httpx.post(
        f"{url}/v0/workload-definitions",
        json={"name": name, "yaml_document": YAML},
        headers={"Authorization": f"Bearer {TOKEN}", **headers},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def named(exporter: InMemorySpanExporter, name: str, **attributes) -> list:
    """The finished spans called ``name`` with those attributes."""
    found = []
    for span in exporter.get_finished_spans():
        if span.name == name and all(span.attributes.get(k) == v for k, v in attributes.items()):
            found.append(span)
    return found


def one(exporter: InMemorySpanExporter, name: str, **attributes):
    """The one finished span called ``name`` (with those attributes), once it has ended."""
    return wait_for(lambda: named(exporter, name, **attributes), timeout=10)[0]


def test_a_create_is_one_trace_from_the_request_to_the_reconcile(broker, seen, spans):
    # Given a traced API and a traced worker
    with serve_api(broker) as url:
        # When a client creates a WorkloadDefinition
        created = post_definition(url, "web")
        wait_for(lambda: reconciled(WorkloadDefinition, created["id"]))

    # Then the API's server span names the route template and the status
    api = one(spans, "POST /v0/workload-definitions")
    assert api.kind is SpanKind.SERVER and api.parent is None
    assert api.attributes["http.request.method"] == "POST"
    assert api.attributes["http.route"] == "/v0/workload-definitions"
    assert api.attributes["http.response.status_code"] == 201
    # And the message carried its context: the consumer span is its child
    consumer = one(spans, "process workloads")
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.context.trace_id == api.context.trace_id
    assert consumer.parent.span_id == api.context.span_id
    assert consumer.attributes["messaging.destination.name"] == "workloads"
    assert consumer.attributes["dramatiq.actor"] == "reconcile"
    assert consumer.attributes["dramatiq.attempt"] == 0
    assert consumer.attributes["messaging.message.id"]
    # And the reconcile span is the consumer's child, with the object and its result
    reconcile = one(spans, "reconcile WorkloadDefinition", **{"threeport.object_id": created["id"]})
    assert reconcile.context.trace_id == api.context.trace_id
    assert reconcile.parent.span_id == consumer.context.span_id
    assert reconcile.attributes["threeport.kind"] == "WorkloadDefinition"
    assert reconcile.attributes["threeport.generation"] == 1
    assert reconcile.attributes["threeport.result"] == "reconciled"
    # And the message said so in its options: a W3C traceparent naming the API's span
    [traceparent] = [options["traceparent"] for options in seen.options]
    assert traceparent.startswith(f"00-{api.context.trace_id:032x}-{api.context.span_id:016x}-")


def test_a_client_traceparent_is_continued_through_the_relay(broker, locks, seen, spans):
    # Given a traced API without its fast path: the relay publishes its rows
    with serve_api(broker, fast_path=False) as url:
        # When a client that is tracing creates a WorkloadDefinition
        traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
        created = post_definition(url, "relayed", traceparent=traceparent)

    # Then the API's span continues the client's trace
    api = one(spans, "POST /v0/workload-definitions")
    assert f"{api.context.trace_id:032x}" == CLIENT_TRACE_ID
    assert f"{api.parent.span_id:016x}" == CLIENT_SPAN_ID
    # And the outbox row keeps the API span's context, which its message carries in its options
    row = Outbox.get(Outbox.object_id == created["id"])
    assert row.payload[TRACE_KEY]["traceparent"].startswith(f"00-{CLIENT_TRACE_ID}-{api.context.span_id:016x}-")
    message = message_for(row)
    assert message.options["traceparent"] == row.payload[TRACE_KEY]["traceparent"]
    assert TRACE_KEY not in message.kwargs

    # When the relay publishes it, then the worker's spans belong to the same trace
    assert Relay(broker, older_than=0, locks=locks).run_once() == 1
    wait_for(lambda: reconciled(WorkloadDefinition, created["id"]))
    consumer = one(spans, "process workloads")
    assert f"{consumer.context.trace_id:032x}" == CLIENT_TRACE_ID
    assert consumer.parent.span_id == api.context.span_id
    reconcile = one(spans, "reconcile WorkloadDefinition")
    assert reconcile.parent.span_id == consumer.context.span_id


def test_a_worker_process_traces_when_the_standard_variables_say_so(
    broker, aws_endpoint, start_worker, collector, spans, monkeypatch
):
    # Given a `threeport worker` process started with an OTLP endpoint and a service name
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "threeport-worker-test")
    worker = start_worker()

    # When an AwsAccount is created under a span of this process
    with tracing.span("client") as parent:
        values = {"name": "main", "account_id": ACCOUNT_ID, "default_region": "us-east-1", "endpoint_url": aws_endpoint}
        written = store.create(AwsAccount, {**values, **ACCESS_KEYS})
        publish_rows(broker, written.outbox)
    wait_for(lambda: reconciled(AwsAccount, written.obj.id))
    worker.terminate()  # a graceful stop exports the last spans
    assert worker.wait(30) == 0

    # Then the worker's spans went out over OTLP as its service, in this trace: message, reconcile, AWS call
    by_name = {span.name: span for span in collected_spans("threeport-worker-test")}
    trace_id = parent.get_span_context().trace_id.to_bytes(16, "big")
    consumer, reconcile, call = (
        by_name["process aws"],
        by_name["reconcile AwsAccount"],
        by_name["sts/get_caller_identity"],
    )
    assert {consumer.trace_id, reconcile.trace_id, call.trace_id} == {trace_id}
    assert consumer.parent_span_id == parent.get_span_context().span_id.to_bytes(8, "big")
    assert reconcile.parent_span_id == consumer.span_id
    assert call.parent_span_id == reconcile.span_id


def test_without_tracing_messages_carry_no_context_and_nothing_is_exported(broker, locks, seen):
    # Given tracing configured once and shut down again: this process is not traced
    exporter = InMemorySpanExporter()
    tracing.configure(exporter, batch=False)
    tracing.shutdown()
    assert not tracing.enabled()

    # When a client that is tracing creates an object, and it is reconciled
    with serve_api(broker) as url:
        traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
        created = post_definition(url, "untraced", traceparent=traceparent)
        wait_for(lambda: reconciled(WorkloadDefinition, created["id"]))

    # Then its message had no trace context, its row kept none, and no span was exported
    assert seen.options and not any("traceparent" in options for options in seen.options)
    assert tracing.carrier() == {}
    row = store.create(WorkloadDefinition, {"name": "later", "yaml_document": YAML}).outbox[0]
    assert TRACE_KEY not in row.payload and message_for(row).options == {}
    assert exporter.get_finished_spans() == ()


def test_aws_and_kubernetes_calls_are_client_spans(aws_endpoint, kube, spans):
    # Given an AWS account on moto and a cluster on the stand-in
    where = {"account_id": ACCOUNT_ID, "default_region": "eu-west-1", "endpoint_url": aws_endpoint}
    account = AwsAccount(id=uuid.uuid4(), name="main", **where, **ACCESS_KEYS)
    aws = Aws.for_account(account, retry=RetryPolicy(attempts=2, initial=0.01, ceiling=0.05))
    quick = KubeRetryPolicy(attempts=2, initial=0.01, ceiling=0.05, connect_timeout=2, read_timeout=10)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}, "data": {"colour": "blue"}}

    # When a span is open around calls that succeed and calls that find nothing
    with Cluster(Credentials(endpoint=kube.url), retry=quick) as cluster:
        with tracing.span("test") as parent:
            aws.call("iam", "create_role", RoleName="web", AssumeRolePolicyDocument=TRUST)
            with pytest.raises(AwsNotFound):
                aws.call("iam", "get_role", RoleName="missing")
            cluster.apply(config_map)
            with pytest.raises(KubernetesNotFound):
                cluster.get("v1", "ConfigMap", "missing", "default")
            assert len(cluster.list("v1", "Node")) == 2

    # Then each AWS call is a client span under it, naming the service, operation and region
    test_span = parent.get_span_context()
    created = one(spans, "iam/create_role")
    assert created.kind is SpanKind.CLIENT and created.parent.span_id == test_span.span_id
    assert created.attributes["rpc.system"] == "aws-api"
    assert (created.attributes["rpc.service"], created.attributes["rpc.method"]) == ("iam", "create_role")
    assert created.attributes["cloud.region"] == "eu-west-1"
    assert created.status.status_code is StatusCode.UNSET
    # And a failed call names AWS's error code
    missing = one(spans, "iam/get_role")
    assert missing.parent.span_id == test_span.span_id
    assert missing.attributes["aws.error.code"] == "NoSuchEntity"
    assert missing.status.status_code is StatusCode.ERROR
    # And each Kubernetes call is a client span naming the verb, kind, namespace and status
    applied = one(spans, "apply ConfigMap")
    assert applied.kind is SpanKind.CLIENT and applied.parent.span_id == test_span.span_id
    assert applied.attributes["k8s.verb"] == "apply"
    assert applied.attributes["k8s.kind"] == "ConfigMap"
    assert applied.attributes["k8s.namespace.name"] == "default"
    assert applied.attributes["http.response.status_code"] in (200, 201)
    not_found = one(spans, "get ConfigMap")
    assert not_found.attributes["http.response.status_code"] == 404
    assert not_found.status.status_code is StatusCode.ERROR
    nodes = one(spans, "list Node")
    assert "k8s.namespace.name" not in nodes.attributes  # nodes live outside namespaces
    assert nodes.attributes["http.response.status_code"] == 200
    assert one(spans, "discover v1").parent.span_id == test_span.span_id


def test_the_standard_variables_turn_tracing_on_and_spans_go_out_over_otlp(collector):
    # Given no variables, or variables that say no, tracing stays off
    assert tracing.configure_from_env("threeport-test", {}) is False
    assert tracing.configure_from_env("threeport-test", {"OTEL_TRACES_EXPORTER": "none"}) is False
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_SDK_DISABLED": "true"}
    assert tracing.configure_from_env("threeport-test", disabled) is False
    assert not tracing.enabled()

    # When an OTLP endpoint and a service name are given
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_SERVICE_NAME": "threeport-otlp"}
    try:
        assert tracing.configure_from_env("threeport-test", environ) is True
        with tracing.span("hello", attributes={"threeport.kind": "Test"}):
            pass
    finally:
        tracing.shutdown()  # exports what the batch holds

    # Then the span reached the endpoint over OTLP/HTTP, as the named service
    assert [span.name for span in collected_spans("threeport-otlp")] == ["hello"]
