"""Secrets storage: key/values a workload reads as a Kubernetes Secret, kept in AWS Secrets Manager.

A :class:`SecretDefinition` holds the values (``data``, encrypted at rest
like every secret field and never returned by the API) and the AWS account
they are kept in (the default account when it names none); its reconciler
writes them to Secrets Manager, on the ``aws`` queue. A
:class:`SecretInstance` delivers a definition to a workload instance: on the
workload's cluster (or its own runtime), the External Secrets Operator copies
the values into a Kubernetes Secret named after the instance, in the
workload's namespace. Reconciled on the ``workloads`` queue, as the workload
instances it serves.
"""

from __future__ import annotations

import json
from typing import Any

import peewee

from .aws import AwsAccount
from .base import ReconciledModel
from .errors import InvalidObject
from .kubernetes import KubernetesRuntimeInstance
from .registry import register
from .schema import JSONDocument
from .secrets import EncryptedField
from .workloads import WorkloadInstance

__all__ = ["SecretDefinition", "SecretInstance", "EncryptedDocument", "SECRET_DATA_SCHEMA"]

#: A secret's values under Kubernetes Secret key names. That each value is a string is checked by
#: :meth:`SecretDefinition.check`, whose message, unlike a JSON Schema error's, does not quote the value.
SECRET_DATA_SCHEMA = {
    "type": "object",
    "minProperties": 1,
    "propertyNames": {"pattern": "^[-._a-zA-Z0-9]+$", "maxLength": 253},
    "additionalProperties": {"description": "A string."},
}


class EncryptedDocument(EncryptedField, JSONDocument):
    """A JSON document stored encrypted (a ``TEXT`` column of Fernet tokens), checked by its schema, never shown."""

    def __init__(self, schema: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(schema, index=False, **kwargs)

    def db_value(self, value):
        if value is None:
            return None
        return super().db_value(json.dumps(value, sort_keys=True, separators=(",", ":")))

    def python_value(self, value):
        text = super().python_value(value)
        return None if text is None else json.loads(text)


@register
class SecretDefinition(ReconciledModel):
    kind = "SecretDefinition"
    plural = "secret-definitions"
    queue = "aws"
    summary = "Secret key/values, kept in AWS Secrets Manager (never shown by the API)."
    depends_on = ("aws_account",)

    aws_account = peewee.ForeignKeyField(
        AwsAccount, backref="+", null=True, help_text="The account the values are kept in; the default when not given."
    )
    data = EncryptedDocument(
        SECRET_DATA_SCHEMA, help_text="The values, by Kubernetes Secret key (secret: encrypted, never shown)."
    )

    class Meta:
        table_name = "secret_definitions"

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        wrong = sorted(key for key, value in (values.get("data") or {}).items() if not isinstance(value, str))
        if wrong:
            raise InvalidObject(f"field 'data': the values of {wrong} must be strings")


@register
class SecretInstance(ReconciledModel):
    kind = "SecretInstance"
    plural = "secret-instances"
    queue = "workloads"
    summary = "A SecretDefinition delivered to a workload instance as a Kubernetes Secret (External Secrets)."
    depends_on = ("secret_definition", "workload_instance")

    secret_definition = peewee.ForeignKeyField(SecretDefinition, backref="+", help_text="The values to deliver.")
    workload_instance = peewee.ForeignKeyField(
        WorkloadInstance, backref="+", help_text="The workload that reads them (the Secret goes in its namespace)."
    )
    kubernetes_runtime_instance = peewee.ForeignKeyField(
        KubernetesRuntimeInstance, backref="+", null=True, help_text="The runtime; the workload's when not given."
    )

    class Meta:
        table_name = "secret_instances"
