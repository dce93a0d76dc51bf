"""The reconcile actor: lock, load, decide, call the kind's reconciler, write status, unlock.

One Dramatiq actor named ``reconcile`` serves every kind. Outbox rows route
its messages to the kind's queue (``workloads``, ``aws``, …);
:func:`declare_actors` declares the actor once and every kind's queue, and a
Dramatiq worker looks an actor up by the message's actor name whatever queue
it came from, so one actor consumes them all.

Requeueing without spending the retry budget (a held lock, a
:class:`~tasks.errors.TemporaryError`) is done by enqueueing a fresh message
for the same object with a delay and returning normally: Dramatiq's ``Retry``
exception would count against ``max_retries``. The fresh message carries
``requeues`` (how many times in a row it was put back) for the lock backoff.
Any other exception is written into the object's status and re-raised, so
Dramatiq's Retries middleware retries it with backoff and, at the end,
dead-letters it.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import dramatiq
from dramatiq.message import Message

from models import registry, store
from models.base import ReconciledModel
from models.errors import NotFound
from models.events import NORMAL, WARNING, write_status_and_record
from workers import tracing
from workers.broker import JetStreamBroker
from workers.locks import LeaseKeeper, LockManager
from workers.metrics import LOCK_CONTENTION, reconcile_timer

from .errors import DependencyNotReady, PermanentError, TemporaryError
from .reconcilers import Reconciler, reconciler_for

__all__ = ["ACTOR_NAME", "ReconcileActor", "Report", "declare", "declare_actors"]

logger = logging.getLogger(__name__)

ACTOR_NAME = "reconcile"
#: Seconds an object's lock lives unless renewed (renewed every third of it).
LOCK_TTL = 30.0
#: Backoff of a message whose object is locked: first delay and ceiling, in seconds.
LOCKED_BACKOFF = (0.25, 10.0)
#: Backoff of an object waiting for its dependencies: first delay and ceiling, in seconds.
DEPENDENCY_BACKOFF = (1.0, 30.0)
#: The status message of an object whose reconciliation is interrupted.
INTERRUPTED = "reconciliation is interrupted: set interrupt_reconciliation to false to resume"


class ReconcileActor:
    """The actor's body, bound to a broker and a lock manager (see :func:`declare_actors`)."""

    def __init__(self, broker: JetStreamBroker, locks: LockManager, *, lock_ttl: float = LOCK_TTL) -> None:
        self.broker = broker
        self.locks = locks
        self.lock_ttl = lock_ttl
        self.renewals = LeaseKeeper()  # one thread renews the locks of every reconcile running here

    def __call__(self, kind: str, object_id: str, generation: int, requeues: int = 0) -> None:
        try:
            model = self.model_of(kind)
            object_uuid = uuid.UUID(str(object_id))
        except (NotFound, ValueError):  # no retry can make a bad message good
            logger.error("Dropping a reconcile of unknown %s %r.", kind, object_id)
            return
        lease = self.locks.acquire(f"{kind}.{object_uuid}", self.lock_ttl)
        if lease is None:  # someone is reconciling it: come back shortly
            LOCK_CONTENTION.labels(model.kind).inc()
            self.requeue(model, object_id, generation, requeues=requeues, delay=_locked_backoff(requeues))
            return
        kept = self.renewals.keep(lease)
        try:
            with reconcile_timer(model.kind) as outcome, _reconcile_span(model, object_id, generation) as span:
                try:
                    outcome.result = self._reconcile(model, object_id, requeues)
                finally:
                    span.set_attribute("threeport.result", outcome.result or "error")
        finally:
            self.renewals.drop(kept)
            lease.let_go()
        if kept.lost:
            logger.warning("Lost the lock of %s %s while reconciling it.", kind, object_id)

    def requeue(
        self, model: type[ReconciledModel], object_id: str, generation: int, *, requeues: int, delay: float
    ) -> None:
        """Enqueue the object's reconcile again in ``delay`` seconds (no retry budget spent)."""
        kwargs = {"kind": model.kind, "object_id": str(object_id), "generation": generation, "requeues": requeues + 1}
        options = tracing.carrier()  # the trace goes on with the next attempt (nothing while tracing is off)
        message = Message(queue_name=model.queue, actor_name=model.actor, args=(), kwargs=kwargs, options=options)
        self.broker.enqueue(message, delay=max(1, int(delay * 1000)))

    # Where objects come from and where outcomes go: the database (an extension's controller: the API).
    def model_of(self, kind: str) -> type[ReconciledModel]:
        """The kind's model; NotFound for a kind this actor does not serve."""
        return registry.by_kind(kind)

    def load(self, model: type[ReconciledModel], object_id: str) -> ReconciledModel:
        """The object as it is now; NotFound once it is gone."""
        return store.get(model, object_id)

    def reconciler_of(self, model: type[ReconciledModel]) -> Optional[Reconciler]:
        return reconciler_for(model.kind)

    def dependencies_must_be_ready(self, obj: ReconciledModel) -> None:
        _dependencies_must_be_ready(obj)

    def report(self, model: type[ReconciledModel], obj: ReconciledModel, report: Report) -> None:
        """Write the outcome for the generation reconciled, and its event when it was written."""
        write_status_and_record(
            model,
            obj.id,
            generation=report.generation,
            status=report.status,
            observed=report.observed,
            reason=report.reason,
            message=report.message,
            type=report.event_type,
            **report.flags,
        )

    def confirm_deletion(self, model: type[ReconciledModel], obj: ReconciledModel) -> None:
        store.confirm_deletion(model, obj.id)

    def _reconcile(self, model: type[ReconciledModel], object_id: str, requeues: int) -> str:
        """Reconcile the object; the metrics' result: reconciled, waiting, failed, skipped, deleted or interrupted."""
        try:
            obj = self.load(model, object_id)
        except NotFound:
            return "skipped"  # deleted meanwhile: nothing to do
        generation = obj.generation
        reconciler = self.reconciler_of(model)
        deleting = obj.deletion_scheduled is not None
        if not deleting and obj.observed_generation >= generation:
            return "skipped"  # this generation was reconciled already (a duplicate or late message)

        def status(phase: str, message: str, *, reason: str, warning: bool = False, extra=None, **flags) -> None:
            observed = flags.pop("observed", True)
            # Every outcome says the reconciler has taken the creation (or deletion) in hand.
            flags.setdefault("deletion_acknowledged" if deleting else "creation_acknowledged", True)
            outcome = {**(extra or {}), "phase": phase, "message": message}
            event_type = WARNING if warning else NORMAL
            self.report(model, obj, Report(generation, outcome, reason, message or phase, event_type, observed, flags))

        if not deleting and getattr(obj, "interrupt_reconciliation", False):
            status("Interrupted", INTERRUPTED, reason="Interrupted", warning=True, reconciled=False)
            return "interrupted"
        try:
            if deleting:
                if reconciler is not None:
                    reconciler.delete(obj)
                self.confirm_deletion(model, obj)
                return "deleted"
            self.dependencies_must_be_ready(obj)
            if reconciler is None:
                raise PermanentError(f"no reconciler for kind {model.kind}")
            extra = reconciler.reconcile(obj)
        except NotFound:
            return "skipped"  # deleted while being reconciled
        except TemporaryError as exc:
            status("Waiting", exc.message or type(exc).__name__, reason=type(exc).__name__, observed=False)
            delay = exc.delay if exc.delay is not None else _dependency_backoff(requeues)
            self.requeue(model, object_id, generation, requeues=requeues, delay=delay)
            return "waiting"
        except PermanentError as exc:
            flags = {} if deleting else {"creation_failed": True, "reconciled": False}
            status("Failed", exc.message or type(exc).__name__, reason="Failed", warning=True, **flags)
            return "failed"
        except Exception as exc:
            try:
                message = f"{type(exc).__name__}: {exc} (retrying)"
                status("Failed", message, reason="Retrying", warning=True, observed=False)
            except Exception:
                logger.exception("Could not record the failure of %s %s.", model.kind, obj.id)
            raise
        status(
            "Reconciled",
            "",
            reason="Reconciled",
            extra=extra if isinstance(extra, dict) else None,
            reconciled=True,
            creation_failed=False,
            creation_confirmed=True,
        )
        return "reconciled"


@dataclass(frozen=True)
class Report:
    """A reconcile's outcome for one generation, as :meth:`ReconcileActor.report` writes it."""

    generation: int
    #: Keys written into the object's status (``phase``, ``message``, what the reconciler returned).
    status: dict[str, Any]
    #: The event's reason and message, and its type (Normal or Warning).
    reason: str
    message: str
    event_type: str
    #: Whether the generation is done (False: it will be tried again).
    observed: bool
    #: Lifecycle flags to set (see :data:`models.store.STATUS_FLAGS`).
    flags: dict[str, bool]


def _dependencies_must_be_ready(obj: ReconciledModel) -> None:
    """Raise DependencyNotReady while an object ``obj`` depends on is not reconciled (or is going away)."""
    for name in type(obj).depends_on:
        field = type(obj)._meta.fields[name]
        target_id = obj.__data__.get(name)
        if target_id is None:
            continue  # optional and not given: the reconciler picks a default
        target = field.rel_model
        row = (
            target.select(target.name, target.reconciled, target.deletion_scheduled, target.status)
            .where(target.id == target_id)
            .first()
        )
        if row is None or row.deletion_scheduled is not None:
            raise PermanentError(f"{target.kind} {target_id} is gone or being deleted")
        if not row.reconciled:
            why = (row.status or {}).get("message")
            raise DependencyNotReady(
                f"waiting for {target.kind} {row.name!r} to be reconciled" + (f" ({why})" if why else ""), delay=None
            )


def _reconcile_span(model: type[ReconciledModel], object_id: str, generation: int):
    """The span of one reconcile (a no-op while tracing is off); the actor adds its result."""
    attributes = {"threeport.kind": model.kind, "threeport.object_id": str(object_id)}
    return tracing.span(f"reconcile {model.kind}", attributes={**attributes, "threeport.generation": generation})


def _backoff(requeues: int, first: float, ceiling: float) -> float:
    return min(ceiling, first * 2 ** min(requeues, 16)) * random.uniform(0.8, 1.2)


def _locked_backoff(requeues: int) -> float:
    return _backoff(requeues, *LOCKED_BACKOFF)


def _dependency_backoff(requeues: int) -> float:
    return _backoff(requeues, *DEPENDENCY_BACKOFF)


def declare_actors(
    broker: JetStreamBroker,
    queues: Optional[Iterable[str]] = None,
    *,
    locks: Optional[LockManager] = None,
    lock_ttl: float = LOCK_TTL,
    max_retries: int = 8,
    min_backoff: int = 1000,
    max_backoff: int = 300_000,
) -> dramatiq.Actor:
    """Declare the ``reconcile`` actor on ``broker`` and the queues it serves (every kind's by default).

    ``locks`` defaults to the bucket ``locks`` on the broker's connection.
    ``max_retries`` and the backoffs (milliseconds) apply to unexpected errors only.
    """
    locks = locks or LockManager(connection=broker.connection, replicas=broker.replicas)
    body = ReconcileActor(broker, locks, lock_ttl=lock_ttl)
    kinds = registry.reconciled_kinds()
    queues = list(queues) if queues is not None else sorted({model.queue for model in kinds})
    retries = dict(max_retries=max_retries, min_backoff=min_backoff, max_backoff=max_backoff)
    return declare(broker, body, ACTOR_NAME, queues, **retries)


def declare(
    broker: JetStreamBroker, body: ReconcileActor, actor_name: str, queues: list[str], **retries: int
) -> dramatiq.Actor:
    """Declare ``body`` as the actor ``actor_name`` on ``broker``, with ``queues`` and Dramatiq's retry options.

    A Dramatiq worker finds an actor by the message's actor name whatever
    queue it came from, so one actor serves every queue given.
    """

    def reconcile(kind: str, object_id: str, generation: int, requeues: int = 0) -> None:
        body(kind, object_id, generation, requeues)

    queue_name = queues[0] if queues else "default"
    actor = dramatiq.actor(reconcile, actor_name=actor_name, queue_name=queue_name, broker=broker, **retries)
    for queue in queues:
        broker.declare_queue(queue)
    return actor
