"""API settings: a small frozen dataclass, read from the environment only at the edge.

Bearer tokens are kept as SHA-256 hashes only. Tokens are random and long, so
a fast hash is enough (there is nothing to brute-force), and a leaked
settings dump or config file does not leak a usable token.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Mapping

from workers.replicas import DEFAULT_REPLICAS, replicas_from_env

__all__ = ["Settings", "hash_token"]

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/threeport"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def hash_token(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Settings:
    """Everything the API process needs to know."""

    #: Where objects are stored (``postgresql://…`` or ``cockroachdb://…``).
    database_url: str = DEFAULT_DATABASE_URL
    #: NATS server(s), comma-separated.
    nats_url: str = DEFAULT_NATS_URL
    #: Namespace of the deployment's streams and subjects.
    nats_prefix: str = "threeport"
    #: Replicas of the streams the API creates (queues, dead letters): 3 on a 3-node JetStream cluster.
    nats_replicas: int = DEFAULT_REPLICAS
    #: SHA-256 hashes of the accepted bearer tokens.
    token_hashes: frozenset[str] = field(default_factory=frozenset)
    #: Largest request body accepted, in bytes (413 above it).
    max_body_bytes: int = 1 << 20
    #: Fernet keys for secret fields, comma-separated, newest first (``THREEPORT_ENCRYPTION_KEY``).
    encryption_keys: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Read ``DATABASE_URL``, ``NATS_URL``, ``THREEPORT_PREFIX``, ``THREEPORT_NATS_REPLICAS``, and the tokens:
        ``THREEPORT_API_TOKEN`` (plain, hashed here) and ``THREEPORT_API_TOKEN_HASHES``
        (comma-separated SHA-256 hex digests), and ``THREEPORT_ENCRYPTION_KEY``."""
        hashes = {h.strip().lower() for h in env.get("THREEPORT_API_TOKEN_HASHES", "").split(",") if h.strip()}
        if env.get("THREEPORT_API_TOKEN"):
            hashes.add(hash_token(env["THREEPORT_API_TOKEN"]))
        return cls(
            database_url=env.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            nats_url=env.get("NATS_URL", DEFAULT_NATS_URL),
            nats_prefix=env.get("THREEPORT_PREFIX", "threeport"),
            nats_replicas=replicas_from_env(env),
            token_hashes=frozenset(hashes),
            encryption_keys=env.get("THREEPORT_ENCRYPTION_KEY", ""),
        )
