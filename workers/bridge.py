"""One background asyncio loop per process, shared by every NATS user in it.

nats-py is asyncio-only while Dramatiq runs actors, consumers and callers on
plain threads. Each thread hands a coroutine to this loop and waits for its
result with a deadline, so one slow call never blocks another. The loop is
re-created after ``fork()`` (Dramatiq forks its worker processes), because a
loop thread does not survive into the child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any, Coroutine, Optional, TypeVar

T = TypeVar("T")

__all__ = ["EventLoopThread", "get_loop", "run"]


class EventLoopThread:
    """A daemon thread running an asyncio loop forever."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="nats-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop and return a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
        """Run ``coro`` on the loop and wait up to ``timeout`` seconds for its result.

        Raises :class:`TimeoutError` (and cancels the coroutine) when the deadline passes.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("run() called from the loop thread itself; await the coroutine instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:.1f}s") from None

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread


_lock = threading.Lock()
_current: Optional[EventLoopThread] = None


def get_loop() -> EventLoopThread:
    """The process's loop thread, started on first use (and again after a fork)."""
    global _current
    current = _current
    if current is not None and current.pid == os.getpid():
        return current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = EventLoopThread()
        return _current


def run(coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
    """Run ``coro`` on the process's loop thread; see :meth:`EventLoopThread.run`."""
    return get_loop().run(coro, timeout)
