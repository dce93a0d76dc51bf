"""The cluster part of an EKS build, made and torn down: IAM roles, the EKS cluster, its node group, its runtime.

The roles have deterministic names (:func:`tasks.aws_eks_build.resource_names`)
and are looked up before they are created; the cluster and the node group
are created with a client token and looked up by name, so a repeated create
finds the first. A cluster or node group not ACTIVE yet requeues the object
(:meth:`~tasks.aws_eks_build.Build.wait`). Once the cluster is ACTIVE, the
KubernetesRuntimeInstance is filled in (made and linked first if need be);
tearing down clears it and leaves it, with an event saying why.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Optional

from models import store
from models.aws import AwsEksKubernetesRuntimeInstance
from models.errors import Conflict, InvalidObject, NotFound
from models.events import WARNING, record_event
from models.kubernetes import KubernetesRuntimeInstance

from .aws_adapter import TAG_ID, AwsConflict, AwsNotFound, tags_for
from .aws_eks_build import TAG_PART, Build
from .errors import PermanentError, TemporaryError

__all__ = [
    # Making
    "role",
    "active_cluster",
    "active_node_group",
    "runtime",
    # Tearing down
    "delete_node_group",
    "delete_cluster",
    "delete_roles",
    "release_runtime",
    # Names and helpers
    "CLUSTER_POLICIES",
    "NODE_POLICIES",
    "NODE_GROUP",
    "certificate_pem",
]

#: AWS-managed policies of the two roles, by role.
CLUSTER_POLICIES = ("AmazonEKSClusterPolicy",)
NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")
#: The node group every cluster gets.
NODE_GROUP = "threeport-default"

Model = AwsEksKubernetesRuntimeInstance


def certificate_pem(data: str) -> str:
    """The PEM text of an EKS ``certificateAuthority.data`` (base64 of a PEM, or of DER bytes)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PermanentError("the cluster's certificate authority data is not base64") from exc
    if raw.lstrip().startswith(b"-----BEGIN"):
        return raw.decode("ascii")
    body = base64.b64encode(raw).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


# Making -----------------------------------------------------------------------------------------


def role(build: Build, which: str, service: str, policies: tuple[str, ...]) -> str:
    """The role ``which`` (``cluster_role``/``node_role``) that ``service`` assumes, with ``policies``: its ARN."""
    name = build.names[which]
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }
    try:
        role = build.aws.call("iam", "get_role", RoleName=name)["Role"]
    except AwsNotFound:
        tags = tags_for(build.obj, **{TAG_PART: which.replace("_", "-")})
        try:
            role = build.aws.call(
                "iam",
                "create_role",
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(trust),
                Description=f"threeport EKS cluster {build.names['cluster']}",
                Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
            )["Role"]
        except AwsConflict:
            role = build.aws.call("iam", "get_role", RoleName=name)["Role"]
    owner = {t["Key"]: t["Value"] for t in role.get("Tags", [])}.get(TAG_ID)
    if owner is not None and owner != str(build.obj.id):
        raise PermanentError(f"IAM role {name} belongs to another threeport object ({owner})")
    partition = role["Arn"].split(":")[1]
    for policy in policies:
        build.aws.call(
            "iam", "attach_role_policy", RoleName=name, PolicyArn=f"arn:{partition}:iam::aws:policy/{policy}"
        )
    build.record(f"IAM role {name} ready", **{f"{which}_name": name, f"{which}_arn": role["Arn"]})
    return role["Arn"]


def active_cluster(build: Build, role_arn: str, subnet_ids: list[str], group_id: str) -> dict[str, Any]:
    """The EKS cluster, once ACTIVE (until then the object is requeued to look again)."""
    name = build.names["cluster"]
    cluster = describe_cluster(build, name)
    if cluster is None:
        try:
            cluster = build.aws.call(
                "eks",
                "create_cluster",
                name=name,
                roleArn=role_arn,
                resourcesVpcConfig={
                    "subnetIds": subnet_ids,
                    "securityGroupIds": [group_id],
                    "endpointPublicAccess": True,
                    "endpointPrivateAccess": True,
                },
                clientRequestToken=f"{build.obj.id}-cluster",
                tags=tags_for(build.obj, **{TAG_PART: "cluster"}),
            )["cluster"]
        except AwsConflict:  # ResourceInUseException: made meanwhile
            cluster = describe_cluster(build, name)
            if cluster is None:
                raise
    owner = (cluster.get("tags") or {}).get(TAG_ID)
    if owner is not None and owner != str(build.obj.id):
        raise PermanentError(f"EKS cluster {name} belongs to another threeport object ({owner})")
    state = cluster.get("status", "CREATING")
    build.record(f"EKS cluster {name} is {state}", cluster_name=name, cluster_arn=cluster.get("arn"))
    if state == "FAILED":
        raise PermanentError(f"EKS cluster {name} FAILED; delete this runtime and create it again")
    if state != "ACTIVE":
        raise build.wait(f"waiting for the EKS cluster {name} to become ACTIVE (it is {state})")
    return cluster


def describe_cluster(build: Build, name: str) -> Optional[dict[str, Any]]:
    try:
        return build.aws.call("eks", "describe_cluster", name=name)["cluster"]
    except AwsNotFound:
        return None


def active_node_group(build: Build, role_arn: str, subnet_ids: list[str]) -> dict[str, Any]:
    """The managed node group with the definition's sizes, once ACTIVE."""
    cluster, definition = build.names["cluster"], build.definition
    scaling = {
        "minSize": definition.default_node_group_minimum_size,
        "maxSize": definition.default_node_group_maximum_size,
        "desiredSize": definition.default_node_group_initial_size,
    }
    group = describe_node_group(build, cluster)
    if group is None:
        try:
            group = build.aws.call(
                "eks",
                "create_nodegroup",
                clusterName=cluster,
                nodegroupName=NODE_GROUP,
                scalingConfig=scaling,
                subnets=subnet_ids,
                instanceTypes=[definition.default_node_group_instance_type],
                nodeRole=role_arn,
                clientRequestToken=f"{build.obj.id}-node-group",
                tags=tags_for(build.obj, **{TAG_PART: "node-group"}),
            )["nodegroup"]
        except AwsConflict:
            group = describe_node_group(build, cluster)
            if group is None:
                raise
    state = group.get("status", "CREATING")
    build.record(f"node group {NODE_GROUP} is {state}", node_group_name=NODE_GROUP)
    if state in ("CREATE_FAILED", "DELETE_FAILED", "DEGRADED"):
        issues = "; ".join(f"{i.get('code')}: {i.get('message')}" for i in group.get("health", {}).get("issues", []))
        raise PermanentError(f"node group {NODE_GROUP} is {state}" + (f" ({issues})" if issues else ""))
    if state != "ACTIVE":
        raise build.wait(f"waiting for the node group {NODE_GROUP} to become ACTIVE (it is {state})")
    sizes = group.get("scalingConfig") or {}
    if any(sizes.get(key) != value for key, value in scaling.items()):
        build.aws.call(
            "eks", "update_nodegroup_config", clusterName=cluster, nodegroupName=NODE_GROUP, scalingConfig=scaling
        )
        raise build.wait(f"resizing the node group {NODE_GROUP} to {scaling}")
    return group


def describe_node_group(build: Build, cluster: str) -> Optional[dict[str, Any]]:
    try:
        return build.aws.call("eks", "describe_nodegroup", clusterName=cluster, nodegroupName=NODE_GROUP)["nodegroup"]
    except AwsNotFound:
        return None


def runtime(build: Build, cluster: dict[str, Any]) -> None:
    """Record the cluster in status and fill in (making and linking it if need be) the KubernetesRuntimeInstance."""
    name = cluster["name"]
    ca_data = (cluster.get("certificateAuthority") or {}).get("data") or ""
    store.merge_status(
        Model,
        build.obj.id,
        {
            "cluster": {
                "name": name,
                "arn": cluster.get("arn"),
                "endpoint": cluster.get("endpoint"),
                "version": cluster.get("version"),
                "certificate_authority": ca_data,
                "oidc_issuer": ((cluster.get("identity") or {}).get("oidc") or {}).get("issuer"),
            },
            "auth": {"method": "aws-iam", "cluster_name": name, "region": build.region},
        },
    )
    runtime_id, linked = build.obj.kubernetes_runtime_instance_id, False
    if runtime_id is None:
        runtime_id = _runtime_instance(build).id
        build.record(
            f"KubernetesRuntimeInstance {build.obj.name!r} made", kubernetes_runtime_instance_id=str(runtime_id)
        )
        store.update(Model, build.obj.id, {"kubernetes_runtime_instance_id": runtime_id})
        linked = True
    else:
        build.record(
            f"linked to KubernetesRuntimeInstance {runtime_id}", kubernetes_runtime_instance_id=str(runtime_id)
        )
    fields = {
        "api_endpoint": cluster.get("endpoint"),
        "ca_certificate": certificate_pem(ca_data),
        "location": build.region,
    }
    try:
        store.update(KubernetesRuntimeInstance, runtime_id, fields)
    except (InvalidObject, Conflict) as exc:
        raise PermanentError(f"cannot fill in KubernetesRuntimeInstance {runtime_id}: {exc}") from exc
    if linked:  # linking made a new generation of this object: reconcile it (it finds everything built)
        raise TemporaryError(
            f"linked KubernetesRuntimeInstance {build.obj.name!r}; reconciling the new generation", delay=0
        )


def _runtime_instance(build: Build) -> KubernetesRuntimeInstance:
    """The runtime named after this object: made by an earlier, interrupted attempt, or made now."""
    definition_id = build.definition.kubernetes_runtime_definition_id
    found, _ = store.list_objects(KubernetesRuntimeInstance, limit=1, filters={"name": build.obj.name})
    if found:
        runtime = found[0]
        if runtime.kubernetes_runtime_definition_id != definition_id or runtime.deletion_scheduled:
            raise PermanentError(
                f"a KubernetesRuntimeInstance named {build.obj.name!r} exists already and is not this cluster's: "
                "link the one to fill in with kubernetes_runtime_instance"
            )
        return runtime
    fields = {"name": build.obj.name, "kubernetes_runtime_definition_id": definition_id, "location": build.region}
    return store.create(KubernetesRuntimeInstance, fields).obj


# Tearing down -----------------------------------------------------------------------------------


def delete_node_group(build: Build) -> None:
    """Delete the node group; requeues while it is deleting."""
    cluster = build.names["cluster"]
    group = describe_node_group(build, cluster)
    if group is not None:
        if group.get("status") != "DELETING":
            with build.tolerating():
                build.aws.call("eks", "delete_nodegroup", clusterName=cluster, nodegroupName=NODE_GROUP)
        group = describe_node_group(build, cluster)
    if group is not None:
        raise build.wait(f"deleting the node group {NODE_GROUP} (it is {group.get('status')})")
    build.forget(f"node group {NODE_GROUP} deleted", "node_group_name")


def delete_cluster(build: Build) -> None:
    """Delete the EKS cluster; requeues while it is deleting."""
    name = build.names["cluster"]
    cluster = describe_cluster(build, name)
    if cluster is not None:
        if cluster.get("status") != "DELETING":
            with build.tolerating():
                build.aws.call("eks", "delete_cluster", name=name)
        cluster = describe_cluster(build, name)
    if cluster is not None:
        raise build.wait(f"deleting the EKS cluster {name} (it is {cluster.get('status')})")
    build.forget(f"EKS cluster {name} deleted", "cluster_name", "cluster_arn")


def delete_roles(build: Build) -> None:
    """Delete the cluster's roles, once their policies and instance profiles are off them."""
    iam = build.aws
    for which in ("external_dns_role", "node_role", "cluster_role"):
        name = build.names[which]
        with build.tolerating(f"deleting the IAM role {name}"):
            for policy in iam.pages("iam", "list_attached_role_policies", "AttachedPolicies", RoleName=name):
                with build.tolerating():
                    iam.call("iam", "detach_role_policy", RoleName=name, PolicyArn=policy["PolicyArn"])
            for policy_name in iam.pages("iam", "list_role_policies", "PolicyNames", RoleName=name):
                with build.tolerating():
                    iam.call("iam", "delete_role_policy", RoleName=name, PolicyName=policy_name)
            profiles = iam.pages("iam", "list_instance_profiles_for_role", "InstanceProfiles", RoleName=name)
            for profile in profiles:
                with build.tolerating():
                    iam.call(
                        "iam",
                        "remove_role_from_instance_profile",
                        InstanceProfileName=profile["InstanceProfileName"],
                        RoleName=name,
                    )
            iam.call("iam", "delete_role", RoleName=name)
        build.forget(f"IAM role {name} deleted", f"{which}_name", f"{which}_arn")


def release_runtime(build: Build) -> None:
    """Clear the endpoint and CA of the linked runtime (it reaches nothing now) and say so on it."""
    runtime_id = build.obj.kubernetes_runtime_instance_id
    if runtime_id is None:
        return
    try:
        store.update(KubernetesRuntimeInstance, runtime_id, {"api_endpoint": None, "ca_certificate": None})
    except (NotFound, Conflict):
        return  # gone, or being deleted: nothing to say
    message = (
        f"its EKS cluster {build.names['cluster']} was deleted with {Model.kind} {build.obj.name!r}; "
        "delete this runtime once nothing uses it"
    )
    record_event(KubernetesRuntimeInstance.kind, runtime_id, "ClusterDeleted", message, type=WARNING)
