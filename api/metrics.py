"""Prometheus metrics of the API: requests by route, method and status, their latency, and ``/metrics``.

Requests are labelled by the URI template Falcon matched
(``/v0/workload-definitions/{object_id}``), never by the raw path, so label
values stay few (an extension kind's paths are labelled by their template too);
what no route matched is ``other``. Under gunicorn each
worker is a process: with ``PROMETHEUS_MULTIPROC_DIR`` set, the metrics are
written to files there and ``/metrics`` sums every process's.
"""

from __future__ import annotations

import time

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from workers.metrics import metrics_registry

__all__ = ["RequestMetrics", "Metrics"]

#: The ``route`` label of requests that no route matched.
UNMATCHED = "other"

REQUESTS = Counter(
    "threeport_http_requests_total", "HTTP requests by method, route and status.", ("method", "route", "status")
)
REQUEST_DURATION = Histogram(
    "threeport_http_request_duration_seconds", "HTTP request latency by method and route.", ("method", "route")
)


class RequestMetrics:
    """Falcon middleware counting and timing every request; put it first so it sees the final status."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_started = time.monotonic()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        route = req.uri_template or req.context.get("route_template") or UNMATCHED
        REQUESTS.labels(req.method, route, str(resp.status_code)).inc()
        started = req.context.get("metrics_started")
        if started is not None:
            REQUEST_DURATION.labels(req.method, route).observe(time.monotonic() - started)


class Metrics:
    """``GET /metrics``: every metric in Prometheus' text format."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(metrics_registry())
