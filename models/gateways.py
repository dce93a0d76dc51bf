"""Supporting services: gateways (ingress) and domain names for workloads.

A :class:`GatewayDefinition` says which HTTP and TCP ports a workload is
reached on (with TLS, a path, a redirect to HTTPS); a
:class:`DomainNameDefinition` says under which DNS domain. Their instances
bind them to a workload instance on a runtime. Reconciled on the
``gateways`` queue.
"""

from __future__ import annotations

from typing import Any

import peewee

from .base import ReconciledModel
from .errors import InvalidObject
from .kubernetes import KubernetesRuntimeInstance
from .registry import register
from .schema import JSONDocument
from .workloads import WorkloadInstance

__all__ = ["DomainNameDefinition", "DomainNameInstance", "GatewayDefinition", "GatewayInstance"]

_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
HTTP_PORTS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "port": _PORT,
            "path": {"type": "string", "pattern": "^/", "default": "/"},
            "tls_enabled": {"type": "boolean", "default": False},
            "https_redirect": {"type": "boolean", "default": False},
        },
        "required": ["port"],
        "additionalProperties": False,
    },
}
TCP_PORTS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"port": _PORT, "tls_enabled": {"type": "boolean", "default": False}},
        "required": ["port"],
        "additionalProperties": False,
    },
}


@register
class DomainNameDefinition(ReconciledModel):
    kind = "DomainNameDefinition"
    plural = "domain-name-definitions"
    queue = "gateways"
    summary = "A DNS domain workloads are published under."

    domain = peewee.TextField(help_text="The domain, e.g. 'example.com'.")
    zone = peewee.TextField(
        default="Public", choices=[("Public", "Public"), ("Private", "Private")], help_text="The DNS zone's kind."
    )
    admin_email = peewee.TextField(help_text="Contact for the TLS certificates issued for the domain.")

    class Meta:
        table_name = "domain_name_definitions"

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        domain = values.get("domain", "")
        if "." not in domain.strip(".") or " " in domain:
            raise InvalidObject(f"field 'domain' must be a DNS domain such as 'example.com', not {domain!r}")
        if "@" not in values.get("admin_email", ""):
            raise InvalidObject("field 'admin_email' must be an email address")


@register
class DomainNameInstance(ReconciledModel):
    kind = "DomainNameInstance"
    plural = "domain-name-instances"
    queue = "gateways"
    summary = "A domain in use by one workload instance."
    depends_on = ("domain_name_definition", "workload_instance")

    domain_name_definition = peewee.ForeignKeyField(DomainNameDefinition, backref="+", help_text="The domain.")
    workload_instance = peewee.ForeignKeyField(WorkloadInstance, backref="+", help_text="The workload it serves.")
    kubernetes_runtime_instance = peewee.ForeignKeyField(
        KubernetesRuntimeInstance, backref="+", null=True, help_text="The runtime; the workload's when not given."
    )

    class Meta:
        table_name = "domain_name_instances"


@register
class GatewayDefinition(ReconciledModel):
    kind = "GatewayDefinition"
    plural = "gateway-definitions"
    queue = "gateways"
    summary = "How a workload is reached: HTTP and TCP ports, TLS, paths, a domain."

    http_ports = JSONDocument(HTTP_PORTS_SCHEMA, default=list, help_text="HTTP ports to open.")
    tcp_ports = JSONDocument(TCP_PORTS_SCHEMA, default=list, help_text="TCP ports to open.")
    service_name = peewee.TextField(null=True, help_text="The workload's Kubernetes Service to route to.")
    sub_domain = peewee.TextField(null=True, help_text="The host under the domain, e.g. 'www'.")
    domain_name_definition = peewee.ForeignKeyField(
        DomainNameDefinition, backref="+", null=True, help_text="The domain to publish under."
    )

    class Meta:
        table_name = "gateway_definitions"

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        if not values.get("http_ports") and not values.get("tcp_ports"):
            raise InvalidObject("a gateway needs at least one of 'http_ports' and 'tcp_ports'")


@register
class GatewayInstance(ReconciledModel):
    kind = "GatewayInstance"
    plural = "gateway-instances"
    queue = "gateways"
    summary = "A gateway in front of one workload instance."
    depends_on = ("gateway_definition", "workload_instance")

    gateway_definition = peewee.ForeignKeyField(GatewayDefinition, backref="+", help_text="The gateway.")
    workload_instance = peewee.ForeignKeyField(WorkloadInstance, backref="+", help_text="The workload it serves.")
    kubernetes_runtime_instance = peewee.ForeignKeyField(
        KubernetesRuntimeInstance, backref="+", null=True, help_text="The runtime; the workload's when not given."
    )

    class Meta:
        table_name = "gateway_instances"
