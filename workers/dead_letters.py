"""Dead letters: messages no worker could process, kept for inspection and replay.

A dead letter is the message's last encoded form (with its retry count and
options) published to ``<prefix>.dead.<queue>`` in the shared dead-letter
stream, with headers that say why and when. Its ``Nats-Msg-Id`` is derived
from the original delivery, so a dead-lettering that is retried after a lost
answer stores the letter once. Replay republishes the message with a fresh
retry budget and deletes the letter only after the PubAck.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import nats.js.errors
from dramatiq.errors import DecodeError
from dramatiq.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from .naming import Names

__all__ = ["DeadLetter", "bury", "read", "replay", "purge", "Reason"]

MAX_ERROR_LENGTH = 4000


class Reason:
    """Why a message was dead-lettered (the ``Threeport-Reason`` header)."""

    FAILED = "failed"  # rejected by Dramatiq: retries exhausted, or failed on purpose
    UNDELIVERABLE = "max-deliveries"  # delivered too often without an ack (crashing workers)
    UNDECODABLE = "undecodable"  # the body is not a Dramatiq message


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as stored."""

    seq: int
    queue: str
    reason: str
    error: str
    dead_at: dt.datetime
    deliveries: int
    data: bytes = field(repr=False)
    message: Optional[Message] = None

    @property
    def message_id(self) -> str:
        """The Dramatiq message id, or ``seq:<n>`` for a body that cannot be decoded."""
        return self.message.message_id if self.message else f"seq:{self.seq}"

    @property
    def actor(self) -> str:
        return self.message.actor_name if self.message else "?"

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "queue": self.queue,
            "message_id": self.message_id,
            "actor": self.actor,
            "args": list(self.message.args) if self.message else None,
            "kwargs": dict(self.message.kwargs) if self.message else None,
            "reason": self.reason,
            "error": self.error,
            "dead_at": self.dead_at.isoformat(),
            "deliveries": self.deliveries,
        }


async def bury(
    js: JetStreamContext,
    names: Names,
    *,
    queue: str,
    data: bytes,
    reason: str,
    error: str,
    delivery: Optional[Msg] = None,
    timeout: float = 5.0,
) -> None:
    """Store a dead letter and wait for its PubAck; then ``term`` the delivery, if any."""
    deliveries = delivery.metadata.num_delivered if delivery is not None else 0
    key = (
        f"dead:{delivery.metadata.stream}:{delivery.metadata.sequence.stream}"
        if delivery is not None
        else f"dead:{uuid.uuid4().hex}"
    )
    headers = {
        "Nats-Msg-Id": key,
        "Threeport-Queue": queue,
        "Threeport-Reason": reason,
        "Threeport-Error": _one_line(error)[:MAX_ERROR_LENGTH],
        "Threeport-Deliveries": str(deliveries),
    }
    await js.publish(names.dead_subject(queue), data, timeout=timeout, headers=headers)
    if delivery is not None:
        await delivery.term()


async def read(
    js: JetStreamContext, names: Names, queue: str, *, limit: Optional[int] = None, start: int = 1
) -> list[DeadLetter]:
    """The dead letters of ``queue``, oldest first, from stream sequence ``start`` on."""
    letters: list[DeadLetter] = []
    subject = names.dead_subject(queue)
    seq = start
    while limit is None or len(letters) < limit:
        try:
            raw = await js.get_msg(names.dead_stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        letters.append(_letter(raw, queue))
        seq = (raw.seq or seq) + 1
    return letters


async def replay(js: JetStreamContext, names: Names, letter: DeadLetter, *, timeout: float = 5.0) -> None:
    """Put ``letter`` back on its queue with a fresh retry budget, then delete it."""
    if letter.message is None:
        raise DecodeError(f"dead letter {letter.seq} is not a Dramatiq message", letter.data, None)
    options = {k: v for k, v in letter.message.options.items() if k not in ("retries", "traceback", "eta")}
    message = dataclasses.replace(letter.message, options=options)
    await js.publish(
        names.ready_subject(letter.queue),
        message.encode(),
        timeout=timeout,
        headers={"Nats-Msg-Id": f"replay:{names.dead_stream}:{letter.seq}"},
    )
    await js.delete_msg(names.dead_stream, letter.seq)


async def purge(nc: NATS, names: Names, queue: str, *, timeout: float = 5.0) -> int:
    """Delete every dead letter of ``queue``; returns how many there were."""
    request = json.dumps({"filter": names.dead_subject(queue)}).encode()
    reply = await nc.request(f"$JS.API.STREAM.PURGE.{names.dead_stream}", request, timeout=timeout)
    answer = json.loads(reply.data)
    if "error" in answer:
        if answer["error"].get("err_code") == 10059:  # stream not found: nothing to purge
            return 0
        raise nats.js.errors.APIError.from_error(answer["error"])
    return int(answer.get("purged", 0))


def _letter(raw, queue: str) -> DeadLetter:
    headers = raw.headers or {}
    data = raw.data or b""
    try:
        message: Optional[Message] = Message.decode(data)
    except DecodeError:
        message = None
    return DeadLetter(
        seq=raw.seq,
        queue=headers.get("Threeport-Queue", queue),
        reason=headers.get("Threeport-Reason", "?"),
        error=headers.get("Threeport-Error", ""),
        dead_at=raw.time or dt.datetime.now(dt.timezone.utc),
        deliveries=int(headers.get("Threeport-Deliveries", "0") or 0),
        data=data,
        message=message,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
