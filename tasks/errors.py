"""How a reconciler says what went wrong, and so how the actor retries.

The reconcile actor maps each class onto the queue: a :class:`TemporaryError`
requeues the object after its ``delay`` without spending Dramatiq's retry
budget, a :class:`PermanentError` shows the failure on the object and stops,
and any other exception goes to Dramatiq's retries and then the dead letters.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["ReconcileError", "TemporaryError", "PermanentError", "DependencyNotReady"]


class ReconcileError(Exception):
    """Base class for the errors a reconciler raises on purpose."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class TemporaryError(ReconcileError):
    """Raised when the object should be reconciled again after ``delay`` seconds (no retry spent).

    ``delay=None`` lets the actor back off: 1 s, doubling per requeue in a row, up to 30 s.
    """

    def __init__(self, message: str = "", delay: Optional[float] = 5.0) -> None:
        super().__init__(message)
        if delay is not None and delay < 0:
            raise ValueError("delay must not be negative")
        self.delay = delay


class PermanentError(ReconcileError):
    """Raised when reconciling this generation cannot succeed: the object shows it, no retry."""


class DependencyNotReady(TemporaryError):
    """Raised when something the object depends on is not ready yet (backs off by default)."""

    def __init__(self, message: str = "", delay: Optional[float] = None) -> None:
        super().__init__(message, delay)
