"""The example extension's controller, in a process of its own, reconciles its objects end to end.

The API is served over HTTP on the test's database and broker; the core
reconcile actor runs in this process for the workload and Kubernetes
queues; the default runtime is the Kubernetes stand-in (tests/kube.py).
``threeport worker --extension fancy_workload`` runs from
examples/fancy-workload/ as a subprocess: it registers acmecorp.com/v1,
consumes ``ext.acmecorp.com`` and talks to the control plane through the API.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from dramatiq import Worker
from opentelemetry.trace import SpanKind
from typer.testing import CliRunner

from api.app import create_app
from api.settings import Settings, hash_token
from cli.config import ClientConfig, ControlPlane, save
from cli.main import app as cli_app
from models import WorkloadDefinition, WorkloadInstance
from tasks import kubernetes_runtimes, workload_instances
from tasks.actor import declare_actors
from tasks.api_client import ApiClient
from tasks.extensions import Extension
from tasks.kubernetes_adapter import RetryPolicy
from workers.heartbeats import live_workers
from workers.locks import LockManager
from workers.outbox_relay import publish_rows

from .kube import runtime_for
from .live_api import served
from .reconciling import wait_for
from .test_tracing import collected_spans, collector, spans  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fancy-workload"
TOKEN = "extension-controller-test-token"
FANCY = "/acmecorp.com/v1/fancy-workloads"


@pytest.fixture
def api_url(database, broker):
    """The API over HTTP on a free loopback port, publishing its outbox rows on the test's broker."""
    app = create_app(
        Settings(token_hashes=frozenset({hash_token(TOKEN)})), publish=functools.partial(publish_rows, broker)
    )
    with served(app) as url:
        yield url


@pytest.fixture
def http(api_url):
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture
def core_worker(database, broker, prefix, monkeypatch):
    """The core reconcile actor on the workloads and kubernetes queues."""
    monkeypatch.setattr(kubernetes_runtimes, "RETRY_POLICY", RetryPolicy(attempts=2, initial=0.01, ceiling=0.05))
    monkeypatch.setattr(workload_instances, "HEALTH_POLL", 0.2)
    locks = LockManager(connection=broker.connection, bucket=f"locks_{prefix}")
    declare_actors(broker, ["workloads", "kubernetes"], locks=locks, min_backoff=200, max_backoff=1000)
    # Only the core's queues: the extension's queue is its controller's (the API declares it when it publishes).
    worker = Worker(broker, queues={"workloads", "kubernetes"}, worker_timeout=100, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()
    locks.delete_bucket()


@pytest.fixture
def controller(api_url, nats_server, prefix):
    """``threeport worker --extension fancy_workload`` in its own process, stopped (SIGTERM) at the end."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT)]),
        "NATS_URL": nats_server.url,
        "THREEPORT_PREFIX": prefix,
        "THREEPORT_API_URL": api_url,
        "THREEPORT_API_TOKEN": TOKEN,
    }
    command = [sys.executable, "-c", "from cli.main import app; app()", "worker", "--extension", "fancy_workload"]
    proc = subprocess.Popen([*command, "--threads", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("extension controller ready"), f"the controller did not start: {line!r}"
    yield proc
    proc.terminate()
    assert proc.wait(30) == 0


def test_the_example_controller_reconciles_its_objects_end_to_end(kube, http, broker, prefix, core_worker, controller):
    # Given a default runtime (the stand-in) and the example's controller running on its own,
    # registered and listed among the live workers
    runtime_for(kube.url, default=True)
    registered = http.get("/v0/extensions", params={"domain": "acmecorp.com"}).json()["items"]
    assert [(e["version"], e["queue"]) for e in registered] == [("v1", "ext.acmecorp.com")]
    workers = wait_for(lambda: live_workers(broker.connection, prefix))
    assert [(w.pid, w.queues) for w in workers] == [(controller.pid, ["ext.acmecorp.com"])]

    # When a FancyWorkload is created through the API
    created = http.post(FANCY, json={"name": "shop", "image": "nginx:1.27", "replicas": 2, "port": 80})
    assert created.status_code == 201, created.text
    path = f"{FANCY}/{created.json()['id']}"

    # Then its controller makes a core WorkloadInstance of it, deployed to the runtime, and reports it
    obj = wait_for(lambda: (o := http.get(path).json())["reconciled"] and o, timeout=60)
    instance = WorkloadInstance.get_by_id(obj["status"]["workload_instance_id"])
    assert (instance.name, instance.reconciled, obj["status"]["phase"]) == ("fancy-shop", True, "Reconciled")
    namespace = instance.status["namespace"]
    deployment = kube.live("apps/v1", "Deployment", namespace, "shop")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert kube.live("v1", "Service", namespace, "shop") is not None
    reasons = [e["reason"] for e in http.get("/v0/events", params={"object_id": obj["id"]}).json()["items"]]
    assert "Reconciled" in reasons

    # When it is deleted
    assert http.delete(path).status_code == 202

    # Then the controller tears the core objects down, then confirms: everything is gone
    wait_for(lambda: http.get(path).status_code == 404, timeout=60)
    assert not WorkloadInstance.select().exists() and not WorkloadDefinition.select().exists()
    assert kube.live("apps/v1", "Deployment", namespace, "shop") is None


def test_registering_an_extension_again_keeps_it_and_a_compatible_change_replaces_it(api_url):
    # Given an extension declared in code, registered once
    api = ApiClient(api_url, TOKEN)
    acme = Extension("acmecorp.com", "v2")

    @acme.kind("Gadget", schema={"type": "object", "properties": {"size": {"type": "integer"}}})
    class Gadgets:
        def reconcile(self, obj, api):
            return None

    first = acme.register(api)

    # When it is registered again as it is, and then with one more optional property
    again = acme.register(api)
    acme.kinds["Gadget"].schema = {"type": "object", "properties": {"size": {"type": "integer"}, "colour": {}}}
    grown = acme.register(api)

    # Then the first registration is kept as it was, and then replaced in place
    assert again == first
    assert grown["id"] == first["id"] and grown["resource_version"] == first["resource_version"] + 1
    assert api.request("POST", "/acmecorp.com/v2/gadgets", json={"name": "g", "colour": [1]}).status_code == 201


def test_the_client_finds_extension_kinds_by_short_name_until_two_share_it(api_url, tmp_path, monkeypatch):
    # Given the CLI configured for the live API, and one extension with a FancyWorkload
    config = ClientConfig()
    config.add(ControlPlane(name="test", api_url=api_url, token=TOKEN))
    save(config, tmp_path / "client.yaml")
    monkeypatch.setenv("THREEPORT_CONFIG", str(tmp_path / "client.yaml"))
    runner = CliRunner()

    def cli(*args: str):
        return runner.invoke(cli_app, list(args), env={"COLUMNS": "200"})

    api = ApiClient(api_url, TOKEN)
    for domain in ("acmecorp.com", "fancy.com"):
        fancy = Extension(domain, "v1")
        fancy.kind("FancyWorkload", schema={"type": "object", "properties": {"image": {"type": "string"}}})(object)
        fancy.register(api)
        api.request("POST", f"/{domain}/v1/fancy-workloads", json={"name": f"from-{domain}", "image": "nginx"})
        if domain == "acmecorp.com":
            # When it is the only FancyWorkload, then its short name and plural find it
            shown = cli("get", "FancyWorkload", "-o", "json")
            assert shown.exit_code == 0, shown.output
            assert [o["name"] for o in json.loads(shown.stdout)] == ["from-acmecorp.com"]

    # When a second extension has a FancyWorkload too, then the short name is ambiguous and says so
    ambiguous = cli("get", "fancy-workloads")
    assert ambiguous.exit_code == 1
    assert "names several kinds (acmecorp.com/v1/FancyWorkload, fancy.com/v1/FancyWorkload)" in ambiguous.stderr
    # And the qualified name, or the path, finds each
    for name in ("fancy.com/v1/FancyWorkload", "fancy.com/v1/fancy-workloads"):
        shown = cli("get", name, "-o", "json")
        assert [o["name"] for o in json.loads(shown.stdout)] == ["from-fancy.com"], shown.output


@pytest.fixture
def traced_env(collector, monkeypatch):  # noqa: F811
    """The OTEL_* variables of a controller that exports its spans to the test's OTLP receiver."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "threeport-extension-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")


def test_a_traced_controller_continues_the_api_trace(kube, http, spans, core_worker, traced_env, controller):  # noqa: F811
    # Given a traced API (this process) and a controller started with the OTEL_* variables
    runtime_for(kube.url, default=True)

    # When a FancyWorkload is created and reconciled
    created = http.post(FANCY, json={"name": "traced", "image": "nginx:1.27", "replicas": 1, "port": 80})
    path = f"{FANCY}/{created.json()['id']}"
    wait_for(lambda: http.get(path).json()["reconciled"], timeout=60)
    controller.terminate()  # a graceful stop exports its last spans
    assert controller.wait(30) == 0

    # Then the controller's first message span continues the trace of the API's POST
    roots = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER and s.parent is None]
    [post] = [s for s in roots if s.attributes["http.request.method"] == "POST" and s.attributes["url.path"] == FANCY]
    trace_id = post.context.trace_id.to_bytes(16, "big")
    exported = [s for s in collected_spans("threeport-extension-test") if s.trace_id == trace_id]
    consumers = {s.span_id: s for s in exported if s.name == "process ext.acmecorp.com"}
    assert post.context.span_id.to_bytes(8, "big") in {s.parent_span_id for s in consumers.values()}
    # And each reconcile (the first waits for its WorkloadInstance and is requeued) is a message's child
    reconciles = {s.span_id: s for s in exported if s.name == "reconcile acmecorp.com/v1/FancyWorkload"}
    assert len(reconciles) >= 1 and {s.parent_span_id for s in reconciles.values()} <= set(consumers)
    # And its calls to the API are the reconciles' children
    calls = {s.span_id: s for s in exported if s.name.startswith("threeport API ")}
    assert calls and {s.parent_span_id for s in calls.values()} <= set(reconciles)
    # And the API's spans for those calls are their children: one trace across the two processes
    call_ids = {int.from_bytes(span_id, "big") for span_id in calls}
    served = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER and s.parent is not None]
    assert {s.parent.span_id for s in served} & call_ids
