"""How work runs: the Dramatiq broker on NATS JetStream, per-object locks,
dead letters and queue inspection.

Everything here talks to NATS through one asyncio loop per process
(:mod:`workers.bridge`), so Dramatiq's threads never block each other on I/O.
"""
