"""The reconcile actor at work in the test's process, and waiting for what it does.

``reconciling`` declares the ``reconcile`` actor on the test's broker (every
kind's queue, locks in a bucket of the test's own) and runs a Dramatiq
worker with it; ``wait_for`` polls a condition; ``observed`` and
``reconciled`` read an object once its reconciler has finished with its
current generation.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Optional, TypeVar

import pytest
from dramatiq import Worker

from models import store
from models.base import ReconciledModel
from tasks.actor import declare_actors
from workers.locks import LockManager

__all__ = ["locks", "reconciling", "wait_for", "observed", "reconciled"]

T = TypeVar("T")
M = TypeVar("M", bound=ReconciledModel)


@pytest.fixture
def locks(broker, prefix) -> Iterator[LockManager]:
    """Object locks in a KV bucket of this test's own."""
    manager = LockManager(connection=broker.connection, bucket=f"locks_{prefix}")
    yield manager
    manager.delete_bucket()


@pytest.fixture
def reconciling(database, broker, locks) -> Iterator[Worker]:
    """The reconcile actor declared on the test's broker (short retry backoffs), and a worker running it."""
    declare_actors(broker, locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


def wait_for(predicate: Callable[[], Optional[T]], timeout: float = 30.0) -> T:
    """``predicate()``'s first truthy value; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def observed(model: type[M], obj_id) -> Optional[M]:
    """The object once its current generation is observed (reconciled, failed for good, or waiting no more)."""
    current = store.get(model, obj_id)
    return current if current.observed_generation >= current.generation else None


def reconciled(model: type[M], obj_id) -> Optional[M]:
    """The object once its current generation is reconciled."""
    current = observed(model, obj_id)
    return current if current is not None and current.reconciled else None
