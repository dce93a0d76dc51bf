"""How many replicas the streams and KV buckets a process creates get (``THREEPORT_NATS_REPLICAS``).

A new stream gets the deployment's count. One that exists with fewer (made
before the setting was raised) is scaled up in place: JetStream moves a
stream, and the durable consumers that inherit its count, onto more peers on
``update_stream``. Until its new peers have caught up the stream answers
nothing: about a second, which :func:`raise_replicas` waits for, or some ten
seconds for a stream with a durable consumer (a queue's), which it does not
wait for: the queue's consumers keep pulling and get messages again once it
has settled (its consumer follows it onto the new peers some seconds later).
When the cluster cannot place the replicas, a warning says so and the stream
keeps working as it is. A stream with more replicas is left alone: a process
started without the setting (a terminal's ``threeport queues``, say) must
not shrink the deployment's streams.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Mapping

import nats.errors
import nats.js.errors

__all__ = ["ENV_VAR", "DEFAULT_REPLICAS", "STREAM_NAME_IN_USE", "replicas_from_env", "raise_replicas"]

logger = logging.getLogger(__name__)

ENV_VAR = "THREEPORT_NATS_REPLICAS"
#: One server holds one replica; a 3-node cluster wants 3.
DEFAULT_REPLICAS = 1
#: JetStream's answer to creating a stream that exists with another configuration.
STREAM_NAME_IN_USE = 10058
#: Seconds a raised stream is given to settle on its new peers before the caller goes on regardless.
SETTLE_WAIT = 3.0


def replicas_from_env(env: Mapping[str, str] = os.environ) -> int:
    """``THREEPORT_NATS_REPLICAS`` as a count, 1 when unset; ValueError unless a whole number of at least 1."""
    raw = env.get(ENV_VAR, "").strip() or str(DEFAULT_REPLICAS)
    try:
        replicas = int(raw)
    except ValueError:
        replicas = 0
    if replicas < 1:
        raise ValueError(f"{ENV_VAR} must be a whole number of at least 1, not {raw!r}")
    return replicas


async def raise_replicas(js, stream: str, replicas: int) -> None:
    """Give the existing ``stream`` ``replicas`` replicas if it has fewer; never lower them."""
    info = await js.stream_info(stream)
    current = info.config.num_replicas or 1
    if current > replicas:
        logger.info("Stream %s keeps its %d replicas (%s asks for %d).", stream, current, ENV_VAR, replicas)
    if current >= replicas:
        return
    logger.info(
        "Raising the replicas of stream %s from %d to %d; it may not answer meanwhile.", stream, current, replicas
    )
    info.config.num_replicas = replicas
    try:
        await js.update_stream(info.config)
    except nats.js.errors.APIError as exc:
        logger.warning(
            "Stream %s still has %d replica(s): raising them to %d (%s) failed: %s",
            stream,
            current,
            replicas,
            ENV_VAR,
            exc.description or exc,
        )
        return
    if await _settled(js, stream, replicas):
        logger.info("Stream %s now has %d replicas (it had %d).", stream, replicas, current)
    else:
        logger.info("Stream %s is still moving onto %d replicas; it answers once they catch up.", stream, replicas)


async def _settled(js, stream: str, replicas: int) -> bool:
    """Wait until ``stream`` has a leader and ``replicas - 1`` current followers (then it answers again).

    Right after the update the stream may still report its old leader alone.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_WAIT
    while loop.time() < deadline:
        try:
            info = await asyncio.wait_for(js.stream_info(stream), max(0.1, deadline - loop.time()))
        except (asyncio.TimeoutError, nats.errors.TimeoutError):
            continue  # no leader to answer yet
        cluster = info.cluster
        if cluster is None:  # not clustered: one server, nothing to catch up
            return True
        followers = cluster.replicas or []
        if cluster.leader and len(followers) == replicas - 1 and all(peer.current for peer in followers):
            return True
        await asyncio.sleep(0.2)
    return False
