"""Extension API servers: the route prefixes the core API proxies to an extension's own API.

An extension that brings its own API server registers an
:class:`ExtensionApiRoute` per path prefix (``/acmecorp.com/v1/`` →
``http://acme-api:8080``). Routes are rows, so every API replica sees the
same table; each replica caches it and compares :func:`changed_routes`'
fingerprint of the whole table (a few dozen rows at most) to notice any
insert, delete or edit, with no write of its own and no trigger.

A prefix lives under its extension's domain (``/<domain>/…``), so two
extensions never share a path; core paths (``/v0/``, ``/healthz``, …) are
not domains and cannot be taken.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Optional

import peewee

from .base import RecordModel
from .errors import Conflict, InvalidObject, NotFound
from .registry import by_plural, register
from .schema import BoundedInteger
from .transactions import transactional

__all__ = ["ExtensionApiRoute", "changed_routes", "check_domain", "CORE_SEGMENTS", "MAX_TIMEOUT_SECONDS"]

#: First path segments the core API serves itself (its routes win over any proxy route).
CORE_SEGMENTS = frozenset({"v0", "healthz", "readyz", "version", "openapi.json", "docs"})
#: Longest wait for an extension's API server that a route may ask for.
MAX_TIMEOUT_SECONDS = 3600

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)+[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


@register
class ExtensionApiRoute(RecordModel):
    kind = "ExtensionApiRoute"
    plural = "extension-api-routes"
    summary = "A path prefix the API proxies to an extension's own API server."
    client_writable = True
    create_fields = ("extension", "prefix", "upstream", "timeout_seconds")

    extension = peewee.TextField(help_text="The extension's domain, e.g. 'acmecorp.com'.")
    prefix = peewee.TextField(help_text="The path prefix proxied, under the domain, e.g. '/acmecorp.com/v1/'.")
    upstream = peewee.TextField(help_text="The base URL of the extension's API server (http or https, host, port).")
    timeout_seconds = BoundedInteger(
        1,
        MAX_TIMEOUT_SECONDS,
        default=30,
        help_text="Longest wait to connect to the API server and for each part of its answer.",
    )

    class Meta:
        table_name = "extension_api_routes"
        indexes = ((("prefix",), True),)

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        extension, prefix = values["extension"], values["prefix"]
        check_domain(extension)
        _check_prefix(prefix)
        _check_upstream(values["upstream"])
        _must_not_clash(extension, prefix)
        if not prefix.startswith(f"/{extension}/"):
            raise InvalidObject(f"field 'prefix' must start with '/{extension}/', the extension's domain")


@transactional
def changed_routes(fingerprint: Optional[str]) -> Optional[tuple[str, list[ExtensionApiRoute]]]:
    """The table's fingerprint and every route, longest prefix first; None when ``fingerprint`` is still current."""
    current = _fingerprint()
    if current == fingerprint:
        return None
    routes = sorted(ExtensionApiRoute.select(), key=lambda route: (-len(route.prefix), route.prefix))
    return current, routes


def _fingerprint() -> str:
    # Every column of every row, hashed: an insert, a delete or any edit (even by hand) changes it.
    cursor = ExtensionApiRoute._meta.database.execute_sql(
        "SELECT count(*), coalesce(md5(string_agg("
        "concat_ws(' ', id, extension, prefix, upstream, timeout_seconds), ',' ORDER BY id)), '') "
        "FROM extension_api_routes"
    )
    count, digest = cursor.fetchone()
    return f"{count}:{digest}"


def check_domain(domain: str, *, field: str = "extension") -> None:
    """Raise InvalidObject unless ``domain`` is a lower-case DNS domain (what namespaces an extension)."""
    if len(domain) > 253 or not _DOMAIN.fullmatch(domain):
        raise InvalidObject(f"field {field!r} must be a lower-case DNS domain such as 'acmecorp.com', not {domain!r}")


def _check_prefix(prefix: str) -> None:
    segments = prefix.split("/")
    well_formed = (
        len(prefix) <= 1024
        and prefix.startswith("/")
        and prefix.endswith("/")
        and all(_PATH_SEGMENT.fullmatch(segment) and segment not in (".", "..") for segment in segments[1:-1])
    )
    if not well_formed or len(segments) < 3:
        raise InvalidObject(
            f"field 'prefix' must be a path such as '/acmecorp.com/v1/' (ending in '/', no '.' or '..'), not {prefix!r}"
        )


def _check_upstream(upstream: str) -> None:
    try:
        parts = urllib.parse.urlsplit(upstream)
        parts.port  # noqa: B018 (raises ValueError when out of range)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidObject(f"field 'upstream' must be an http:// or https:// URL, not {upstream!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidObject("field 'upstream' cannot have a query, a fragment or credentials")


def _must_not_clash(extension: str, prefix: str) -> None:
    """Raise Conflict when ``prefix`` is a core path, or taken or overlapped by another route."""
    first = prefix.split("/")[1]
    if first in CORE_SEGMENTS or _is_plural(first):
        raise Conflict(f"prefix {prefix!r} overlaps the core API's paths (/{first})")
    from .extension_kinds import served_prefixes  # which imports this module

    for served in served_prefixes():
        if prefix.startswith(served) or served.startswith(prefix):
            raise Conflict(f"prefix {prefix!r} overlaps {served!r}, whose kinds the core API serves")
    for other in ExtensionApiRoute.select(ExtensionApiRoute.extension, ExtensionApiRoute.prefix):
        if other.prefix == prefix:
            raise Conflict(f"prefix {prefix!r} is already routed for extension {other.extension!r}")
        nested = prefix.startswith(other.prefix) or other.prefix.startswith(prefix)
        if nested and other.extension != extension:
            raise Conflict(f"prefix {prefix!r} overlaps {other.prefix!r} of extension {other.extension!r}")


def _is_plural(segment: str) -> bool:
    """Whether ``segment`` is a kind's plural (served at ``/<plural>/versions``)."""
    try:
        by_plural(segment)
    except NotFound:
        return False
    return True
