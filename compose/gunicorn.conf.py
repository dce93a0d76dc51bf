"""gunicorn settings of the API in the container image: ``gunicorn -c gunicorn.conf.py 'api.app:get_app()'``.

The worker counts come from the variables ``threeport api`` reads
(``THREEPORT_API_WORKERS``, ``THREEPORT_API_THREADS``). Each gunicorn worker
is a process, so Prometheus metrics go through files in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them: the directory is
chosen here, in the master, before any worker imports prometheus_client
(which picks its storage on import), emptied when gunicorn starts, and the
live gauges of a worker that exits are dropped.
"""

import os
import tempfile
from pathlib import Path

bind = "0.0.0.0:8080"
workers = int(os.environ.get("THREEPORT_API_WORKERS", "2"))
threads = int(os.environ.get("THREEPORT_API_THREADS", "8"))
# gthread whose threads wait a moment for a connection's next request (THREEPORT_API_LINGER seconds).
worker_class = "api.gunicorn_worker.LingeringThreadWorker"
# The app is loaded in each worker, after the metrics directory is set.
preload_app = False
# Seconds in-flight requests get after SIGTERM; the orchestrator's grace period must be longer.
graceful_timeout = 20
# Heartbeat files on tmpfs: an overlay filesystem can stall them and get workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# A line per request costs a tenth of the API's CPU at full load: off unless asked for
# (threeport_http_requests_total counts requests either way).
accesslog = "-" if os.environ.get("THREEPORT_API_ACCESS_LOG", "").lower() in ("1", "true", "yes") else None
errorlog = "-"
# No gunicornc control socket: nothing uses it, and $HOME is read-only in the Kubernetes pods.
control_socket_disable = True

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="threeport-api-metrics-")


def on_starting(server):
    """Start from an empty metrics directory: files of an earlier run would be summed in."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    """Drop the live gauges of a worker that exited (its counters stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
