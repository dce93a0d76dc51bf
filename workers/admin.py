"""Queue inspection and repair for operators: what the ``threeport queues`` verbs call.

Queues are found from the streams under the broker's prefix, so an operator's
process sees every queue in the deployment, including ones it never declared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

import nats.js.errors

from .broker import JetStreamBroker, QueueStats
from .dead_letters import DeadLetter, purge, read, replay
from .errors import JetStreamError, UnknownQueue
from .naming import validate_queue_name

__all__ = ["QueueAdmin", "RetryReport"]


@dataclass
class RetryReport:
    """What a retry of dead letters did."""

    retried: list[str] = field(default_factory=list)
    #: Ids asked for that are not dead letters of the queue.
    missing: list[str] = field(default_factory=list)
    #: Ids that could not be replayed, with the reason.
    failed: list[tuple[str, str]] = field(default_factory=list)


class QueueAdmin:
    """Operator views and actions over one deployment's queues."""

    def __init__(self, broker: JetStreamBroker) -> None:
        self.broker = broker
        self.names = broker.names

    def queue_names(self) -> list[str]:
        """Every queue that has a stream, sorted."""

        async def list_queues() -> list[str]:
            nc = await self.broker.connection.client()
            found: set[str] = set()
            offset = 0
            while True:
                request = json.dumps({"offset": offset, "subject": f"{self.names.prefix}.q.>"}).encode()
                reply = await nc.request("$JS.API.STREAM.NAMES", request, timeout=self.broker.publish_timeout)
                answer = json.loads(reply.data)
                names = answer.get("streams") or []
                found.update(q for q in (self.names.queue_of_stream(n) for n in names) if q)
                offset += len(names)
                if not names or offset >= answer.get("total", 0):
                    return sorted(found)

        return self.broker.connection.run(list_queues, doing="list queues")

    def existing(self, queue: str) -> str:
        """``queue``, once it is a valid name with a stream under the prefix (``InvalidName``, ``UnknownQueue``)."""
        validate_queue_name(queue)
        known = self.queue_names()
        if queue not in known:
            listed = ", ".join(known) if known else "none"
            raise UnknownQueue(f"no queue named {queue!r} under prefix {self.names.prefix!r} (queues: {listed})")
        return queue

    def stats(self, queues: Optional[Sequence[str]] = None) -> list[QueueStats]:
        return [self.broker.queue_stats(q) for q in (queues or self.queue_names())]

    def dead_letters(self, queue: str, *, limit: Optional[int] = 100) -> list[DeadLetter]:
        async def fetch() -> list[DeadLetter]:
            js = await self.broker.connection.jetstream()
            return await read(js, self.names, queue, limit=limit)

        return self.broker.connection.run(fetch, doing=f"read dead letters of {queue!r}", timeout=60)

    def retry(self, queue: str, ids: Optional[Sequence[str]] = None) -> RetryReport:
        """Replay dead letters of ``queue``: those named by id (message id or ``seq:N``), or all."""
        report = RetryReport()
        chosen, report.missing = _chosen(self.dead_letters(queue, limit=None), ids)

        if not chosen:
            return report

        async def replay_all() -> None:
            js = await self.broker.connection.jetstream()
            await self.broker.ensure_queue(queue)
            for letter in chosen:
                if letter.message is None:
                    report.failed.append((letter.message_id, "not a Dramatiq message (undecodable)"))
                    continue
                await replay(js, self.names, letter, timeout=self.broker.publish_timeout)
                report.retried.append(letter.message_id)

        self.broker.connection.run(replay_all, doing=f"retry dead letters of {queue!r}", timeout=60 + len(chosen) / 100)
        return report

    def purge(self, queue: str) -> int:
        """Drop the queue's ready, delayed and in-flight messages; returns how many."""

        async def purge_queue() -> int:
            nc = await self.broker.connection.client()
            reply = await nc.request(
                f"$JS.API.STREAM.PURGE.{self.names.stream(queue)}", b"{}", timeout=self.broker.publish_timeout
            )
            answer = json.loads(reply.data)
            if "error" in answer:
                if answer["error"].get("err_code") == 10059:  # no such stream: nothing to purge
                    return 0
                raise JetStreamError(f"purge {queue!r}: {answer['error'].get('description', 'refused')}")
            return int(answer.get("purged", 0))

        return self.broker.connection.run(purge_queue, doing=f"purge {queue!r}")

    def purge_dead(self, queue: str) -> int:
        """Delete the queue's dead letters; returns how many."""

        async def purge_letters() -> int:
            return await purge(await self.broker.connection.client(), self.names, queue)

        return self.broker.connection.run(purge_letters, doing=f"purge dead letters of {queue!r}")

    def drop_dead(self, queue: str, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Delete the dead letters of ``queue`` named by id (message id or ``seq:N``); returns (dropped, missing)."""
        chosen, missing = _chosen(self.dead_letters(queue, limit=None), ids)
        dropped: list[str] = []

        async def drop() -> None:
            js = await self.broker.connection.jetstream()
            for letter in chosen:
                try:
                    await js.delete_msg(self.names.dead_stream, letter.seq)
                except nats.js.errors.NotFoundError:  # retried or dropped meanwhile
                    missing.append(letter.message_id)
                else:
                    dropped.append(letter.message_id)

        if chosen:
            self.broker.connection.run(drop, doing=f"drop dead letters of {queue!r}", timeout=60)
        return dropped, missing

    def delete_streams(self) -> list[str]:
        """Delete every stream under the prefix (queues, dead letters, presence): a deployment's teardown."""

        async def delete() -> list[str]:
            js = await self.broker.connection.jetstream()
            ours = self.names.prefix + "_"
            names = [info.config.name for info in await js.streams_info() if info.config.name.startswith(ours)]
            for name in names:
                await js.delete_stream(name)
            return names

        return self.broker.connection.run(delete, doing="delete streams", timeout=30)


def _chosen(letters: list[DeadLetter], ids: Optional[Sequence[str]]) -> tuple[list[DeadLetter], list[str]]:
    """The letters named by ``ids`` (message id or ``seq:N``; all when None), and the ids that name none."""
    if ids is None:
        return letters, []
    wanted = set(ids)
    chosen = [letter for letter in letters if {letter.message_id, f"seq:{letter.seq}"} & wanted]
    found = {letter.message_id for letter in chosen} | {f"seq:{letter.seq}" for letter in chosen}
    return chosen, [i for i in ids if i not in found]
