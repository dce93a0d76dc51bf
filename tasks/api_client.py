"""The threeport HTTP API as a Python client: the adapter extension controllers and the CLI talk through.

:class:`ApiClient` wraps one ``httpx.Client`` (bearer token, timeouts, the
control plane's CA) and turns every failure into :class:`ApiError`: the
API's problem+json answer, its raw text when it is not JSON, or the
connection error when the API cannot be reached. The kinds, their paths and
their reference fields are learned from ``/v0/kinds`` (:class:`Catalog`),
never from a copy of the models, so the CLI follows the server it talks to.
"""

from __future__ import annotations

import difflib
import re
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlsplit

import httpx

from workers import tracing

__all__ = [
    # Errors
    "ClientError",
    "ApiError",
    "UnknownKind",
    # The client
    "ApiClient",
    "Catalog",
    "Kind",
    "Field",
    "DEFAULT_TIMEOUT",
    "PAGE_SIZE",
]

#: Seconds to connect, and to wait for an answer.
DEFAULT_TIMEOUT = 30.0
#: Objects asked for per page when listing.
PAGE_SIZE = 200


class ClientError(Exception):
    """Raised when a client command cannot do what it was asked; the message is one line for the user."""


class ApiError(ClientError):
    """Raised when the API answers with an error, or cannot be reached (``status`` is then None)."""

    def __init__(self, status: Optional[int], title: str, detail: str) -> None:
        super().__init__(status, title, detail)
        self.status = status
        self.title = title
        self.detail = detail

    def __str__(self) -> str:
        if self.status is None:
            return self.detail
        return f"{self.status} {self.title}: {self.detail}" if self.detail else f"{self.status} {self.title}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error an answer of 400 or more stands for (problem+json, else its text)."""
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if isinstance(problem, dict) and ("title" in problem or "detail" in problem):
            title = str(problem.get("title") or response.reason_phrase)
            title = title.removeprefix(f"{response.status_code} ")  # Falcon's own titles carry the code
            return cls(response.status_code, title, _shortened(_one_line(str(problem.get("detail") or ""))))
        return cls(response.status_code, response.reason_phrase, _shortened(_one_line(response.text)))


class UnknownKind(ClientError):
    """Raised when a kind name matches none the API serves."""


@dataclass(frozen=True)
class Field:
    """One field of a kind, as ``/v0/kinds`` describes it."""

    #: The API name (references end in ``_id``).
    name: str
    writable: bool
    required: bool
    #: Written but never returned.
    secret: bool
    #: The kind a reference points to, or None.
    references: Optional[str]
    description: str = ""

    @property
    def alias(self) -> Optional[str]:
        """The name a manifest may give the reference by name under (``workload_definition``), or None."""
        if self.references and self.name.endswith("_id"):
            return self.name[: -len("_id")]
        return None


@dataclass(frozen=True)
class Kind:
    """One kind the API serves."""

    kind: str
    plural: str
    #: Where its objects live, e.g. ``/v0/workload-instances``.
    path: str
    summary: str
    #: Reconciled objects have a name, a lifecycle and a status; records are plain rows.
    reconciled: bool
    writable: bool
    fields: dict[str, Field]

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Kind:
        fields = {
            f["name"]: Field(
                name=f["name"],
                writable=bool(f.get("writable")),
                required=bool(f.get("required")),
                secret=bool(f.get("secret")),
                references=f.get("references"),
                description=f.get("description") or "",
            )
            for f in item.get("fields", [])
        }
        return cls(
            kind=item["kind"],
            plural=item["plural"],
            path=item["path"],
            summary=item.get("summary") or "",
            reconciled=bool(item.get("reconciled")),
            writable=bool(item.get("writable")),
            fields=fields,
        )

    @property
    def references(self) -> dict[str, Field]:
        """The reference fields, by API name."""
        return {name: f for name, f in self.fields.items() if f.references}

    @property
    def aliases(self) -> dict[str, Field]:
        """The reference fields, by the name a manifest may give them by name under."""
        return {f.alias: f for f in self.fields.values() if f.alias}


class Catalog:
    """The kinds of one API, found by any spelling a user may type.

    An extension kind is also found by its qualified name
    (``acmecorp.com/v1/FancyWorkload``), its path, and its short name or
    plural; a spelling several kinds share finds none of them. Last, a kind
    is found by its initials (``wd`` for WorkloadDefinition, as kubectl's
    short names) where they spell no kind's name and no other kind's initials.
    """

    def __init__(self, kinds: list[Kind]) -> None:
        self.kinds = kinds
        spellings: dict[str, list[Kind]] = {}
        for kind in kinds:
            short = kind.kind.rsplit("/", 1)[-1]
            for key in {_key(name) for name in (kind.kind, kind.plural, kind.path.lstrip("/"), short)}:
                spellings.setdefault(key, []).append(kind)
        abbreviations: dict[str, list[Kind]] = {}
        for kind in kinds:
            initials = _initials(kind.kind.rsplit("/", 1)[-1])
            if initials and initials not in spellings:
                abbreviations.setdefault(initials, []).append(kind)
        spellings.update(abbreviations)
        self._by_key = {key: found[0] for key, found in spellings.items() if len(found) == 1}
        #: Spellings that name several kinds (the same short name in two extensions).
        self._ambiguous = {key: found for key, found in spellings.items() if len(found) > 1}

    def __iter__(self) -> Iterator[Kind]:
        return iter(self.kinds)

    def get(self, name: str) -> Optional[Kind]:
        """The kind ``name`` spells (``WorkloadInstance``, ``workload-instances``, ...), or None."""
        return self._by_key.get(_key(name))

    def lookup(self, name: str) -> Kind:
        """The kind ``name`` spells; :class:`UnknownKind` naming the close matches (or the candidates) otherwise."""
        kind = self.get(name)
        if kind is not None:
            return kind
        if _key(name) in self._ambiguous:
            candidates = ", ".join(k.kind for k in self._ambiguous[_key(name)])
            raise UnknownKind(f"{name!r} names several kinds ({candidates}): give one of them in full")
        close = difflib.get_close_matches(_key(name), list(self._by_key), n=6, cutoff=0.6)
        suggestions = list(dict.fromkeys(self._by_key[key].kind for key in close))
        if suggestions:
            raise UnknownKind(f"unknown kind {name!r}; did you mean {', '.join(suggestions)}?")
        raise UnknownKind(f"unknown kind {name!r}; the API serves {', '.join(k.kind for k in self.kinds)}")


class ApiClient:
    """One control plane's API: requests with its token, answers as JSON, failures as :class:`ApiError`."""

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        ca_cert: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        verbose: bool = False,
        trace: Optional[Callable[[str], None]] = None,
    ) -> None:
        problem = token_problem(token)
        if problem:
            raise ClientError(f"the API token {problem}; check THREEPORT_API_TOKEN or the client config")
        try:
            url = urlsplit(api_url)
        except ValueError as exc:  # an unclosed IPv6 bracket
            raise ClientError(f"invalid API URL {api_url!r}: {exc}") from None
        if "@" in url.netloc:
            raise ClientError("the API URL must not carry a user or password (the token authenticates)")
        self.api_url = api_url.rstrip("/")
        self.verbose = verbose
        #: Where ``verbose`` writes one line per request (standard error by default).
        self.trace = trace or (lambda line: print(line, file=sys.stderr))
        try:
            self._http = httpx.Client(
                base_url=self.api_url,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=timeout,
                verify=_tls_context(ca_cert),
            )
        except httpx.InvalidURL as exc:
            raise ClientError(f"invalid API URL {api_url!r}: {exc}") from exc
        self._catalog: Optional[Catalog] = None

    def close(self) -> None:
        self._http.close()

    # Requests ----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Optional[dict[str, Any]] = None,
        json: Any = None,
        headers: Optional[dict[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> httpx.Response:
        """Send one request; the answer when it is a success, :class:`ApiError` otherwise.

        ``timeout`` bounds this request (seconds) instead of the client's own.

        While tracing is on, the request is a client span and carries its
        context (``traceparent``), so the API's spans join the caller's trace.
        """
        started = time.monotonic()
        attributes = {"http.request.method": method, "url.path": path}
        with tracing.span(f"threeport API {method}", kind="client", attributes=attributes) as span:
            headers = {**(headers or {}), **tracing.carrier()}
            try:
                request = self._http.build_request(
                    method,
                    path,
                    params=params,
                    json=json,
                    headers=headers,
                    **({"timeout": timeout} if timeout is not None else {}),
                )
            except (httpx.InvalidURL, ValueError) as exc:  # ValueError: a host IDNA cannot encode (xn--a.com)
                raise ClientError(f"invalid API URL {self.api_url}{path}: {_one_line(str(exc))}") from exc
            try:
                response = self._http.send(request)
            except httpx.HTTPError as exc:
                self._trace(request, f"failed ({type(exc).__name__})", started)
                reason = _one_line(str(exc)) or type(exc).__name__
                raise ApiError(None, "Unreachable", f"cannot reach the API at {self.api_url}: {reason}") from exc
            span.set_attribute("http.response.status_code", response.status_code)
        self._trace(request, str(response.status_code), started)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def get_json(self, path: str, *, timeout: Optional[float] = None, **params: Any) -> Any:
        return self._json(self.request("GET", path, params=params or None, timeout=timeout))

    def version(self) -> dict[str, Any]:
        """``/version``: the server's version and the API versions it serves."""
        answer = self.get_json("/version")
        if not (isinstance(answer, dict) and isinstance(answer.get("api_versions"), list)):
            raise self._not_threeport("/version", answer)
        return answer

    # Kinds -------------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        """The kinds the API serves (asked once per client)."""
        if self._catalog is None:
            answer = self.get_json("/v0/kinds")
            try:
                self._catalog = Catalog([Kind.from_json(item) for item in answer["items"]])
            except (KeyError, TypeError, AttributeError):  # another server's JSON, or none of ours
                raise self._not_threeport("/v0/kinds", answer) from None
        return self._catalog

    def _not_threeport(self, path: str, answer: Any) -> ClientError:
        shown = _shortened(_one_line(repr(answer)), 120)
        return ClientError(f"{self.api_url} does not answer as a Threeport API ({path} gave {shown})")

    def kind(self, name: str) -> Kind:
        """The kind ``name`` spells; :class:`UnknownKind` otherwise."""
        return self.catalog.lookup(name)

    # Objects -----------------------------------------------------------------------------
    def list_objects(self, kind: Kind, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every object of ``kind`` matching ``filters`` (equality), page after page.

        Oldest first; newest first with ``order="desc"`` among the filters.
        """
        after: Optional[str] = None
        while True:
            params = {**filters, "limit": PAGE_SIZE}
            if after:
                params["after"] = after
            page = self.get_json(kind.path, **params)
            yield from page.get("items", [])
            after = page.get("next")
            if not after:
                return

    def find(self, kind: Kind, name: str) -> Optional[dict[str, Any]]:
        """The object of ``kind`` named ``name``, or None."""
        return next(iter(self.get_json(kind.path, name=name, limit=1).get("items", [])), None)

    def get(self, kind: Kind, object_id: str, *, timeout: Optional[float] = None) -> Optional[dict[str, Any]]:
        """The object of ``kind`` with ``object_id``, or None once it is gone."""
        try:
            return self.get_json(f"{kind.path}/{object_id}", timeout=timeout)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.request("POST", kind.path, json=body))

    def patch(self, kind: Kind, object_id: str, body: dict[str, Any], *, if_match: Any = None) -> dict[str, Any]:
        """Change some fields; with ``if_match`` (a resource_version) only if the object is still at it."""
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else None
        return self._json(self.request("PATCH", f"{kind.path}/{object_id}", json=body, headers=headers))

    def delete(self, kind: Kind, object_id: str) -> Optional[dict[str, Any]]:
        """Ask for deletion: the object with ``deletion_scheduled`` set (records: None, gone at once)."""
        response = self.request("DELETE", f"{kind.path}/{object_id}")
        return self._json(response) if response.content else None

    # Helpers -----------------------------------------------------------------------------
    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code, "Not JSON", f"{response.request.url} answered {_one_line(response.text)[:200]!r}"
            ) from None

    def _trace(self, request: httpx.Request, outcome: str, started: float) -> None:
        if self.verbose:
            elapsed = (time.monotonic() - started) * 1000
            self.trace(f"{request.method} {request.url} -> {outcome} ({elapsed:.0f} ms)")


def token_problem(token: str) -> Optional[str]:
    """What makes ``token`` unfit for an ``Authorization`` header, or None (the token is never quoted)."""
    if not token:
        return "is empty"
    if not token.isascii() or any(c.isspace() or not c.isprintable() for c in token):
        return "has spaces, control or non-ASCII characters"
    return None


def _tls_context(ca_cert: Optional[str]) -> ssl.SSLContext:
    """The system's CAs, or only ``ca_cert`` (a PEM file) when given."""
    try:
        return ssl.create_default_context(cafile=ca_cert)
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"cannot use the CA certificate {ca_cert}: {exc}") from exc


def _initials(kind: str) -> str:
    """``wd`` for WorkloadDefinition, ``aekrd`` for AwsEksKubernetesRuntimeDefinition; "" for a one-word kind."""
    words = re.findall(r"[A-Z][a-z0-9]*", kind)
    return "".join(word[0] for word in words).lower() if len(words) > 1 else ""


def _key(name: str) -> str:
    """How kind names compare: case, dashes, underscores and spaces ignored."""
    return re.sub(r"[-_\s]", "", name).lower()


def _shortened(text: str, limit: int = 500) -> str:
    """``text``, cut at ``limit`` characters (a detail quoting a huge value must not flood the terminal)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _one_line(text: str) -> str:
    return " ".join(text.split())
