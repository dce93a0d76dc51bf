"""Which function reconciles which kind: the registry the reconcile actor looks kinds up in.

A kind registers a :class:`Reconciler` (a ``reconcile`` and a ``delete``
function, each given the loaded object) with :func:`register`. Reconcilers
never take locks or talk to NATS: the actor does that around them. Importing
this module registers every built-in kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from models.base import ReconciledModel

__all__ = ["Reconciler", "register", "reconciler_for", "registered_kinds"]


def _nothing_to_delete(obj: ReconciledModel) -> None:
    """The default delete path: the kind made nothing outside its own rows."""


@dataclass(frozen=True)
class Reconciler:
    """What to call for one kind."""

    #: Make the world match ``obj``'s current generation; raises a :mod:`tasks.errors` error to say how to retry.
    reconcile: Callable[[ReconciledModel], None]
    #: Tear down what ``reconcile`` made; the row is removed after it returns.
    delete: Callable[[ReconciledModel], None] = _nothing_to_delete


_registry: dict[str, Reconciler] = {}


def register(kind: str, reconciler: Reconciler) -> Reconciler:
    """Make ``reconciler`` the one for ``kind``; ValueError if the kind already has another."""
    if _registry.get(kind, reconciler) is not reconciler:
        raise ValueError(f"kind {kind!r} already has a reconciler")
    _registry[kind] = reconciler
    return reconciler


def reconciler_for(kind: str) -> Reconciler | None:
    """The reconciler of ``kind``, or None when it has none."""
    return _registry.get(kind)


def registered_kinds() -> list[str]:
    """Every kind with a reconciler."""
    return list(_registry)


from . import (  # noqa: E402, F401  (registers the built-in kinds)
    aws_accounts,
    aws_eks,
    aws_rds,
    aws_s3,
    aws_secrets,
    definitions,
    gateways,
    kubernetes_runtimes,
    secret_instances,
    workload_instances,
    workloads,
)
