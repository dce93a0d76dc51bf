"""Definitions that are pure data: reconciled as soon as they are valid.

A definition such as an ``AwsRelationalDatabaseDefinition`` says what to
build; nothing is built until an instance asks for it. Its reconcile has
nothing to do beyond what the API checked on write, so it marks the
generation reconciled, which is what the instances that depend on it wait
for. (The ``WorkloadDefinition`` is not among them: its reconciler parses
its YAML.)
"""

from __future__ import annotations

from models.aws import (
    AwsEksKubernetesRuntimeDefinition,
    AwsObjectStorageBucketDefinition,
    AwsRelationalDatabaseDefinition,
)
from models.base import ReconciledModel
from models.gateways import DomainNameDefinition, GatewayDefinition
from models.kubernetes import KubernetesRuntimeDefinition

from .reconcilers import Reconciler, register

__all__ = ["DATA_ONLY_KINDS"]

#: Kinds whose reconcile has nothing to build.
DATA_ONLY_KINDS = (
    KubernetesRuntimeDefinition,
    AwsEksKubernetesRuntimeDefinition,
    AwsRelationalDatabaseDefinition,
    AwsObjectStorageBucketDefinition,
    DomainNameDefinition,
    GatewayDefinition,
)


def _accept(definition: ReconciledModel) -> None:
    """Nothing to build: the API checked the definition when it was written."""


_DATA_ONLY = Reconciler(reconcile=_accept)
for _model in DATA_ONLY_KINDS:
    register(_model.kind, _DATA_ONLY)
