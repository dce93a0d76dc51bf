"""What every step of an EKS build or teardown works with: :class:`Build`.

A :class:`Build` is one reconcile of one AwsEksKubernetesRuntimeInstance:
its definition, its AWS door, the deterministic names of what it makes, and
the status ``inventory`` of what was made so far, saved after each step
(:meth:`Build.record`, :meth:`Build.forget`). Finding before making is here
too: an EC2 resource is looked up by the ``threeport:object-id`` and
:data:`TAG_PART` tags before it is created (:meth:`Build.ensure`), so an
interrupted attempt is resumed, not duplicated. The steps themselves are in
:mod:`tasks.aws_eks_network` and :mod:`tasks.aws_eks_cluster`.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator, Optional

from models import store
from models.aws import AwsAccount, AwsEksKubernetesRuntimeDefinition, AwsEksKubernetesRuntimeInstance
from models.kubernetes import KubernetesRuntimeDefinition, KubernetesRuntimeInstance

from .aws_adapter import TAG_ID, Aws, AwsConflict, AwsError, AwsNotFound, tag_filters, tags_for
from .errors import PermanentError, TemporaryError

__all__ = ["Build", "resource_names", "TAG_PART", "IN_USE_CODES", "GONE_CODES"]

#: Tag key saying which part of the build a resource is (``vpc``, ``public-subnet-us-east-1a``, …).
TAG_PART = "threeport:part"
#: Error codes that mean "something still uses it": deleting again later will work.
IN_USE_CODES = frozenset({"DependencyViolation", "InvalidIPAddress.InUse", "DeleteConflict", "ResourceInUseException"})
#: Error codes that mean there is nothing left to undo.
GONE_CODES = frozenset({"Gateway.NotAttached"})

Model = AwsEksKubernetesRuntimeInstance


def resource_names(obj: AwsEksKubernetesRuntimeInstance) -> dict[str, str]:
    """The deterministic names of the cluster, its roles and security group: ``threeport-<name>-<short id>…``.

    ``external_dns_role`` is the role external-dns assumes on the cluster
    (made by :mod:`tasks.gateways` while a domain name is served there; the
    teardown deletes it too, should the cluster go first).
    """
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", obj.name).strip("-")[:30] or "eks"
    base = f"threeport-{slug}-{obj.id.hex[:8]}"
    return {
        "cluster": base,
        "cluster_role": f"{base}-cluster",
        "node_role": f"{base}-node",
        "security_group": f"{base}-cluster",
        "external_dns_role": f"{base}-external-dns",
    }


class Build:
    """One reconcile of one object: its AWS door, its names, and the inventory recorded so far."""

    def __init__(
        self,
        obj: AwsEksKubernetesRuntimeInstance,
        definition: AwsEksKubernetesRuntimeDefinition,
        aws: Aws,
        *,
        poll_delay: float,
    ) -> None:
        self.obj = obj
        self.definition = definition
        self.aws = aws
        #: Seconds between two looks at something AWS is still creating or deleting.
        self.poll_delay = poll_delay
        self.names = resource_names(obj)
        self.inventory: dict[str, Any] = dict((obj.status or {}).get("inventory") or {})

    @classmethod
    def of(cls, obj: AwsEksKubernetesRuntimeInstance, *, poll_delay: float) -> "Build":
        definition = store.get(AwsEksKubernetesRuntimeDefinition, obj.aws_eks_kubernetes_runtime_definition_id)
        account = store.get(AwsAccount, definition.aws_account_id)
        region = (obj.status or {}).get("inventory", {}).get("region") if obj.deletion_scheduled else None
        return cls(obj, definition, Aws.for_account(account, region or obj.region), poll_delay=poll_delay)

    @property
    def region(self) -> str:
        return self.aws.region

    def record(self, message: str, **entries: Any) -> None:
        """Add ``entries`` to the inventory and save it (whatever the generation), with a progress message."""
        if all(key in self.inventory and self.inventory[key] == value for key, value in entries.items()):
            return  # known already (a later reconcile going over built steps): nothing to write
        self.inventory.update(entries)
        store.merge_status(Model, self.obj.id, {"inventory": self.inventory, "message": message})

    def forget(self, message: str, *keys: str) -> None:
        """Drop ``keys`` from the inventory (what was deleted) and save it."""
        if not any(key in self.inventory for key in keys):
            return
        for key in keys:
            self.inventory.pop(key, None)
        store.merge_status(Model, self.obj.id, {"inventory": self.inventory, "message": message})

    def wait(self, message: str) -> TemporaryError:
        return TemporaryError(message, delay=self.poll_delay)

    def ec2(self, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call("ec2", operation, **params)

    @contextlib.contextmanager
    def tolerating(self, waiting_for: Optional[str] = None) -> Iterator[None]:
        """Ignore what is gone already; with ``waiting_for``, requeue while something still uses it."""
        try:
            yield
        except AwsNotFound:
            pass
        except AwsError as exc:
            if exc.code in GONE_CODES:
                return
            if waiting_for and (isinstance(exc, AwsConflict) or exc.code in IN_USE_CODES):
                raise TemporaryError(f"{waiting_for}: {exc.code} (still in use)", delay=self.poll_delay) from exc
            raise

    # Checks before anything is built -------------------------------------------------------

    def check_runtime_definition(self) -> None:
        """The runtime this cluster becomes must be an ``eks`` one (nothing is built otherwise)."""
        if self.obj.kubernetes_runtime_instance_id is not None:
            runtime = store.get(KubernetesRuntimeInstance, self.obj.kubernetes_runtime_instance_id)
            definition_id = runtime.kubernetes_runtime_definition_id
        else:
            definition_id = self.definition.kubernetes_runtime_definition_id
        if definition_id is None:
            raise PermanentError(
                f"AwsEksKubernetesRuntimeDefinition {self.definition.name!r} names no kubernetes_runtime_definition "
                "(give one with infra_provider 'eks')"
            )
        runtime_definition = store.get(KubernetesRuntimeDefinition, definition_id)
        if runtime_definition.infra_provider != "eks":
            raise PermanentError(
                f"KubernetesRuntimeDefinition {runtime_definition.name!r} has infra_provider "
                f"{runtime_definition.infra_provider!r}, not 'eks'"
            )

    def check_region(self) -> None:
        built_in = self.inventory.get("region")
        if built_in and built_in != self.region and self.inventory.get("vpc_id"):
            raise PermanentError(f"the cluster is built in {built_in}; its region cannot change to {self.region}")
        self.record(f"building in {self.region}", region=self.region)

    # Finding before making -------------------------------------------------------------------

    def tag_specifications(self, resource_type: str, part: str, **extra: str) -> list[dict[str, Any]]:
        tags = tags_for(self.obj, Name=f"{self.names['cluster']}-{part}", **{TAG_PART: part}, **extra)
        return [{"ResourceType": resource_type, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]

    def find(self, operation: str, key: str, part: Optional[str] = None, filters: tuple = ()) -> list[dict]:
        """EC2 resources of this object (``part`` of it when given), checked here too: not every API filters."""
        wanted = [*tag_filters(self.obj), *([{"Name": f"tag:{TAG_PART}", "Values": [part]}] if part else [])]
        items = self.ec2(operation, Filters=[*wanted, *filters]).get(key, [])
        return [item for item in items if _ours(item, self.obj, part)]

    def ensure(self, part: str, describe: str, key: str, create: Callable[[], dict], filters: tuple = ()) -> dict:
        """The EC2 resource tagged as ``part`` of this object: found, or made by ``create``."""
        found = self.find(describe, key, part, filters)
        if found:
            return found[0]
        try:
            return create()
        except AwsConflict:  # made meanwhile: use that one
            found = self.find(describe, key, part, filters)
            if not found:
                raise
            return found[0]


def _ours(item: dict[str, Any], obj: AwsEksKubernetesRuntimeInstance, part: Optional[str]) -> bool:
    tags = {t["Key"]: t["Value"] for t in item.get("Tags") or []}
    return tags.get(TAG_ID) == str(obj.id) and (part is None or tags.get(TAG_PART) == part)
