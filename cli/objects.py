"""``threeport apply|get|describe|delete|wait|events|version``: a control plane's objects from a terminal.

Every verb talks to the current control plane of the client config
(:mod:`cli.config`) through :class:`~cli.client.ApiClient`, opened only when
the verb first needs it, and learns kinds from ``/v0/kinds``. ``apply`` is
idempotent by (kind, name): it creates what is missing, patches what differs
(guarded by ``If-Match``) and leaves the rest, so applying a file twice
writes nothing. Waiting polls the object with a live spinner on stderr.
Failures are one ``error:`` line on stderr and exit code 1; ``--verbose``
shows every request.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
import uuid
from enum import Enum
from importlib import metadata
from typing import Any, Iterable, Optional

import typer
import yaml
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .client import DEFAULT_TIMEOUT as REQUEST_TIMEOUT
from .client import ApiClient, ApiError, ClientError, Kind, reported_errors
from .config import config_path, current_control_plane, load
from .manifests import Manifest, ManifestError, plan, read_documents

__all__ = ["apply", "get", "describe", "delete", "wait", "events", "version", "VERBOSE"]

#: Where the root ``--verbose`` option leaves its value (in the context's shared ``meta``).
VERBOSE = "threeport.verbose"
#: Seconds between two looks at an object being waited for.
POLL_INTERVAL = 0.5
DEFAULT_TIMEOUT = 300.0
#: Characters of a status message or event message shown in a table.
MESSAGE_WIDTH = 60
#: Record fields left out of ``get`` tables (shown by ``-o json``).
HIDDEN_RECORD_FIELDS = {"id", "created_at"}

_VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="Show each API request on stderr.")

_FILES_HELP = "A manifest file (YAML or JSON; '-' reads stdin). Repeat for several."


def _seconds(value: float) -> float:
    """A --timeout: a finite number of seconds, not negative (NaN compares false with every bound)."""
    if not 0 <= value < float("inf"):
        raise typer.BadParameter(f"must be a number of seconds from 0 up, not {value}")
    return value


class Output(str, Enum):
    """How ``get`` and ``events`` print."""

    table = "table"
    json = "json"
    yaml = "yaml"


class Condition(str, Enum):
    """What ``wait`` waits for."""

    reconciled = "reconciled"
    deleted = "deleted"


class Session:
    """The control plane a command talks to, and a client to it opened on first use."""

    def __init__(self, *, verbose: bool) -> None:
        self.verbose = verbose
        self._client: Optional[ApiClient] = None

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            plane = current_control_plane(load(config_path()))
            self._client = ApiClient(plane.api_url, plane.token, ca_cert=plane.ca_cert, verbose=self.verbose)
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _session(ctx: typer.Context, verbose: bool) -> Session:
    session = Session(verbose=verbose or bool(ctx.meta.get(VERBOSE)))
    ctx.call_on_close(session.close)
    return session


# Verbs ---------------------------------------------------------------------------------
def apply(
    ctx: typer.Context,
    files: list[str] = typer.Option(..., "--filename", "-f", help=_FILES_HELP),
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Create or update the objects of manifest files: one line per object, created, configured or unchanged."""
    session = _session(ctx, verbose)
    with reported_errors():
        client = session.client
        manifests = plan(read_documents(files), client.catalog)
        ids = _ids_outside(client, manifests)
        for done, manifest in enumerate(manifests):
            try:
                outcome = _apply_one(client, manifest, ids)
            except ApiError as exc:
                raise ClientError(f"{manifest.source}: {exc}{_not_applied(manifests[done + 1 :])}") from exc
            typer.echo(f"{manifest.label} {outcome}")


def _not_applied(rest: list[Manifest]) -> str:
    """What an apply that stopped leaves out, for its error line."""
    if not rest:
        return ""
    return f" (not applied: {rest[0].label}" + (f" and {len(rest) - 1} more)" if len(rest) > 1 else ")")


def get(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="The kind, e.g. WorkloadInstance or workload-instances."),
    name: Optional[str] = typer.Argument(None, help="Only the object with this name; an error if there is none."),
    fields: list[str] = typer.Option([], "--field", help="Only objects whose FIELD=VALUE (repeatable)."),
    output: Output = typer.Option(Output.table, "--output", "-o", help="A table, or JSON or YAML for scripts."),
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """List the objects of a kind, every page of them."""
    session = _session(ctx, verbose)
    with reported_errors():
        client = session.client
        found = client.kind(kind)
        filters = _filters(client, found, fields)
        if name is not None:
            if "name" not in found.fields:
                raise ClientError(
                    f"{found.kind} objects have no name to get one by; choose with --field FIELD=VALUE "
                    f"({', '.join(sorted(found.fields))})"
                )
            if filters.get("name", name) != name:
                raise ClientError(f"the name is given twice: {name!r} and --field name={filters['name']}")
            filters["name"] = name
        items = list(client.list_objects(found, **filters))
        if name is not None and not items:  # as describe, and kubectl: naming what is not there is an error
            raise ClientError(f"no {found.kind} named {name!r}" + (f" where {', '.join(fields)}" if fields else ""))
        if output is not Output.table:
            _print_data(items, output)
        elif not items:
            typer.echo(f"No {found.kind} objects.")
        elif found.kind == "Event":
            _print_table(_events_table(client, items, with_object=True))
        else:
            _print_table(_objects_table(found, items) if found.reconciled else _records_table(found, items))


def describe(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="The kind."),
    name: str = typer.Argument(..., help="The object's name (or id)."),
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Show one object: spec (references by name), status, lifecycle, events and attached objects."""
    session = _session(ctx, verbose)
    with reported_errors():
        client = session.client
        found = client.kind(kind)
        obj = _find(client, found, name)
        names = _Names(client)
        _print_object(found, obj, names)
        if found.reconciled:
            typer.echo("Events:")
            items = list(client.list_objects(client.kind("Event"), object_id=obj["id"]))
            _print_section(_events_table(client, items, with_object=False) if items else None)
            typer.echo("Attached objects:")
            _print_section(_attachments_table(client, obj, names))


def delete(
    ctx: typer.Context,
    kind: Optional[str] = typer.Argument(None, help="The kind (or use -f)."),
    name: Optional[str] = typer.Argument(None, help="The object's name."),
    files: list[str] = typer.Option([], "--filename", "-f", help=_FILES_HELP),
    wait_: bool = typer.Option(False, "--wait", help="Wait until each object is gone before the next."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", callback=_seconds, help="Seconds --wait waits in all."),
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Delete objects: those of manifest files (referencing ones first), or one by kind and name."""
    if bool(files) == bool(kind):
        raise typer.BadParameter("give either -f FILE or KIND NAME")
    if kind and not name:
        raise typer.BadParameter("give the NAME of the object to delete")
    if not wait_ and getattr(ctx.get_parameter_source("timeout"), "name", None) == "COMMANDLINE":
        raise typer.BadParameter("--timeout bounds --wait: give --wait too, or leave --timeout out")
    session = _session(ctx, verbose)
    deadline = time.monotonic() + timeout
    with reported_errors():
        client = session.client
        if kind:
            found = client.kind(kind)
            _delete_one(client, found, _find(client, found, name), wait=wait_, deadline=deadline)
            return
        for manifest in reversed(plan(read_documents(files), client.catalog)):
            obj = client.find(manifest.kind, manifest.name)
            if obj is None:
                typer.echo(f"{manifest.label} not found")
                continue
            try:
                _delete_one(client, manifest.kind, obj, wait=wait_, deadline=deadline)
            except ApiError as exc:
                hint = " (--wait deletes each object once those referencing it are gone)" if not wait_ else ""
                raise ApiError(exc.status, exc.title, f"{manifest.label}: {exc.detail}{hint}") from None


def wait(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="The kind."),
    name: str = typer.Argument(..., help="The object's name."),
    condition: Condition = typer.Option(..., "--for", help="Wait until the object is reconciled, or deleted."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", callback=_seconds, help="Seconds to wait at most."),
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Wait until an object is reconciled (its latest generation) or deleted; exit 1 on failure or timeout."""
    session = _session(ctx, verbose)
    with reported_errors():
        client = session.client
        found = client.kind(kind)
        if not found.reconciled:
            raise ClientError(f"{found.kind} objects are not reconciled: there is nothing to wait for")
        obj = client.find(found, name)
        if obj is None and condition is Condition.reconciled:
            raise ClientError(f"no {found.kind} named {name!r}")
        if obj is not None:
            _wait_for(client, found, obj, condition, deadline=time.monotonic() + timeout)
        typer.echo(f"{found.kind}/{name} {condition.value}")


def events(
    ctx: typer.Context,
    kind: Optional[str] = typer.Argument(None, help="The kind of the object (all objects when omitted)."),
    name: Optional[str] = typer.Argument(None, help="The object's name."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=100_000, help="The latest this many (all objects)."),
    output: Output = typer.Option(Output.table, "--output", "-o", help="A table, or JSON or YAML for scripts."),
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Show the events of one object, or the latest events of every object."""
    if kind and not name:
        raise typer.BadParameter("give the NAME of the object whose events to show")
    session = _session(ctx, verbose)
    with reported_errors():
        client = session.client
        event_kind = client.kind("Event")
        if kind:
            obj = _find(client, client.kind(kind), name)
            items = list(client.list_objects(event_kind, object_id=obj["id"]))
        else:
            items = list(itertools.islice(client.list_objects(event_kind, order="desc"), limit))
        items.sort(key=lambda e: e.get("last_seen") or "")
        if output is not Output.table:
            _print_data(items, output)
        elif not items:
            typer.echo("No events.")
        else:
            _print_table(_events_table(client, items, with_object=not kind))


def version(ctx: typer.Context, verbose: bool = _VERBOSE_OPTION) -> None:
    """Show the client's version and the control plane's."""
    typer.echo(f"client: {_client_version()}")
    session = _session(ctx, verbose)
    with reported_errors():
        client = session.client
        server = client.version()
    typer.echo(f"server: {server.get('server')} (API {', '.join(server.get('api_versions', []))}) at {client.api_url}")


# Apply ---------------------------------------------------------------------------------
def _ids_outside(client: ApiClient, manifests: list[Manifest]) -> dict[tuple[str, str], str]:
    """The ids of the objects referenced by name that the file does not declare; ManifestError for a missing one.

    Checked before anything is written, so a typo in a name changes nothing.
    """
    declared = {m.key for m in manifests}
    ids: dict[tuple[str, str], str] = {}
    for manifest in manifests:
        for kind_name, name in manifest.needs():
            if (kind_name, name) in declared or (kind_name, name) in ids:
                continue
            obj = client.find(client.kind(kind_name), name)
            if obj is None:
                raise ManifestError(
                    f"{manifest.source}: no {kind_name} named {name!r}, in the file or the control plane"
                )
            ids[kind_name, name] = obj["id"]
    return ids


def _apply_one(client: ApiClient, manifest: Manifest, ids: dict[tuple[str, str], str]) -> str:
    """Create or patch one object; what was done. Records its id in ``ids`` for those referencing it."""
    kind = manifest.kind
    body = dict(manifest.fields)
    for api_name, name in manifest.references.items():
        body[api_name] = ids[kind.fields[api_name].references, name]
    existing = client.find(kind, manifest.name)
    if existing is None:
        ids[manifest.key] = client.create(kind, body)["id"]
        return "created"
    ids[manifest.key] = existing["id"]
    if existing.get("deletion_scheduled"):
        raise ClientError(
            f"{manifest.label} is being deleted: apply again once it is gone "
            f"(threeport wait {kind.kind} {manifest.name} --for deleted)"
        )
    # Secrets are never shown, so they cannot be compared: given ones go to the server, which writes
    # nothing when they are what it holds (resource_version then stays).
    changes = {k: v for k, v in body.items() if kind.fields[k].secret or not _same(existing.get(k), v)}
    if not changes:
        return "unchanged"
    updated = client.patch(kind, existing["id"], changes, if_match=existing["resource_version"])
    return "configured" if updated.get("resource_version") != existing.get("resource_version") else "unchanged"


def _same(stored: Any, given: Any) -> bool:
    """Whether a given value is the stored one (as JSON: ``True`` is not ``1``; ids in any case)."""
    if isinstance(stored, str) and isinstance(given, str) and _is_uuid(stored) and _is_uuid(given):
        return uuid.UUID(stored) == uuid.UUID(given)
    return json.dumps(stored, sort_keys=True) == json.dumps(given, sort_keys=True)


# Finding, deleting and waiting ---------------------------------------------------------
def _find(client: ApiClient, kind: Kind, name: str) -> dict[str, Any]:
    """The object named ``name`` (or with that id); ClientError when there is none."""
    obj = client.find(kind, name) if "name" in kind.fields else None
    if obj is None and _is_uuid(name):
        obj = client.get(kind, name)
    if obj is None:
        raise ClientError(f"no {kind.kind} named {name!r}")
    return obj


def _delete_one(client: ApiClient, kind: Kind, obj: dict[str, Any], *, wait: bool, deadline: float) -> None:
    label = _label(kind, obj)
    client.delete(kind, obj["id"])
    if not kind.reconciled:
        typer.echo(f"{label} deleted")
    elif wait:
        _wait_for(client, kind, obj, Condition.deleted, deadline=deadline)
        typer.echo(f"{label} deleted")
    else:
        typer.echo(f"{label} deletion scheduled")


def _wait_for(client: ApiClient, kind: Kind, obj: dict[str, Any], condition: Condition, *, deadline: float) -> None:
    """Poll ``obj`` until ``condition`` holds, showing its phase; ClientError on failure or at ``deadline``."""
    label = _label(kind, obj)
    started = time.monotonic()
    with Console(stderr=True).status(Text(f"{label}: waiting to be {condition.value}")) as display:
        current = obj
        while True:
            try:  # a request that hangs may not outlast the wait (at least a second, to be answered at all)
                current = client.get(
                    kind, obj["id"], timeout=max(1.0, min(REQUEST_TIMEOUT, deadline - time.monotonic()))
                )
            except ApiError as exc:
                if exc.status is not None or time.monotonic() < deadline:
                    raise
            else:
                if _reached(label, current, condition):
                    return
            phase, message = _phase(current), _status(current).get("message") or ""
            if time.monotonic() >= deadline:
                raise ClientError(
                    f"timed out after {time.monotonic() - started:.0f}s waiting for {label} to be "
                    f"{condition.value} (phase {phase}{': ' + message if message else ''})"
                )
            elapsed = time.monotonic() - started
            display.update(Text(f"{label}: {phase} {_truncate(message, MESSAGE_WIDTH)} ({elapsed:.0f}s)"))
            time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def _reached(label: str, obj: Optional[dict[str, Any]], condition: Condition) -> bool:
    """Whether ``condition`` holds; ClientError when it never will."""
    if condition is Condition.deleted:
        return obj is None
    if obj is None:
        raise ClientError(f"{label} was deleted")
    if obj.get("deletion_scheduled"):
        raise ClientError(f"{label} is being deleted")
    if obj["observed_generation"] < obj["generation"]:
        return False
    if obj.get("creation_failed"):
        raise ClientError(f"{label} failed: {_status(obj).get('message') or 'no reason given'}")
    return bool(obj.get("reconciled"))


# Printing ------------------------------------------------------------------------------
class _Names:
    """Objects' names by kind and id, each asked for once."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self._names: dict[str, str] = {}

    def of(self, kind_name: str, object_id: Optional[str]) -> str:
        if not object_id:
            return "-"
        if object_id not in self._names:
            kind = self.client.catalog.get(kind_name)
            obj = self.client.get(kind, object_id) if kind is not None else None
            self._names[object_id] = obj.get("name", object_id) if obj else f"{object_id} (gone)"
        return self._names[object_id]


def _print_object(kind: Kind, obj: dict[str, Any], names: _Names) -> None:
    typer.echo(f"Name:  {obj.get('name', obj['id'])}")
    typer.echo(f"Kind:  {kind.kind}")
    typer.echo(f"ID:    {obj['id']}")
    spec = [f for f in kind.fields.values() if f.writable and f.name != "name"]
    if not kind.reconciled:
        spec = [f for f in kind.fields.values() if f.name not in ("id", "name")]
    typer.echo("Spec:")
    for f in spec:
        if f.secret:
            value = "(secret: write-only)"
        elif f.references:
            value = names.of(f.references, obj.get(f.name))
        else:
            value = obj.get(f.name)
        _print_value(f.alias or f.name, value)
    if not kind.reconciled:
        return
    status = _status(obj)
    typer.echo("Status:")
    _print_value("phase", _phase(obj))
    _print_value("message", status.get("message") or "-")
    for condition in status.get("conditions") or []:
        shown = ", ".join(f"{k}={v}" for k, v in condition.items()) if isinstance(condition, dict) else condition
        _print_value("condition", shown)
    typer.echo("Lifecycle:")
    _print_value("generation", f"{obj.get('generation')} (observed {obj.get('observed_generation')})")
    for f in kind.fields.values():
        if not f.writable and isinstance(obj.get(f.name), bool):
            _print_value(f.name, obj[f.name])
    _print_value("deletion_scheduled", obj.get("deletion_scheduled") or "-")
    for when in ("created_at", "updated_at"):
        _print_value(when, f"{obj.get(when)} ({_age(obj.get(when))} ago)")


def _print_value(label: str, value: Any) -> None:
    text = json.dumps(value) if isinstance(value, (dict, list)) else _cell(value)
    if "\n" in text.rstrip("\n"):
        typer.echo(f"  {label}: |")
        for line in text.rstrip("\n").splitlines():
            typer.echo(f"    {line}")
    else:
        typer.echo(f"  {label}: {text}")


def _objects_table(kind: Kind, items: list[dict[str, Any]]) -> Table:
    table = _table("NAME", "GENERATION", "RECONCILED", "PHASE", "MESSAGE", "AGE")
    for obj in items:
        cells = (
            obj.get("name", ""),
            f"{obj.get('observed_generation')}/{obj.get('generation')}",
            str(bool(obj.get("reconciled"))).lower(),
            _phase(obj),
            _truncate(_status(obj).get("message") or "", MESSAGE_WIDTH),
            _age(obj.get("created_at")),
        )
        table.add_row(*map(Text, cells))
    return table


def _records_table(kind: Kind, items: list[dict[str, Any]]) -> Table:
    shown = [name for name in kind.fields if name not in HIDDEN_RECORD_FIELDS]
    shown = [name for name in shown if not any(isinstance(obj.get(name), (dict, list)) for obj in items)]
    table = _table("ID", *(name.upper() for name in shown), "AGE")
    for obj in items:
        cells = [obj["id"], *(_truncate(_cell(obj.get(name)), MESSAGE_WIDTH) for name in shown)]
        table.add_row(*map(Text, [*cells, _age(obj.get("created_at"))]))
    return table


def _events_table(client: ApiClient, items: list[dict[str, Any]], *, with_object: bool) -> Table:
    names = _Names(client)
    headers = ["LAST SEEN", "TYPE", "REASON", *(["OBJECT"] if with_object else []), "COUNT", "MESSAGE"]
    table = _table(*headers)
    for event in items:
        who = [f"{event['object_kind']}/{names.of(event['object_kind'], event['object_id'])}"] if with_object else []
        cells = [
            f"{_age(event.get('last_seen'))} ago",
            event.get("type", ""),
            event.get("reason", ""),
            *who,
            str(event.get("count", 1)),
            _truncate(event.get("message") or "", MESSAGE_WIDTH * 2),
        ]
        table.add_row(*map(Text, cells))
    return table


def _attachments_table(client: ApiClient, obj: dict[str, Any], names: _Names) -> Optional[Table]:
    """The objects attached to ``obj``, and those it is attached to; None when there are none."""
    references = client.kind("AttachedObjectReference")
    rows = []
    for ref in client.list_objects(references, object_id=obj["id"]):
        rows.append(("attached", ref["attached_object_type"], ref["attached_object_id"]))
    for ref in client.list_objects(references, attached_object_id=obj["id"]):
        rows.append(("attached to", ref["object_type"], ref["object_id"]))
    if not rows:
        return None
    table = _table("RELATION", "KIND", "NAME", "ID")
    for relation, kind_name, object_id in rows:
        table.add_row(*map(Text, (relation, kind_name, names.of(kind_name, object_id), object_id)))
    return table


def _print_section(table: Optional[Table]) -> None:
    if table is None:
        typer.echo("  (none)")
    else:
        _print_table(table, indent=2)


def _table(*headers: str) -> Table:
    """A borderless table, one line per row; rows are added as ``Text`` so data is never read as markup."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True)
    return table


def _print_table(table: Table, *, indent: int = 0) -> None:
    # One line per row, as kubectl does: a narrow terminal wraps lines rather than rich folding cells.
    console = Console()
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    console.width = max(console.width, natural + indent)
    console.print(Padding(table, (0, 0, 0, indent)) if indent else table)


def _print_data(items: Iterable[dict[str, Any]], output: Output) -> None:
    items = list(items)
    if output is Output.json:
        typer.echo(json.dumps(items, indent=2))
    else:
        typer.echo(yaml.safe_dump(items, sort_keys=False), nl=False)


def _filters(client: ApiClient, kind: Kind, given: list[str]) -> dict[str, str]:
    """``--field`` values as query filters; a reference may be given by name (``workload_definition=web``)."""
    filters: dict[str, str] = {}
    for item in given:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ClientError(f"--field wants FIELD=VALUE, not {item!r}")
        reference = kind.aliases.get(key)
        if key not in kind.fields and reference is None:
            known = ", ".join(sorted([*kind.fields, *kind.aliases]))
            raise ClientError(f"--field {item!r}: {kind.kind} has no field {key!r} (fields: {known})")
        if reference is not None and not _is_uuid(value):
            target = _find(client, client.kind(reference.references), value)
            key, value = reference.name, target["id"]
        if key in filters and filters[key] != value:
            raise ClientError(f"--field {item!r}: {key!r} is already chosen as {filters[key]!r}")
        filters[key] = value
    return filters


def _label(kind: Kind, obj: dict[str, Any]) -> str:
    return f"{kind.kind}/{obj.get('name', obj['id'])}"


def _status(obj: Optional[dict[str, Any]]) -> dict[str, Any]:
    status = (obj or {}).get("status")
    return status if isinstance(status, dict) else {}


def _phase(obj: Optional[dict[str, Any]]) -> str:
    phase = _status(obj).get("phase") or "Pending"
    return f"{phase} (deleting)" if obj and obj.get("deletion_scheduled") else phase


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _age(timestamp: Optional[str]) -> str:
    """How long ago ``timestamp`` (ISO 8601) was: ``42s``, ``5m``, ``3h``, ``2d``."""
    if not timestamp:
        return "-"
    try:
        then = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        return "?"
    seconds = max(0, int((dt.datetime.now(dt.timezone.utc) - then).total_seconds()))
    for unit, size, up_to in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < up_to:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _client_version() -> str:
    try:
        return metadata.version("threeport")
    except metadata.PackageNotFoundError:
        return "0+unknown"
