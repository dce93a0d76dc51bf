"""The client config: the control planes this machine talks to, and which one is current.

One YAML file (``~/.config/threeport/config.yaml``, or ``THREEPORT_CONFIG``)
lists named control planes (API URL, token, CA certificate) and names the
current one. It holds tokens, so it is written with mode 0600, atomically (a
temporary file renamed over it). ``THREEPORT_API_URL`` and
``THREEPORT_API_TOKEN`` override the current entry's values, and are enough
without any file. The ``threeport config`` verbs edit it; ``threeport up``
registers its local control plane in it.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional
from urllib.parse import urlsplit

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .client import ClientError, reported_errors, token_problem

__all__ = [
    "app",
    "ClientConfig",
    "ControlPlane",
    "ConfigError",
    "config_path",
    "load",
    "save",
    "current_control_plane",
    "ENV_CONFIG",
    "ENV_API_URL",
    "ENV_API_TOKEN",
]

ENV_CONFIG = "THREEPORT_CONFIG"
ENV_API_URL = "THREEPORT_API_URL"
ENV_API_TOKEN = "THREEPORT_API_TOKEN"
#: What to do when nothing is configured.
SETUP_HINT = "run `threeport up` or `threeport config add NAME --api-url URL --token TOKEN`"

app = typer.Typer(no_args_is_help=True)


class ConfigError(ClientError):
    """Raised when the client config cannot be read or written, or names no usable control plane."""


@dataclass(frozen=True)
class ControlPlane:
    """Where one control plane's API is and how to authenticate to it."""

    name: str
    api_url: str
    token: str
    #: A CA certificate (PEM file) to verify the API's TLS certificate with; the system's when None.
    ca_cert: Optional[str] = None


@dataclass
class ClientConfig:
    """Every configured control plane by name, and the current one's name."""

    control_planes: dict[str, ControlPlane] = field(default_factory=dict)
    current: Optional[str] = None

    def add(self, plane: ControlPlane, *, use: bool = False) -> None:
        """Add or replace ``plane``; it becomes current when asked, or when it is the only one."""
        self.control_planes[plane.name] = plane
        if use or self.current is None:
            self.current = plane.name

    def use(self, name: str) -> None:
        self.current = self.named(name).name

    def remove(self, name: str) -> None:
        del self.control_planes[self.named(name).name]
        if self.current == name:
            self.current = None

    def named(self, name: str) -> ControlPlane:
        """The control plane called ``name``; ConfigError listing the known ones otherwise."""
        try:
            return self.control_planes[name]
        except KeyError:
            known = ", ".join(sorted(self.control_planes)) or "none"
            raise ConfigError(f"no control plane named {name!r} (configured: {known})") from None

    def as_dict(self) -> dict[str, Any]:
        planes = [{k: v for k, v in asdict(p).items() if v is not None} for p in self.control_planes.values()]
        return {"current": self.current, "control_planes": planes}


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    """``THREEPORT_CONFIG``, else ``config.yaml`` under ``$XDG_CONFIG_HOME/threeport`` (``~/.config``)."""
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "threeport" / "config.yaml"


def load(path: Path) -> ClientConfig:
    """The config in ``path`` (empty when the file does not exist); ConfigError when it cannot be read."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return ClientConfig()
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the client config {path}: {exc}") from exc
    try:
        return _config_of(data)
    except ValueError as exc:
        raise ConfigError(f"the client config {path} is malformed: {exc}") from None


def _config_of(data: Any) -> ClientConfig:
    """The config a YAML document describes; ValueError saying where it does not fit."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping with 'current' and 'control_planes', not {type(data).__name__}")
    entries = data.get("control_planes") or []
    if not isinstance(entries, list):
        raise ValueError(f"'control_planes' must be a list, not {type(entries).__name__}")
    planes: dict[str, ControlPlane] = {}
    for n, entry in enumerate(entries):
        plane = _plane_of(entry, where=f"control_planes[{n}]")
        if plane.name in planes:
            raise ValueError(f"control_planes[{n}]: a second control plane named {plane.name!r}")
        planes[plane.name] = plane
    current = data.get("current")
    if current is not None and not isinstance(current, str):
        raise ValueError(f"'current' must be a control plane's name, not {type(current).__name__}")
    return ClientConfig(planes, current)


def _plane_of(entry: Any, *, where: str) -> ControlPlane:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping of name, api_url, token and ca_cert, not {type(entry).__name__}")
    known = {f.name for f in fields(ControlPlane)}
    unknown = sorted(str(key) for key in entry if key not in known)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for key in ("name", "api_url", "token"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
    if entry.get("ca_cert") is not None and not isinstance(entry["ca_cert"], str):
        raise ValueError(f"{where}: 'ca_cert' must be a file's path")
    return ControlPlane(**entry)


def save(config: ClientConfig, path: Path) -> None:
    """Write ``config`` to ``path`` with mode 0600, replacing the file at once (never half-written).

    A symbolic link is written through (the file it points at is replaced, the link kept,
    as for a dotfile kept in a repository); anything but a regular file there is refused
    rather than replaced (``THREEPORT_CONFIG=/dev/null`` must not turn /dev/null into a file).
    """
    text = yaml.safe_dump(config.as_dict(), sort_keys=False)
    path = path.resolve()
    if path.exists() and not path.is_file():
        raise ConfigError(f"cannot write the client config {path}: not a regular file")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w") as file:
                file.write(text)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write the client config {path}: {exc}") from exc


def current_control_plane(config: ClientConfig, env: Mapping[str, str] = os.environ) -> ControlPlane:
    """The control plane to talk to: the current entry, with ``THREEPORT_API_URL``/``_TOKEN`` over it."""
    entry = None
    if config.current is not None:
        entry = config.control_planes.get(config.current)
        if entry is None:
            raise ConfigError(f"the current control plane {config.current!r} is not configured; {SETUP_HINT}")
    api_url = env.get(ENV_API_URL) or (entry.api_url if entry else None)
    token = env.get(ENV_API_TOKEN) or (entry.token if entry else None)
    if not api_url:
        raise ConfigError(f"no control plane is configured: {SETUP_HINT}")
    if not token:
        raise ConfigError(f"no API token for {api_url}: set {ENV_API_TOKEN} or {SETUP_HINT}")
    if entry is None:
        return ControlPlane(name="(environment)", api_url=api_url, token=token)
    return replace(entry, api_url=api_url, token=token)


def mask(token: str) -> str:
    """A token as it may be shown: its first characters only."""
    return f"{token[:4]}… ({len(token)} characters)" if len(token) > 8 else "****"


# Verbs ---------------------------------------------------------------------------------
@app.command()
def add(
    name: str = typer.Argument(..., help="A name for the control plane."),
    api_url: str = typer.Option(..., "--api-url", help="Its API, e.g. https://threeport.example.com."),
    token: str = typer.Option(..., "--token", help="The API's bearer token."),
    ca_cert: Optional[Path] = typer.Option(None, "--ca-cert", help="A PEM CA certificate to verify the API with."),
    use: bool = typer.Option(False, "--use", help="Make it the current control plane."),
) -> None:
    """Add a control plane (or replace the one with this name)."""
    with reported_errors():
        _check_new_plane(name, api_url, token, ca_cert)
        with _editing() as config:
            replacing = name in config.control_planes
            cert = str(ca_cert.resolve()) if ca_cert else None
            config.add(ControlPlane(name=name, api_url=api_url.rstrip("/"), token=token, ca_cert=cert), use=use)
    current = " (current)" if config.current == name else ""
    typer.echo(f"Control plane {name!r} {'updated' if replacing else 'added'}{current}.")


@app.command()
def use(name: str = typer.Argument(..., help="The control plane to talk to from now on.")) -> None:
    """Make a control plane the current one."""
    with reported_errors(), _editing() as config:
        config.use(name)
    typer.echo(f"Now using control plane {name!r}.")


@app.command()
def remove(name: str = typer.Argument(..., help="The control plane to forget.")) -> None:
    """Forget a control plane (and its token)."""
    with reported_errors(), _editing() as config:
        was_current = config.current == name
        config.remove(name)
    typer.echo(f"Control plane {name!r} removed.")
    if was_current and config.control_planes:
        others = ", ".join(sorted(config.control_planes))
        typer.echo(f"No control plane is current now: `threeport config use NAME` picks one ({others}).")


@app.command("list")
def list_control_planes() -> None:
    """List the configured control planes; the current one is marked with *."""
    with reported_errors():
        config = load(config_path())
    if not config.control_planes:
        typer.echo(f"No control plane is configured: {SETUP_HINT}.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in ("CURRENT", "NAME", "API URL", "CA CERT"):
        table.add_column(header, no_wrap=True)
    for plane in config.control_planes.values():
        marker = "*" if plane.name == config.current else ""
        table.add_row(*map(Text, (marker, plane.name, plane.api_url, plane.ca_cert or "-")))
    Console(width=max(Console().width, 160)).print(table)


@app.command()
def show(
    name: Optional[str] = typer.Argument(None, help="A control plane; the current one (and env overrides) if omitted."),
) -> None:
    """Show a control plane's settings, the token masked."""
    with reported_errors():
        path = config_path()
        config = load(path)
        plane = config.named(name) if name else current_control_plane(config)
    overridden = {ENV_API_URL: "api_url", ENV_API_TOKEN: "token"} if name is None else {}
    notes = {key: f"  (from {env})" for env, key in overridden.items() if os.environ.get(env)}
    current = "  (current)" if plane.name == config.current else ""
    typer.echo(f"name:     {plane.name}{current}")
    typer.echo(f"api_url:  {plane.api_url}{notes.get('api_url', '')}")
    typer.echo(f"token:    {mask(plane.token)}{notes.get('token', '')}")
    typer.echo(f"ca_cert:  {plane.ca_cert or '-'}")
    typer.echo(f"file:     {path}")


# Helpers -------------------------------------------------------------------------------
def _check_new_plane(name: str, api_url: str, token: str, ca_cert: Optional[Path]) -> None:
    """What ``config add`` is given, checked before anything is written (ConfigError naming the option)."""
    if not name.strip():
        raise ConfigError("the control plane's name must not be empty")
    if not name.isprintable():
        raise ConfigError(f"the control plane's name must not hold control characters, not {name!r}")
    try:
        url = urlsplit(api_url)
    except ValueError as exc:  # an unclosed IPv6 bracket
        raise ConfigError(f"--api-url {api_url!r} is not a URL: {exc}") from None
    try:
        url.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise ConfigError(f"--api-url has a port that is not a number from 1 to 65535: {api_url!r}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"--api-url must be an http:// or https:// URL with a host, not {api_url!r}")
    if url.username is not None or url.password is not None:
        raise ConfigError("--api-url must not carry a user or password (the token authenticates)")
    problem = token_problem(token)
    if problem:
        raise ConfigError(f"--token {problem}")
    if ca_cert is not None:
        if ca_cert.is_dir():
            raise ConfigError(f"--ca-cert {ca_cert}: a directory; give the PEM file of the CA certificate")
        if not ca_cert.is_file():
            raise ConfigError(f"--ca-cert {ca_cert}: no such file")
        try:
            ssl.create_default_context(cafile=str(ca_cert))
        except (ssl.SSLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc  # OpenSSL's name for it, without its source line
            raise ConfigError(f"--ca-cert {ca_cert}: not a PEM CA certificate ({reason})") from None


@contextmanager
def _editing() -> Iterator[ClientConfig]:
    """The config, saved back when the block succeeds."""
    path = config_path()
    config = load(path)
    yield config
    save(config, path)
