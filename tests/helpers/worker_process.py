"""A Dramatiq worker in its own process (used by tests/test_worker_processes.py).

usage: worker_process.py URL PREFIX QUEUE LOGFILE ACK_WAIT

Its actor ``record(n, hang_marker=None)`` logs "start PID N" and "done PID N".
Given a marker path that does not exist yet, it creates it and hangs, so the
first delivery of that message never finishes and a redelivery does.
"""

import os
import signal
import sys
import threading
import time

import dramatiq
from dramatiq import Worker

from workers.broker import JetStreamBroker


def log(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    url, prefix, queue, logfile, ack_wait = sys.argv[1:6]
    broker = JetStreamBroker(url, prefix=prefix, ack_wait=float(ack_wait))
    dramatiq.set_broker(broker)

    @dramatiq.actor(actor_name="record", queue_name=queue, max_retries=0)
    def record(n, hang_marker=None):
        # The marker exists before "start" is logged, so a worker killed after
        # logging it always leaves the redelivery free to finish.
        hang = bool(hang_marker) and not os.path.exists(hang_marker)
        if hang:
            open(hang_marker, "w").close()
        log(logfile, f"start {os.getpid()} {n}")
        if hang:
            time.sleep(3600)
        log(logfile, f"done {os.getpid()} {n}")

    broker.emit_after("process_boot")
    worker = Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    worker.stop()
    broker.close()


if __name__ == "__main__":
    main()
