"""The Kubernetes scenarios of tests/kube_scenarios.py on a real cluster: opt-in, skipped (saying why) without one.

``pytest --kubeconfig PATH tests/test_kubernetes_real.py`` (or ``KUBECONFIG``
set) runs them on that kubeconfig's current context, through the same
control loop as the stand-in tests: real PostgreSQL, NATS and worker. Each
test names its instances with a suffix of its own, waits up to five minutes
for the cluster (images are pulled, namespaces end), and removes what it made
even when it fails. The gateway test installs the pinned ingress-nginx and
cert-manager and removes them; it is skipped on a cluster that has either
already (it would replace them) or threeport's record of them. It waits for no
pod of theirs: their objects are looked at, not their work.

Where no cluster is at hand, ``python -m tests.kube_scenarios PATH`` serves a
stand-in that plays the Deployment controller and writes its kubeconfig at
PATH: ``pytest --kubeconfig PATH tests/test_kubernetes_real.py`` then runs this
path against it.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from dramatiq import Worker

from tasks import actor, kubernetes_runtimes, workload_instances
from tasks.actor import declare_actors

from . import kube_scenarios as scenarios
from .kube_scenarios import RealCluster

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture
def real_cluster(real_kubeconfig) -> Iterator[RealCluster]:
    """The cluster of ``--kubeconfig`` as the scenarios' target; what the test made there is removed afterwards.

    Tests ask for it before ``reconciling``, so the worker has stopped when it cleans up.
    """
    target = RealCluster(real_kubeconfig)
    yield target
    target.clean_up()


@pytest.fixture
def reconciling(database, broker, locks, monkeypatch) -> Iterator[Worker]:
    """The reconcile actor on the workloads, kubernetes and gateways queues, looking at workloads every few seconds."""
    monkeypatch.setattr(workload_instances, "HEALTH_POLL", 1.0)
    monkeypatch.setattr(workload_instances, "HEALTH_POLL_CEILING", 5.0)
    monkeypatch.setattr(actor, "DEPENDENCY_BACKOFF", (0.2, 2.0))
    declare_actors(broker, ["workloads", "kubernetes", "gateways"], locks=locks, min_backoff=200, max_backoff=5000)
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()
    kubernetes_runtimes.forget_clusters()


def test_an_instance_deploys_its_documents_labelled_and_records_them(real_cluster, broker, reconciling):
    scenarios.an_instance_deploys_its_documents_labelled(real_cluster, broker)


def test_reconciling_the_same_documents_again_writes_nothing(real_cluster, broker, reconciling):
    scenarios.reapplying_the_same_documents_writes_nothing(real_cluster, broker)


def test_a_document_that_leaves_the_definition_is_pruned(real_cluster, broker, reconciling):
    scenarios.a_document_that_leaves_the_definition_is_pruned(real_cluster, broker)


def test_deleting_an_instance_removes_everything_and_confirms(real_cluster, broker, reconciling):
    scenarios.deleting_an_instance_removes_everything(real_cluster, broker)


def test_two_workloads_share_the_supporting_services_until_the_last_gateway_goes(real_cluster, broker, reconciling):
    # Given a cluster without the supporting services (else skipped: they would be replaced)
    real_cluster.claim_supporting_services()

    # Then the story of the stand-in's test holds there too
    shared = scenarios.two_gateways_share_the_supporting_services(real_cluster, broker)
    scenarios.the_supporting_services_go_with_the_last_gateway(real_cluster, broker, shared)
