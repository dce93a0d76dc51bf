"""Kubernetes runtimes: where workloads run.

A :class:`KubernetesRuntimeDefinition` says how a cluster comes to be
(``eks``: the control plane builds it on AWS, as the
``AwsEksKubernetesRuntimeDefinition`` that references it says, in the
account that one names; ``kubernetes``: it exists already); a
:class:`KubernetesRuntimeInstance` is one cluster, with how to reach it.
For an existing cluster the user gives the API endpoint, its CA and
credentials (a client certificate and key, a bearer token or a whole
kubeconfig); for ``eks`` the EKS reconciler fills them in. One instance may
be the default runtime, used by workloads that name none. Reconciled on the
``kubernetes`` queue.
"""

from __future__ import annotations

from typing import Any

import peewee

from .base import ReconciledModel
from .errors import InvalidObject
from .registry import register
from .secrets import EncryptedField

__all__ = ["KubernetesRuntimeDefinition", "KubernetesRuntimeInstance", "INFRA_PROVIDERS"]

#: How a runtime comes to be.
INFRA_PROVIDERS = ("eks", "kubernetes")


@register
class KubernetesRuntimeDefinition(ReconciledModel):
    kind = "KubernetesRuntimeDefinition"
    plural = "kubernetes-runtime-definitions"
    queue = "kubernetes"
    summary = "How a Kubernetes cluster comes to be: built on AWS EKS, or an existing cluster."

    infra_provider = peewee.TextField(
        choices=[(p, p) for p in INFRA_PROVIDERS],
        help_text="'eks' to have the control plane build the cluster on AWS; 'kubernetes' for an existing cluster.",
    )
    high_availability = peewee.BooleanField(
        default=False, help_text="Spread the cluster over three availability zones rather than two."
    )

    class Meta:
        table_name = "kubernetes_runtime_definitions"


@register
class KubernetesRuntimeInstance(ReconciledModel):
    kind = "KubernetesRuntimeInstance"
    plural = "kubernetes-runtime-instances"
    queue = "kubernetes"
    summary = "One Kubernetes cluster and how to reach it."
    depends_on = ("kubernetes_runtime_definition",)
    unique_constraints = {
        "kubernetes_runtime_instances_one_default": "another KubernetesRuntimeInstance is the default runtime already"
    }

    kubernetes_runtime_definition = peewee.ForeignKeyField(
        KubernetesRuntimeDefinition, backref="+", help_text="The definition this cluster follows."
    )
    location = peewee.TextField(null=True, help_text="Where the cluster runs, e.g. an AWS region.")
    default_runtime = peewee.BooleanField(
        default=False, help_text="Workloads that name no runtime are deployed to this one."
    )
    api_endpoint = peewee.TextField(null=True, help_text="The cluster's API server URL.")
    ca_certificate = peewee.TextField(null=True, help_text="PEM CA certificate of the API server.")
    certificate = peewee.TextField(null=True, help_text="PEM client certificate.")
    certificate_key = EncryptedField(null=True, help_text="PEM key of the client certificate (secret).")
    connection_token = EncryptedField(null=True, help_text="A bearer token for the API server (secret).")
    kubeconfig = EncryptedField(null=True, help_text="A whole kubeconfig, instead of the fields above (secret).")

    class Meta:
        table_name = "kubernetes_runtime_instances"

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        if values.get("certificate") and not values.get("certificate_key"):
            raise InvalidObject("field 'certificate_key' must be given with 'certificate'")
        if values.get("kubeconfig") and values.get("api_endpoint"):
            raise InvalidObject("give either 'kubeconfig' or 'api_endpoint', not both")
