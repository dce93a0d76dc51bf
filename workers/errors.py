"""Errors of the workers layer.

Broker failures use Dramatiq's own family (``BrokerConnectionError``,
``ConnectionFailed``, ``ConnectionClosed``, ``QueueNotFound``) so that
Dramatiq's consumer threads restart and retry exactly as they do with the
RabbitMQ and Redis brokers. Everything else raised here derives from
:class:`WorkersError`.
"""

from dramatiq.errors import BrokerError

__all__ = ["WorkersError", "JetStreamError", "LockError", "LockHeld", "LockLost", "InvalidName"]


class WorkersError(Exception):
    """Raised when something in the workers layer fails; base of the others."""


class JetStreamError(WorkersError, BrokerError):
    """Raised when JetStream refuses a request (bad configuration, limits); the answer is the cause."""


class InvalidName(WorkersError, ValueError):
    """Raised when a queue name, prefix or lock key cannot be mapped onto NATS names."""


class UnknownQueue(WorkersError, LookupError):
    """Raised when an operator names a queue that has no stream under the deployment's prefix."""


class LockError(WorkersError):
    """Raised when a lock operation fails for a reason other than contention."""


class LockHeld(LockError):
    """Raised when a lock is held by someone else (only by the blocking forms)."""


class LockLost(LockError):
    """Raised when a lease is renewed after the key stopped being ours."""
