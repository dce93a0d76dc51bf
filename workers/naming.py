"""How Dramatiq queue names map onto JetStream streams and subjects.

Every queue is its own work-queue stream, so flushing, counting and sizing a
queue never touches another. Inside the stream, ready messages live on one
subject and scheduled (delayed) messages on one subject each; the shared
dead-letter stream keeps one subject per queue. Queue names may contain dots
(extension queues are namespaced by domain), which subjects allow but stream
names do not, so dots become ``~`` there: Dramatiq's queue names never
contain ``~``, which keeps the mapping one-to-one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidName

__all__ = ["Names", "validate_queue_name"]

QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
PREFIX = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]*")
DURABLE = "workers"


def validate_queue_name(queue_name: str) -> str:
    """Return ``queue_name`` if it is a Dramatiq queue name that maps onto NATS names."""
    if not QUEUE_NAME.fullmatch(queue_name) or ".." in queue_name or queue_name.endswith("."):
        raise InvalidName(f"invalid queue name {queue_name!r}: use letters, digits, '_', '-' and single dots")
    return queue_name


@dataclass(frozen=True)
class Names:
    """The NATS names of one deployment, all under ``prefix``."""

    prefix: str = "threeport"

    def __post_init__(self) -> None:
        if not PREFIX.fullmatch(self.prefix):
            raise InvalidName(f"invalid prefix {self.prefix!r}: use letters, digits, '_' and '-'")

    # Queue streams -------------------------------------------------------
    @property
    def stream_prefix(self) -> str:
        return f"{self.prefix}_q_"

    def stream(self, queue_name: str) -> str:
        return self.stream_prefix + validate_queue_name(queue_name).replace(".", "~")

    def queue_of_stream(self, stream: str) -> str | None:
        """The queue a stream belongs to, or None for streams that are not queues of ours."""
        if not stream.startswith(self.stream_prefix):
            return None
        return stream[len(self.stream_prefix) :].replace("~", ".")

    def ready_subject(self, queue_name: str) -> str:
        return f"{self.prefix}.q.{queue_name}"

    def schedule_subjects(self, queue_name: str) -> str:
        return f"{self.prefix}.s.{queue_name}.*"

    def schedule_subject(self, queue_name: str, token: str) -> str:
        return f"{self.prefix}.s.{queue_name}.{token}"

    # Dead letters ----------------------------------------------------------
    @property
    def dead_stream(self) -> str:
        return f"{self.prefix}_dead"

    @property
    def dead_subjects(self) -> str:
        return f"{self.prefix}.dead.>"

    def dead_subject(self, queue_name: str) -> str:
        return f"{self.prefix}.dead.{queue_name}"

    # Presence of consumers ---------------------------------------------------
    @property
    def presence_stream(self) -> str:
        return f"{self.prefix}_consumers"

    @property
    def presence_subjects(self) -> str:
        return f"{self.prefix}.consumers.>"

    def presence_subject(self, queue_name: str, consumer_id: str) -> str:
        return f"{self.prefix}.consumers.{queue_name}.{consumer_id}"

    def presence_filter(self, queue_name: str) -> str:
        return f"{self.prefix}.consumers.{queue_name}.*"
