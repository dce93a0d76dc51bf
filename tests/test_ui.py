"""The dashboard (``/ui``) in headless Chromium against a live system.

The API is the real app on a loopback port, on the test's PostgreSQL and
NATS, with the reconcile actor running in a worker that writes heartbeats.
Playwright drives Debian's own ``chromium`` (``/usr/bin/chromium``, which
``.ci/run`` installs), never a browser build of Playwright's: without it this
test fails saying so, unless ``THREEPORT_SKIP_BROWSER=1`` asks to skip it.
"""

from __future__ import annotations

import functools
import os
import socketserver
import threading
from typing import Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from api.app import create_app
from api.settings import Settings, hash_token
from workers.admin import QueueAdmin
from workers.heartbeats import Heartbeats
from workers.outbox_relay import publish_rows

from .test_api_operations import heartbeat_bucket  # noqa: F401 (a fixture)
from .test_cli_queues import bury, send

TOKEN = "dashboard-test-token"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds a change may take to show: the page refreshes every 2 s.
SHOWN_WITHIN = 8_000


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:
        pass


def call(method: str, url: str, body: dict) -> dict:
    """A request to the API with the token; its JSON answer."""
    response = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.is_success, response.text
    return response.json()


@pytest.fixture
def api_url(database, broker) -> Iterator[str]:
    """The API over HTTP on a free loopback port: the test's database, its broker publishing and serving the queues."""
    settings = Settings(token_hashes=frozenset({hash_token(TOKEN)}))
    wsgi = create_app(settings, publish=functools.partial(publish_rows, broker), admin=QueueAdmin(broker))
    server = make_server("127.0.0.1", 0, wsgi, server_class=_ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def page():
    """A page of Debian's headless Chromium; the browser's console errors are checked after the test."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("THREEPORT_SKIP_BROWSER") == "1":
            pytest.skip(f"THREEPORT_SKIP_BROWSER=1 and {CHROMIUM} is missing")
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does), "
            "or set THREEPORT_SKIP_BROWSER=1 to skip the browser test",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(SHOWN_WITHIN)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "console",
                lambda message: (
                    message.type == "error" and errors.append(f"{message.text} ({message.location.get('url')})")
                ),
            )
            yield page
            # The API's refused requests are shown in the banner; anything else (a script error,
            # a Content-Security-Policy violation) is a defect of the page.
            assert errors == [], errors
        finally:
            browser.close()


def test_the_dashboard_shows_an_object_turning_reconciled_and_retries_a_dead_letter(
    page,
    api_url,
    broker,
    request,
    heartbeat_bucket,  # noqa: F811
):
    # Given a message of the parked queue that a worker failed for good
    (dead_id,) = send("parked", 1)
    bury(broker, "parked", count=1)
    # And workers that will write heartbeats (they start later)
    broker.add_middleware(Heartbeats(interval=0.5))

    # When I open the dashboard, which answers without a token, and give it the token
    page.goto(f"{api_url}/ui")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")

    # Then it lists the kinds, and I open the WorkloadDefinitions: none yet
    page.click("tr[data-kind=WorkloadDefinition] a")
    expect(page.get_by_text("No workload-definitions yet.")).to_be_visible()

    # When one is created through the API while no worker runs
    created = call("POST", f"{api_url}/v0/workload-definitions", {"name": "web", "yaml_document": YAML})

    # Then it appears without a reload, not reconciled, its generation not observed
    row = page.locator('tr[data-name="web"]')
    expect(row.locator(".reconciled")).to_have_text("no")
    expect(row).to_contain_text("0 / 1")

    # When the workers start
    request.getfixturevalue("reconciling")

    # Then it turns Reconciled, without a reload
    expect(row.locator(".phase")).to_have_text("Reconciled")
    expect(row.locator(".reconciled")).to_have_text("yes")
    expect(row).to_contain_text("1 / 1")

    # When I open it, then I see its status, lifecycle and its Reconciled event
    row.get_by_role("link", name="web").click()
    expect(page.locator("h1")).to_have_text("web")
    expect(page.locator("tr.event .reason")).to_have_text(["Reconciled"])
    expect(page.locator("main")).to_contain_text(created["id"])
    expect(page.locator("main")).to_contain_text("creation_acknowledged")

    # When an extension registers a kind and an object of it is created
    schema = {"type": "object", "properties": {"image": {"type": "string"}}, "required": ["image"]}
    extension = {"domain": "acmecorp.com", "version": "v1", "kinds": [{"kind": "FancyWorkload", "schema": schema}]}
    call("POST", f"{api_url}/v0/extensions", extension)
    call("POST", f"{api_url}/acmecorp.com/v1/fancy-workloads", {"name": "fancy", "image": "nginx:1.27"})

    # Then its kind is listed with the others, its object under it, and the object opens
    page.click("#nav-kinds")
    page.get_by_role("link", name="acmecorp.com/v1/FancyWorkload").click()
    page.locator('tr[data-name="fancy"]').get_by_role("link", name="fancy").click()
    expect(page.locator("h1")).to_have_text("fancy")
    expect(page.locator("main")).to_contain_text("nginx:1.27")

    # When I open the queues, then the parked queue shows its dead letter with its error
    page.click("#nav-queues")
    letter = page.locator(f'tr.dead-letter[data-id="{dead_id}"]')
    expect(letter).to_contain_text("ValueError: boom")
    expect(page.locator('tr[data-queue="parked"] .dead')).to_have_text("1")

    # When I retry it
    letter.get_by_role("button", name="Retry", exact=True).click()

    # Then it leaves the dead letters (and the worker runs it)
    expect(letter).to_have_count(0)
    expect(page.locator('tr[data-queue="parked"] .dead')).to_have_text("0")
    expect(page.locator("#banner")).to_be_hidden()

    # When I open the workers, then this process's worker is live, on the queues it consumes
    page.click("#nav-workers")
    expect(page.locator(f'tr.worker[data-pid="{os.getpid()}"]')).to_contain_text("parked, workloads")
