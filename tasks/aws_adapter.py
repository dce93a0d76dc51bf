"""The AWS adapter: the only door to AWS, and the only module that imports boto3.

Reconcilers act on AWS through an :class:`Aws` bound to one account and
region: ``aws.call("ec2", "create_vpc", CidrBlock=…)`` and
``aws.pages("ec2", "describe_vpcs", "Vpcs", Filters=…)``. Every call:

- uses the account's credentials: its access keys, or a role assumed with
  them (or with the ambient credentials) through STS, refreshed before it
  expires; and the account's endpoint override (moto, LocalStack, a private
  endpoint) for every service;
- retries throttling and transient failures (HTTP 5xx, connection errors)
  with tenacity: bounded attempts, exponential backoff with full jitter
  (botocore's own retries are off, so one policy decides);
- translates every AWS error into this module's errors, keeping the AWS
  error code: :class:`AwsNotFound` and :class:`AwsConflict` (which a
  reconciler tolerates to stay idempotent), :class:`AwsPermanentError`
  (a missing permission, bad credentials, an invalid parameter: retrying
  cannot help, the object shows the code), :class:`AwsUnavailable` (still
  throttled or failing after the retries: the object is requeued), and
  :class:`AwsError` for the rest (Dramatiq's retries).

Every resource a reconciler creates is tagged with :func:`tags_for` (the
threeport object's kind and id), so a retry can find what an earlier,
interrupted attempt made instead of making it again. While tracing is on,
each call (its retries included) is a client span ``<service>/<operation>``
naming the region and, when it fails, AWS's error code.

One call of the AWS work is not to AWS's API: :func:`presented_chain`
reads the certificates an EKS cluster's OIDC issuer presents, for the
thumbprint IAM wants. It lives here too, so that this module stays the only
door to the outside world for AWS.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import boto3
import botocore.config
import botocore.exceptions
import botocore.signers
import tenacity

from models.aws import AwsAccount
from models.base import ReconciledModel
from workers import tracing

from .errors import PermanentError, ReconcileError, TemporaryError

__all__ = [
    "Aws",
    "AwsCredentials",
    "AwsError",
    "AwsNotFound",
    "AwsConflict",
    "AwsPermanentError",
    "AwsUnavailable",
    "RetryPolicy",
    "tags_for",
    "tag_filters",
    "tag_list",
    "tag_dict",
    "TAG_KIND",
    "TAG_ID",
    "presented_chain",
]

#: Tag keys every resource carries: which threeport object made it.
TAG_KIND = "threeport:kind"
TAG_ID = "threeport:object-id"

#: Error codes that mean "slow down": retried.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
#: Error codes (or their prefixes) retrying cannot fix: missing permissions, bad credentials, bad input.
PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnauthorizedAccess",
        "AuthFailure",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "ExpiredToken",
        "ExpiredTokenException",
        "OptInRequired",
        "ValidationError",
        "ValidationException",
        "MalformedPolicyDocument",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "InvalidParameterException",
        "InvalidParameter",
        "MissingParameter",
        "InvalidRequestException",
        "InvalidBucketName",
        "InvalidInput",
        "LimitExceeded",
        "LimitExceededException",
        "ResourceLimitExceeded",
        "VpcLimitExceeded",
        "AddressLimitExceeded",
        "InstanceQuotaExceeded",
        "StorageQuotaExceeded",
        "UnsupportedOperation",
        "UnsupportedAvailabilityZoneException",
    }
)
#: Error codes that mean "it exists already".
CONFLICT_CODES = frozenset(
    {
        "EntityAlreadyExists",
        "BucketAlreadyOwnedByYou",
        "BucketAlreadyExists",
        "ResourceInUseException",
        "ResourceExistsException",
        "AlreadyExists",
        "AlreadyExistsException",
        "DBInstanceAlreadyExists",
        "DBSubnetGroupAlreadyExists",
        "InvalidPermission.Duplicate",
        "InvalidGroup.Duplicate",
        "RouteAlreadyExists",
        "Resource.AlreadyAssociated",
        "DependencyViolation",
        "InvalidDBInstanceState",
        "DeleteConflict",
        "BucketNotEmpty",
    }
)
#: Exact codes that mean "no such thing" (besides any code ending in ``NotFound``/``NotFoundFault``).
NOT_FOUND_CODES = frozenset(
    {
        "NoSuchEntity",
        "NoSuchBucket",
        "NoSuchKey",
        "NoSuchTagSet",
        "NoSuchPublicAccessBlockConfiguration",
        "NoSuchBucketPolicy",
        "ResourceNotFoundException",
        "NotFoundException",
        "NotFound",
        "404",
    }
)


class AwsError(ReconcileError):
    """An AWS call failed: ``code`` is AWS's error code, ``operation`` what was called."""

    def __init__(self, message: str, *, code: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.operation = operation


class AwsNotFound(AwsError):
    """The thing acted on does not exist (a reconciler tolerates it when tearing down)."""


class AwsConflict(AwsError):
    """It exists already, or is in a state that does not allow the call yet."""


class AwsPermanentError(AwsError, PermanentError):
    """Retrying cannot help: a missing permission, bad credentials, an invalid parameter."""


class AwsUnavailable(AwsError, TemporaryError):
    """Still throttled or failing after the retries: the object is requeued."""

    def __init__(self, message: str, *, code: str = "", operation: str = "", delay: float = 30.0) -> None:
        AwsError.__init__(self, message, code=code, operation=operation)
        self.delay = delay


@dataclass(frozen=True)
class RetryPolicy:
    """How throttled and transient failures are retried: attempts, and the backoff's first step and cap (s)."""

    attempts: int = 6
    initial: float = 0.2
    ceiling: float = 10.0


@dataclass(frozen=True)
class AwsCredentials:
    """What is needed to act in an account: a region, and keys and/or a role; the endpoint override."""

    region: str
    access_key_id: Optional[str] = None
    secret_access_key: Optional[str] = None
    role_arn: Optional[str] = None
    external_id: Optional[str] = None
    endpoint_url: Optional[str] = None

    @classmethod
    def of(cls, account: AwsAccount, region: Optional[str] = None) -> "AwsCredentials":
        return cls(
            region=region or account.default_region,
            access_key_id=account.access_key_id,
            secret_access_key=account.secret_access_key,
            role_arn=account.role_arn,
            external_id=account.external_id,
            endpoint_url=account.endpoint_url,
        )

    def __repr__(self) -> str:  # never show the secret
        return f"AwsCredentials(region={self.region!r}, role_arn={self.role_arn!r}, endpoint_url={self.endpoint_url!r})"


def tags_for(obj: ReconciledModel, **extra: str) -> dict[str, str]:
    """The tags of a resource made for ``obj`` (plus ``Name`` and others given)."""
    return {TAG_KIND: obj.kind, TAG_ID: str(obj.id), **extra}


def tag_filters(obj: ReconciledModel) -> list[dict[str, Any]]:
    """EC2-style ``Filters`` matching the resources made for ``obj``."""
    return [{"Name": f"tag:{TAG_ID}", "Values": [str(obj.id)]}]


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """Tags in AWS's list form, ``[{"Key": …, "Value": …}]`` (IAM ``Tags``, S3 ``TagSet``, EC2 ``Tags``)."""
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def tag_dict(tags: list[dict[str, str]]) -> dict[str, str]:
    """Tags in AWS's list form as a dict (``Key``/``Value`` or ``key``/``value``)."""
    return {tag.get("Key", tag.get("key")): tag.get("Value", tag.get("value")) for tag in tags or []}


_BOTO_CONFIG = botocore.config.Config(
    # One attempt: tenacity retries, with one policy for all ("max_attempts" would be botocore's retries *after* it).
    retries={"total_max_attempts": 1, "mode": "standard"},
    connect_timeout=10,
    read_timeout=60,
)
#: How long before an assumed role's credentials expire they are renewed.
_REFRESH_MARGIN = dt.timedelta(minutes=5)


class Aws:
    """One account in one region: calls with retries and translated errors."""

    def __init__(self, credentials: AwsCredentials, *, retry: RetryPolicy = RetryPolicy()) -> None:
        self.credentials = credentials
        self.retry = retry
        self._lock = threading.Lock()
        self._session: Optional[boto3.session.Session] = None
        self._expires: Optional[dt.datetime] = None
        self._clients: dict[str, Any] = {}

    @classmethod
    def for_account(cls, account: AwsAccount, region: Optional[str] = None, **options: Any) -> "Aws":
        return cls(AwsCredentials.of(account, region), **options)

    @property
    def region(self) -> str:
        return self.credentials.region

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """``operation`` (boto3's snake_case name) of ``service`` with ``params``; its answer without metadata."""
        what = f"{service}:{operation}"
        answer = self._retrying(what, lambda: getattr(self._client(service), operation)(**params))
        answer.pop("ResponseMetadata", None)
        return answer

    def pages(self, service: str, operation: str, key: str, **params: Any) -> list[Any]:
        """Every item under ``key`` of every page of a paginated ``operation`` (a failed page retries the listing)."""
        what = f"{service}:{operation}"

        def listing() -> list[Any]:
            paginator = self._client(service).get_paginator(operation)
            return [item for page in paginator.paginate(**params) for item in page.get(key, [])]

        return self._retrying(what, listing)

    def caller_identity(self) -> dict[str, Any]:
        """STS GetCallerIdentity: ``Account``, ``Arn``, ``UserId`` of whoever the credentials are."""
        return self.call("sts", "get_caller_identity")

    def eks_token(self, cluster_name: str, *, expires_in: int = 60) -> str:
        """A bearer token for an EKS cluster's API server, as ``aws eks get-token`` makes it.

        A presigned STS GetCallerIdentity URL that names the cluster in the
        signed ``x-k8s-aws-id`` header, base64url-encoded after
        ``k8s-aws-v1.``; EKS accepts it for 15 minutes. Made locally: no call to AWS.
        """
        sts = self._client("sts")
        with self._lock:
            session = self._session
        assert session is not None  # _client made it
        signer = botocore.signers.RequestSigner(
            sts.meta.service_model.service_id,
            self.region,
            "sts",
            "v4",
            session.get_credentials(),
            session.events,
        )
        request = {
            "method": "GET",
            "url": f"{sts.meta.endpoint_url}/?Action=GetCallerIdentity&Version=2011-06-15",
            "body": {},
            "headers": {"x-k8s-aws-id": cluster_name},
            "context": {},
        }
        url = signer.generate_presigned_url(request, region_name=self.region, expires_in=expires_in, operation_name="")
        return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")

    # Sessions and clients ------------------------------------------------------------

    def _client(self, service: str) -> Any:
        with self._lock:
            if self._expires is not None and dt.datetime.now(dt.timezone.utc) >= self._expires - _REFRESH_MARGIN:
                self._session, self._clients = None, {}
            if service not in self._clients:
                session = self._session or self._new_session()
                self._clients[service] = session.client(
                    service, endpoint_url=self.credentials.endpoint_url, config=_BOTO_CONFIG
                )
            return self._clients[service]

    def _new_session(self) -> boto3.session.Session:
        """A session with the account's keys, or with the role they (or the ambient credentials) assume."""
        creds = self.credentials
        base = boto3.session.Session(
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            region_name=creds.region,
        )
        if not creds.role_arn:
            self._session, self._expires = base, None
            return base
        sts = base.client("sts", endpoint_url=creds.endpoint_url, config=_BOTO_CONFIG)
        params = {"RoleArn": creds.role_arn, "RoleSessionName": "threeport"}
        if creds.external_id:
            params["ExternalId"] = creds.external_id
        assumed = self._retrying("sts:assume_role", lambda: sts.assume_role(**params))["Credentials"]
        self._session = boto3.session.Session(
            aws_access_key_id=assumed["AccessKeyId"],
            aws_secret_access_key=assumed["SecretAccessKey"],
            aws_session_token=assumed["SessionToken"],
            region_name=creds.region,
        )
        expiration = assumed.get("Expiration")
        self._expires = expiration if isinstance(expiration, dt.datetime) else None
        return self._session

    # Retries and errors --------------------------------------------------------------

    def _retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_transient),
            stop=tenacity.stop_after_attempt(self.retry.attempts),
            wait=tenacity.wait_random_exponential(multiplier=self.retry.initial, max=self.retry.ceiling),
            reraise=True,
        )
        with _call_span(what, self.region) as span:
            try:
                return retrying(fn)
            except Exception as exc:
                translated = translate(exc, what)
                if translated is None:
                    raise
                span.set_attribute("aws.error.code", translated.code or type(translated).__name__)
                raise translated from exc


def _call_span(what: str, region: str):
    """The client span of one call, ``what`` being ``service:operation`` (a no-op while tracing is off)."""
    service, _, operation = what.partition(":")
    attributes = {"rpc.system": "aws-api", "rpc.service": service, "rpc.method": operation, "cloud.region": region}
    return tracing.span(f"{service}/{operation}", kind="client", attributes=attributes)


def _code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _status(exc: BaseException) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


_CONNECTION_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
)


def _is_transient(exc: BaseException) -> bool:
    """Whether trying again shortly may succeed: throttling, a 5xx, a dropped connection."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    return _code(exc) in THROTTLING_CODES or _status(exc) >= 500


def translate(exc: BaseException, what: str) -> Optional[AwsError]:
    """This module's error for a botocore error (None for anything else)."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AwsPermanentError(f"{what}: no AWS credentials (give the account keys or a role)", operation=what)
    if isinstance(exc, _CONNECTION_ERRORS):
        return AwsUnavailable(f"{what}: cannot reach AWS: {exc}", operation=what)
    if not isinstance(exc, botocore.exceptions.ClientError):
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return AwsError(f"{what}: {exc}", operation=what)
        return None
    code = _code(exc)
    message = exc.response.get("Error", {}).get("Message") or str(exc)
    text = f"{what}: {code}: {message}"
    if _is_transient(exc):
        return AwsUnavailable(f"{text} (still failing after retries)", code=code, operation=what)
    if code in NOT_FOUND_CODES or code.endswith(("NotFound", "NotFoundFault", ".NotFound")):
        return AwsNotFound(text, code=code, operation=what)
    if code in CONFLICT_CODES or code.endswith(("AlreadyExists", "AlreadyExistsFault", ".Duplicate")):
        return AwsConflict(text, code=code, operation=what)
    if code in PERMANENT_CODES or code.startswith(("InvalidParameter", "Invalid", "AccessDenied")):
        return AwsPermanentError(text, code=code, operation=what)
    return AwsError(text, code=code, operation=what)


def presented_chain(
    host: str, port: int = 443, *, timeout: float, context: Optional[ssl.SSLContext] = None
) -> Optional[list[bytes]]:
    """The certificates ``host`` presents in a verified TLS handshake (DER, its own first); None when it fails.

    Verified against the system's CAs, or ``context``'s. None when the host
    cannot be reached in ``timeout`` seconds or its chain does not verify.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with (context or ssl.create_default_context()).wrap_socket(raw, server_hostname=host) as tls:
                if hasattr(tls, "get_unverified_chain"):  # Python 3.13 and later
                    return list(tls.get_unverified_chain())
                # Python 3.11 and 3.12 have it on the socket's SSL object only, as certificates that give PEM
                chain = tls._sslobj.get_unverified_chain() or []
                return [ssl.PEM_cert_to_DER_cert(certificate.public_bytes()) for certificate in chain]
    except OSError:  # unreachable, unverified or timed out (ssl errors are OSErrors)
        return None
