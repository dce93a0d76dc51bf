"""Readiness checks for ``/readyz``: each raises when its dependency does not answer."""

from __future__ import annotations

import json

from models import db, run_in_transaction
from workers.connection import Connection

from .health import Check

__all__ = ["nats_check", "database_check"]


def nats_check(connection: Connection, *, timeout: float = 2.0) -> Check:
    """JetStream answers ``$JS.API.INFO`` on ``connection`` within ``timeout`` seconds."""

    async def ask() -> None:
        nc = await connection.client()
        reply = await nc.request("$JS.API.INFO", b"", timeout=timeout)
        answer = json.loads(reply.data or b"{}")
        if "error" in answer:
            raise RuntimeError(answer["error"].get("description", "JetStream refused"))

    def check() -> None:
        connection.run(ask, doing="JetStream readiness", timeout=timeout + 1)

    return check


def database_check() -> None:
    """The database answers ``SELECT 1``."""
    run_in_transaction(lambda: db.execute_sql("SELECT 1").fetchone(), attempts=1)
