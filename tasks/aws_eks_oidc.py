"""The cluster's IAM OIDC provider, made and torn down: what lets its service accounts assume IAM roles (IRSA).

Once the cluster is ACTIVE its OIDC issuer is known, and the account gets an
IAM OIDC provider for it: client id ``sts.amazonaws.com``, the thumbprint of
the issuer's root CA, the object's tags. The roles of :mod:`tasks.aws_irsa`
trust exactly that provider (:func:`tasks.aws_irsa.oidc_provider_arn`). IAM
takes no client token here but allows one provider per URL, so the step
lists the account's providers and reads the one named after the issuer
before it makes one: a worker killed after IAM made it finds it. The
teardown deletes it before the cluster goes.
"""

from __future__ import annotations

import hashlib
import ssl
import urllib.parse
from typing import Any, Optional

from . import aws_irsa
from .aws_adapter import TAG_ID, AwsConflict, AwsNotFound, presented_chain, tag_dict, tag_list, tags_for
from .aws_eks_build import TAG_PART, Build
from .aws_eks_cluster import describe_cluster
from .errors import PermanentError

__all__ = ["oidc_provider", "delete_oidc_provider", "issuer_thumbprint", "EKS_OIDC_THUMBPRINT"]

#: The root CA thumbprint AWS documents for EKS's OIDC issuers (``oidc.eks.<region>.amazonaws.com``).
#: Used when the issuer's own chain cannot be read: an issuer moto or LocalStack made up, or one
#: this network cannot reach.
EKS_OIDC_THUMBPRINT = "9e99a48a9960b14926bb7f3b02e22da2b0ab7280"
#: Seconds the issuer's server has to complete a TLS handshake before the documented thumbprint is used.
THUMBPRINT_TIMEOUT = 5.0
#: The ``threeport:part`` tag of the provider.
PART = "oidc-provider"


def issuer_thumbprint(
    issuer: str, *, timeout: float = THUMBPRINT_TIMEOUT, context: Optional[ssl.SSLContext] = None
) -> str:
    """The SHA-1 thumbprint (hex) IAM wants for ``issuer``: of the last certificate its server presents.

    That is the root-most certificate of the chain (the last one ``openssl
    s_client -showcerts`` prints, as AWS's instructions have it), read by
    :func:`tasks.aws_adapter.presented_chain` from a handshake verified
    against the system's CAs (or ``context``'s). When the issuer cannot be
    reached or verified, :data:`EKS_OIDC_THUMBPRINT` is used.
    """
    url = urllib.parse.urlsplit(issuer)
    try:
        host, port = url.hostname, url.port or 443
    except ValueError:  # a bad port
        return EKS_OIDC_THUMBPRINT
    chain = presented_chain(host, port, timeout=timeout, context=context) if host else None
    return hashlib.sha1(chain[-1]).hexdigest() if chain else EKS_OIDC_THUMBPRINT


# Making -----------------------------------------------------------------------------------------


def oidc_provider(build: Build, cluster: dict[str, Any]) -> str:
    """The account's IAM OIDC provider for the cluster's issuer, found or made, and tagged: its ARN."""
    issuer = oidc_issuer_of(cluster)
    if not issuer:
        raise build.wait(f"waiting for the EKS cluster {build.names['cluster']} to have an OIDC issuer")
    found = _find(build, issuer)
    arn = _adopted(build, *found) if found else _created(build, issuer)
    build.record(f"IAM OIDC provider for {issuer} ready", oidc_provider_arn=arn)
    return arn


def oidc_issuer_of(cluster: dict[str, Any]) -> Optional[str]:
    """The OIDC issuer URL of an EKS cluster as ``describe_cluster`` gives it."""
    return ((cluster.get("identity") or {}).get("oidc") or {}).get("issuer")


def _created(build: Build, issuer: str) -> str:
    params = {
        "Url": issuer,
        "ClientIDList": [aws_irsa.AUDIENCE],
        "ThumbprintList": [issuer_thumbprint(issuer)],
        "Tags": tag_list(tags_for(build.obj, **{TAG_PART: PART})),
    }
    try:
        return build.aws.call("iam", "create_open_id_connect_provider", **params)["OpenIDConnectProviderArn"]
    except AwsConflict:  # made meanwhile: IAM allows one provider per URL
        found = _find(build, issuer)
        if found is None:
            raise
        return _adopted(build, *found)


def _find(build: Build, issuer: str) -> Optional[tuple[str, dict[str, Any]]]:
    """The account's provider for ``issuer``: its ARN and IAM's description of it (URL, client ids, tags)."""
    path = aws_irsa.oidc_provider_path(issuer)
    listed = build.aws.call("iam", "list_open_id_connect_providers").get("OpenIDConnectProviderList") or []
    for arn in [item["Arn"] for item in listed if item["Arn"].endswith(f":oidc-provider/{path}")]:
        try:
            provider = build.aws.call("iam", "get_open_id_connect_provider", OpenIDConnectProviderArn=arn)
        except AwsNotFound:
            continue  # deleted meanwhile
        if aws_irsa.oidc_provider_path(provider.get("Url") or "") == path:
            return arn, provider
    return None


def _adopted(build: Build, arn: str, provider: dict[str, Any]) -> str:
    """A provider found for the issuer, made ours: tagged, and with the client id IRSA's tokens are for."""
    owner = _owner(provider)
    if owner is not None and owner != str(build.obj.id):
        raise PermanentError(f"the IAM OIDC provider {arn} belongs to another threeport object ({owner})")
    if owner is None:  # made outside threeport (eksctl, say): tagged, the teardown finds it as ours
        tags = tag_list(tags_for(build.obj, **{TAG_PART: PART}))
        build.aws.call("iam", "tag_open_id_connect_provider", OpenIDConnectProviderArn=arn, Tags=tags)
    if aws_irsa.AUDIENCE not in (provider.get("ClientIDList") or []):
        build.aws.call(
            "iam", "add_client_id_to_open_id_connect_provider", OpenIDConnectProviderArn=arn, ClientID=aws_irsa.AUDIENCE
        )
    return arn


def _owner(provider: dict[str, Any]) -> Optional[str]:
    return tag_dict(provider.get("Tags") or []).get(TAG_ID)


# Tearing down -----------------------------------------------------------------------------------


def delete_oidc_provider(build: Build) -> None:
    """Delete the provider: the one recorded, and the one for the cluster's issuer (made by an attempt that died)."""
    arns = [build.inventory.get("oidc_provider_arn")]
    cluster = describe_cluster(build, build.names["cluster"])
    issuer = oidc_issuer_of(cluster) if cluster is not None else None
    found = _find(build, issuer) if issuer else None
    if found is not None and _owner(found[1]) in (None, str(build.obj.id)):
        arns.append(found[0])
    for arn in dict.fromkeys(arn for arn in arns if arn):
        with build.tolerating():
            build.aws.call("iam", "delete_open_id_connect_provider", OpenIDConnectProviderArn=arn)
    build.forget("IAM OIDC provider deleted", "oidc_provider_arn")
