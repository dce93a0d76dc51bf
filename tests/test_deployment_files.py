"""The deployment files agree with the code that runs in them.

Images cannot be built or run on the build machines, so these tests read
``compose/`` (Dockerfile, docker-compose.yml, gunicorn.conf.py, the
Kubernetes base and the chart values) and hold every command, option,
variable, probe, name and grace period in it against the code: the CLI's
own parser, the API's own routes, the broker's own naming.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import importlib.metadata
import json
import os
import re
import runpy
import shlex
import types
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import click
import falcon.testing
import psycopg2.extensions
import pytest
import typer.main
import yaml
from gunicorn.config import Config as GunicornConfig
from gunicorn.workers.gthread import ThreadWorker
from typer.testing import CliRunner

from api.app import OPEN_PATHS, create_app
from api.settings import DEFAULT_DATABASE_URL, DEFAULT_NATS_URL, Settings
from cli import main as cli_main
from cli.worker import probe_routes
from models import registry, secrets
from workers.metrics import start_metrics_server
from workers.naming import DURABLE, Names

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
KUBE = COMPOSE / "kubernetes"
HELM = KUBE / "helm"
GUNICORN_CONF = COMPOSE / "gunicorn.conf.py"
NATS_CONF = COMPOSE / "nats" / "nats-server.conf"
IMAGE = "threeport"  # the image name the Kubernetes base uses (and kustomize rewrites)
SOURCE_DIRS = ("api", "cli", "models", "tasks", "workers")
OPERATOR_VALUE = "set-by-the-operator"


# Reading the files -----------------------------------------------------------------------------


@functools.cache
def _compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def _threeport_services() -> dict[str, dict]:
    """The compose services that run our image."""
    return {name: s for name, s in _compose()["services"].items() if s.get("image") == "threeport:local"}


def _interpolate(value: str) -> str:
    """``value`` as compose would pass it, with the operator's ``${VAR:?…}`` values filled in."""
    return re.sub(r"\$\{\w+(?::?[-?][^}]*)?\}", OPERATOR_VALUE, str(value)).replace("$$", "$")


def _compose_env(service: dict) -> dict[str, str]:
    return {name: _interpolate(value) for name, value in (service.get("environment") or {}).items()}


@functools.cache
def _kustomization() -> dict:
    return yaml.safe_load((KUBE / "kustomization.yaml").read_text())


@functools.cache
def _kube_objects() -> list[dict]:
    return [doc for name in _kustomization()["resources"] for doc in yaml.safe_load_all((KUBE / name).read_text())]


def _kube_object(kind: str, name: str) -> dict:
    [found] = [o for o in _kube_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@functools.cache
def _config_map() -> dict[str, str]:
    [generator] = [g for g in _kustomization()["configMapGenerator"] if g["name"] == "threeport-config"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


@functools.cache
def _secret_example() -> dict[str, str]:
    lines = (KUBE / "secrets.env.example").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {name: value or OPERATOR_VALUE for name, value in pairs}


def _container_env(container: dict) -> dict[str, str]:
    """What the container's environment holds, the Secret's values taken from secrets.env.example."""
    sources = {"configMapRef": _config_map(), "secretRef": _secret_example()}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        [(kind, ref)] = source.items()
        env.update(sources[kind])
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        env[variable["name"]] = _secret_example()[ref["key"]] if ref else variable["value"]
    return env


def _kube_containers() -> dict[str, tuple[dict, dict]]:
    """Every container of the base, by ``<object>/<container>``, with its pod spec."""
    found = {}
    for obj in _kube_objects():
        if obj["kind"] in ("Deployment", "Job"):
            pod = obj["spec"]["template"]["spec"]
            for container in pod["containers"]:
                found[f"{obj['metadata']['name']}/{container['name']}"] = (container, pod)
    return found


@functools.cache
def _helm_values(chart: str) -> dict:
    return yaml.safe_load((HELM / f"{chart}-values.yaml").read_text())


@functools.cache
def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (COMPOSE / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _dockerfile_copies() -> list[tuple[list[str], str]]:
    """The build-context COPYs: (sources, destination)."""
    copies = []
    for line in _dockerfile():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, destination = shlex.split(line)[1:]
            copies.append((sources, destination))
    return copies


def _gunicorn_settings(monkeypatch, metrics_dir: Path) -> dict:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    return runpy.run_path(str(GUNICORN_CONF))


def _duration(value: str) -> float:
    """A compose duration (``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"unreadable duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


@functools.cache
def _sources() -> str:
    files = [p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py")] + [GUNICORN_CONF]
    return "\n".join(p.read_text() for p in files)


# Running what they name ------------------------------------------------------------------------


@functools.cache
def _cli() -> click.Group:
    return typer.main.get_command(cli_main.app)


def _cli_command(verb: str) -> click.Command:
    return _cli().commands[verb]


def _parse(argv: list[str], env: dict[str, str], monkeypatch):
    """``argv`` (``threeport <verb> …``) parsed by the real CLI in ``env``, without running it."""
    assert argv[0] == "threeport", argv
    command = _cli_command(argv[1])
    for param in command.params:
        for name in [param.envvar] if isinstance(param.envvar, str) else param.envvar or []:
            monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return command.make_context(argv[1], list(argv[2:]))


def _worker_shutdown_timeout(argv: list[str], env: dict[str, str], monkeypatch) -> float:
    """The seconds a worker started with ``argv`` gives running actors on SIGTERM."""
    return _parse(argv, env, monkeypatch).params["shutdown_timeout"]


#: ``threeport worker --processes N`` waits this long past the shutdown timeout for its children.
_SUPERVISOR_MARGIN = 10


def _all_commands() -> dict[str, list[str]]:
    """Every command the files run in our image, by where it is."""
    commands = {f"compose {name}": s["command"] for name, s in _threeport_services().items()}
    commands |= {f"kubernetes {name}": c["command"] for name, (c, _) in _kube_containers().items()}
    [cmd] = [json.loads(line[4:]) for line in _dockerfile() if line.startswith("CMD ")]
    commands["Dockerfile CMD"] = cmd
    return commands


# The files parse -------------------------------------------------------------------------------


def test_every_yaml_file_parses():
    # Given every YAML file under compose/
    files = sorted(COMPOSE.rglob("*.yaml")) + sorted(COMPOSE.rglob("*.yml"))
    assert len(files) >= 10

    # When each is parsed, then each holds at least one document
    for path in files:
        assert [doc for doc in yaml.safe_load_all(path.read_text()) if doc], path


def test_the_kustomization_lists_every_manifest_and_nothing_else():
    # Given the manifests in the Kubernetes base directory
    present = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}

    # When the kustomization's resources are read
    listed = _kustomization()["resources"]

    # Then they are exactly those files, once each, and the Secret's file stays out of git
    assert sorted(listed) == sorted(present) and len(listed) == len(set(listed))
    [secret] = _kustomization()["secretGenerator"]
    [env_file] = secret["envs"]
    assert (KUBE / f"{env_file}.example").is_file()
    assert env_file in (KUBE / ".gitignore").read_text().split()


def test_every_kubernetes_object_is_named_in_one_namespace_and_runs_one_image():
    # Given the objects of the base, then each has an apiVersion, kind and name
    for obj in _kube_objects():
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"], obj
    # and everything lands in the namespace the base creates
    assert _kustomization()["namespace"] == _kube_object("Namespace", "threeport")["metadata"]["name"]
    # and every container runs the one image the kustomization points at the operator's registry
    assert [image["name"] for image in _kustomization()["images"]] == [IMAGE]
    assert {container["image"] for container, _ in _kube_containers().values()} == {IMAGE}


# Commands and options --------------------------------------------------------------------------


def test_every_threeport_command_and_option_used_exists(monkeypatch):
    # Given every `threeport …` command in compose and the manifests
    commands = {where: argv for where, argv in _all_commands().items() if argv[0] == "threeport"}
    assert {argv[1] for argv in commands.values()} >= {"migrate", "worker"}

    for where, argv in commands.items():
        # When the CLI shows the verb's help, then the verb exists
        result = CliRunner().invoke(cli_main.app, [argv[1], "--help"])
        assert result.exit_code == 0, f"{where}: {result.output}"
        # and the real parser accepts every option given (an unknown one raises a usage error)
        _parse(argv, {}, monkeypatch)


def test_every_api_command_is_the_gunicorn_the_image_ships(monkeypatch, tmp_path):
    # Given the API's commands: the Dockerfile's default, compose's api and the Kubernetes Deployment
    commands = _all_commands()
    api = [commands["Dockerfile CMD"], commands["compose api"], commands["kubernetes threeport-api/api"]]

    # Then they are one command
    assert api[0] == api[1] == api[2]
    [argv] = {tuple(a) for a in api}
    program, option, config, app_spec = argv
    # gunicorn is installed with the project, as a console script
    assert any(ep.name == program for ep in importlib.metadata.entry_points(group="console_scripts"))
    # its --config is where the Dockerfile puts compose/gunicorn.conf.py
    assert option in ("-c", "--config")
    assert (["compose/gunicorn.conf.py"], config) in _dockerfile_copies()
    # and the app it serves is the factory gunicorn calls
    module, _, call = app_spec.partition(":")
    assert call.endswith("()") and callable(getattr(importlib.import_module(module), call[:-2]))


def test_the_threeport_console_script_is_the_cli():
    # Given the installed distribution's console scripts
    [script] = [ep for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "threeport"]

    # Then `threeport` runs the CLI these tests parse with
    assert script.load() is cli_main.main


# The image -------------------------------------------------------------------------------------


def _docker_ignored(path: str, rules: list[str]) -> bool:
    """Whether .dockerignore ``rules`` leave ``path`` out of the build context (last match wins)."""
    parts = path.split("/")
    ignored = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            spans = ("/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))
            matched = any(fnmatch.fnmatchcase(span, tail) for span in spans)
        else:
            depth = pattern.count("/") + 1
            matched = len(parts) >= depth and fnmatch.fnmatchcase("/".join(parts[:depth]), pattern)
        if matched:
            ignored = not negated
    return ignored


def test_the_image_is_python_311_slim_installs_the_project_and_runs_as_non_root():
    # Given the Dockerfile's instructions
    instructions = _dockerfile()

    # Then every stage starts from python:3.11-slim, the project is pip-installed, the user is not root
    bases = [line.split()[1] for line in instructions if line.startswith("FROM ")]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    assert any(re.search(r"pip install \.$", line) for line in instructions if line.startswith("RUN "))
    [user] = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert user.split(":")[0] not in ("0", "root")
    # and it is the uid the Kubernetes pods insist on
    for _, pod in _kube_containers().values():
        assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    # Given the .dockerignore rules at the root of the build context
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]

    # When each COPY source is looked up
    for sources, _ in _dockerfile_copies():
        for source in sources:
            path = ROOT / source
            assert path.exists(), source
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            # Then it exists and no file of it is left out of the context
            for file in files:
                assert not _docker_ignored(str(file.relative_to(ROOT)), rules), file
    # and every package the project installs is copied
    copied = {s for sources, _ in _dockerfile_copies() for s in sources}
    assert set(SOURCE_DIRS) <= copied
    # while local data (keys, tokens) and the virtualenv never reach the context
    for private in (".threeport/config.json", ".venv/bin/python", ".git/config", "tests/conftest.py"):
        assert _docker_ignored(private, rules), private


# gunicorn --------------------------------------------------------------------------------------


def test_the_gunicorn_settings_are_known_to_gunicorn(monkeypatch, tmp_path):
    # Given the settings module, read as gunicorn reads it
    settings = _gunicorn_settings(monkeypatch, tmp_path)
    config = GunicornConfig()

    # When each public name is set on a gunicorn Config (which validates it)
    for name, value in settings.items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, type)):
            continue
        assert name in config.settings, f"gunicorn has no setting {name!r}"
        config.set(name, value)

    # Then the API listens on 8080, in threads, and drains within the graceful timeout
    assert config.bind == ["0.0.0.0:8080"]
    assert config.worker_class_str == "api.gunicorn_worker.LingeringThreadWorker" and config.workers >= 2
    assert issubclass(config.worker_class, ThreadWorker)
    assert 0 < config.graceful_timeout


def test_gunicorn_picks_a_metrics_directory_when_none_is_given(monkeypatch):
    # Given no PROMETHEUS_MULTIPROC_DIR
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")

    # When gunicorn reads its settings
    runpy.run_path(str(GUNICORN_CONF))

    # Then one is chosen before any worker imports prometheus_client
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert directory.is_dir()
    directory.rmdir()


def test_gunicorn_empties_the_metrics_directory_and_forgets_dead_workers(monkeypatch, tmp_path):
    # Given a metrics directory with a file left by an earlier run
    settings = _gunicorn_settings(monkeypatch, tmp_path)
    (tmp_path / "counter_1.db").write_bytes(b"old")

    # When gunicorn starts, then the stale file is gone
    settings["on_starting"](server=None)
    assert list(tmp_path.iterdir()) == []

    # Given a worker that wrote a live gauge and a counter, when it exits
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    (tmp_path / "counter_4242.db").write_bytes(b"")
    settings["child_exit"](server=None, worker=types.SimpleNamespace(pid=4242))

    # Then its live gauge is dropped and its counter stays in the sums
    assert [p.name for p in tmp_path.iterdir()] == ["counter_4242.db"]


# Environment variables -------------------------------------------------------------------------


def test_every_variable_set_for_our_processes_is_read_by_the_code():
    # Given the code's sources and every variable compose and the manifests set for our image
    sources = _sources()
    variables = {name for s in _threeport_services().values() for name in _compose_env(s)}
    variables |= {name for container, _ in _kube_containers().values() for name in _container_env(container)}
    variables |= set(_config_map()) | set(_secret_example())

    # Then the code reads each one by that name
    unread = {name for name in variables if not re.search(rf"[\"']{re.escape(name)}[\"']", sources)}
    assert not unread, f"set but never read: {sorted(unread)}"


def test_every_reference_names_the_generated_config_map_or_secret_and_a_key_of_it():
    # Given the generated ConfigMap and Secret
    generated = {"configMapRef": "threeport-config", "secretRef": _kustomization()["secretGenerator"][0]["name"]}

    for where, (container, _) in _kube_containers().items():
        # Then every envFrom names one of them
        for source in container.get("envFrom", []):
            [(kind, ref)] = source.items()
            assert ref["name"] == generated[kind], where
        # and every single variable taken from the Secret is the key of the same name
        for variable in container.get("env", []):
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == generated["secretRef"], where
            assert ref["key"] == variable["name"] and ref["key"] in _secret_example(), where


def test_nats_nodes_get_the_variables_their_configuration_uses():
    # Given the NATS services and the configuration they share
    conf = NATS_CONF.read_text()
    nats = {name: s for name, s in _compose()["services"].items() if name.startswith("nats-")}

    # Then each sets exactly the variables the configuration names, its server name its own
    for name, service in nats.items():
        assert set(service["environment"]) == set(re.findall(r"\$(\w+)", conf))
        assert service["environment"]["SERVER_NAME"] == name


def _nats_nodes(deployment: str) -> int:
    """How many NATS servers the deployment's cluster has: compose's services, the chart's replicas."""
    if deployment == "compose":
        return len([name for name in _compose()["services"] if name.startswith("nats-")])
    return _helm_values("nats")["config"]["cluster"]["replicas"]


def _assert_api_environment(env: dict[str, str], where: str) -> None:
    settings = Settings.from_env(env)
    nodes = _nats_nodes(where.split()[0])
    assert settings.database_url != DEFAULT_DATABASE_URL, f"{where}: DATABASE_URL"
    assert settings.database_url.startswith("cockroachdb://"), f"{where}: DATABASE_URL"
    assert settings.nats_url != DEFAULT_NATS_URL and len(settings.nats_url.split(",")) == nodes, f"{where}: NATS_URL"
    assert settings.nats_replicas == nodes, f"{where}: THREEPORT_NATS_REPLICAS"
    assert settings.token_hashes, f"{where}: no API token"
    assert settings.encryption_keys, f"{where}: {secrets.ENV_VAR}"


def _assert_worker_environment(argv: list[str], env: dict[str, str], where: str, monkeypatch) -> None:
    params = _parse(argv, env, monkeypatch).params
    defaults = {p.name: p.default for p in _cli_command("worker").params}
    nodes = _nats_nodes(where.split()[0])
    assert params["database_url"] != defaults["database_url"], f"{where}: DATABASE_URL"
    assert params["database_url"].startswith("cockroachdb://"), f"{where}: DATABASE_URL"
    assert len(params["nats_url"].split(",")) == nodes, f"{where}: NATS_URL"
    assert params["nats_replicas"] == nodes, f"{where}: THREEPORT_NATS_REPLICAS"
    assert env.get(secrets.ENV_VAR), f"{where}: {secrets.ENV_VAR}"


def test_the_api_gets_everything_it_needs():
    # Given the API's environment in compose and in Kubernetes, then the API's settings read from it
    # name CockroachDB, every NATS server, as many stream replicas as servers, a token and the secret-field key
    _assert_api_environment(_compose_env(_threeport_services()["api"]), "compose api")
    container, _ = _kube_containers()["threeport-api/api"]
    _assert_api_environment(_container_env(container), "kubernetes api")


def test_workers_and_the_migration_get_everything_they_need(monkeypatch):
    # Given the workers' command and environment, when the CLI parses them, then nothing falls back to a default
    # (their streams and buckets get as many replicas as there are NATS servers)
    worker = _threeport_services()["worker"]
    _assert_worker_environment(worker["command"], _compose_env(worker), "compose worker", monkeypatch)
    container, _ = _kube_containers()["threeport-worker/worker"]
    _assert_worker_environment(container["command"], _container_env(container), "kubernetes worker", monkeypatch)

    # and the migration is pointed at the database too
    migrate = _threeport_services()["migrate"]
    default = _cli_command("migrate").params[0].default
    assert _parse(migrate["command"], _compose_env(migrate), monkeypatch).params["database_url"] != default
    container, _ = _kube_containers()["threeport-migrate/migrate"]
    assert _parse(container["command"], _container_env(container), monkeypatch).params["database_url"] != default


def test_database_urls_name_the_cockroach_nodes_and_libpq_reads_them():
    # Given the compose database URL and the CockroachDB nodes' start command
    url = _compose_env(_threeport_services()["migrate"])["DATABASE_URL"]
    nodes = {name for name in _compose()["services"] if re.fullmatch(r"cockroach-\d", name)}
    [join] = [a for a in _compose()["services"]["cockroach-0"]["command"] if a.startswith("--join=")]

    # When libpq parses the URL (the driver gets it with the scheme swapped, models.database)
    dsn = psycopg2.extensions.parse_dsn("postgresql://" + url.partition("://")[2])

    # Then it lists every node the cluster joins, on the SQL port
    assert len(nodes) == 3 and set(dsn["host"].split(",")) == nodes
    assert {h.partition(":")[0] for h in join.partition("=")[2].split(",")} == nodes
    assert set(dsn["port"].split(",")) == {"26257"}

    # and the Kubernetes URL names the database and user the chart provisions
    k8s = urlsplit(_secret_example()["DATABASE_URL"])
    provisioning = _helm_values("cockroachdb")["init"]["provisioning"]
    assert k8s.scheme == "cockroachdb"
    assert k8s.path.lstrip("/") in {d["name"] for d in provisioning["databases"]}
    assert k8s.username in {u["name"] for u in provisioning["users"]}


def test_nats_urls_name_every_node_of_the_cluster():
    # Given the NATS configuration's routes and the services that run it
    routes = set(re.findall(r"nats-route://([\w-]+):6222", NATS_CONF.read_text()))
    nats = {name for name in _compose()["services"] if name.startswith("nats-")}

    # Then compose's NATS_URL names every routed node, the nodes are the services
    url = _compose_env(_threeport_services()["worker"])["NATS_URL"]
    assert routes == nats and {urlsplit(u).hostname for u in url.split(",")} == nats
    # and Kubernetes' names the three pods of the chart's StatefulSet
    hosts = [urlsplit(u).hostname for u in _config_map()["NATS_URL"].split(",")]
    assert len(set(hosts)) == 3 == _helm_values("nats")["config"]["cluster"]["replicas"]


# Probes ----------------------------------------------------------------------------------------


@functools.cache
def _api() -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(Settings()))


def _api_answers_without_token(path: str) -> bool:
    return path in OPEN_PATHS and _api().simulate_get(path).status_code == 200


class _NamedProbes:
    """A worker's probes that answer with their own name, to tell which one a path reaches."""

    def liveness(self) -> tuple[bool, dict]:
        return True, {"probe": "liveness"}

    def readiness(self) -> tuple[bool, dict]:
        return True, {"probe": "readiness"}


@pytest.fixture(scope="module")
def worker_probe():
    """What a path of a worker's metrics port answers: ``liveness``, ``readiness``, or None (the metrics).

    The port is the worker's own server (``start_metrics_server``) with the routes ``threeport worker``
    gives it (``cli.worker.probe_routes``), so the paths are the code's, not a copy of them.
    """
    server = start_metrics_server(0, "127.0.0.1", probes=probe_routes(_NamedProbes()))

    def answer(path: str) -> Optional[str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}", timeout=5) as response:
            body = response.read()
        return json.loads(body).get("probe") if response.headers.get_content_type() == "application/json" else None

    yield answer
    server.shutdown()
    server.server_close()


def test_api_probes_are_routes_that_answer_without_a_token():
    # Given the API container's probes
    container, _ = _kube_containers()["threeport-api/api"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}

    # Then readiness asks /readyz, liveness /healthz, on gunicorn's port
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert ports[probe["port"]] == 8080
        # and the app built by the factory serves them, unauthenticated
        assert _api_answers_without_token(probe["path"]), probe


def test_compose_health_checks_ask_real_routes_on_the_right_ports(worker_probe):
    # Given the API's and the workers' health checks
    services = _threeport_services()
    checks = {name: services[name]["healthcheck"]["test"] for name in ("api", "worker")}

    # When their URLs are read (each check is a Python one-liner, which must compile)
    urls = {}
    for name, test in checks.items():
        assert test[:3] == ["CMD", "python", "-c"]
        compile(test[3], name, "exec")
        urls[name] = [urlsplit(u) for u in re.findall(r"http://[^'\"]+", test[3])]

    # Then the API's ask /healthz and /readyz on 8080
    assert {u.path for u in urls["api"]} == {"/healthz", "/readyz"}
    for url in urls["api"]:
        assert url.port == 8080 and _api_answers_without_token(url.path)
    # and the worker's asks its --metrics-port for its readiness probe (not the metrics, which query NATS
    # and the database)
    metrics_port = services["worker"]["command"][services["worker"]["command"].index("--metrics-port") + 1]
    [url] = urls["worker"]
    assert url.port == int(metrics_port) and worker_probe(url.path) == "readiness"


def test_worker_probes_ask_the_metrics_port_for_the_workers_own_probes(monkeypatch, worker_probe):
    # Given the worker container
    container, _ = _kube_containers()["threeport-worker/worker"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    # When its command is parsed
    metrics_port = _parse(container["command"], {}, monkeypatch).params["metrics_port"]

    # Then each probe asks that port, on a path the worker answers with the probe of that kind:
    # starting and alive by its liveness, ready by its readiness
    expected = {"startupProbe": "liveness", "livenessProbe": "liveness", "readinessProbe": "readiness"}
    for kind, answered_by in expected.items():
        probe = container[kind]["httpGet"]
        assert ports[probe["port"]] == metrics_port, kind
        assert worker_probe(probe["path"]) == answered_by, f"{kind} {probe['path']}"


# Grace periods ---------------------------------------------------------------------------------


def test_workers_get_longer_to_stop_than_their_shutdown_timeout(monkeypatch):
    # Given the workers in compose and in Kubernetes
    worker = _threeport_services()["worker"]
    container, pod = _kube_containers()["threeport-worker/worker"]

    # When the shutdown timeout each will run with is read from the CLI
    compose_timeout = _worker_shutdown_timeout(worker["command"], _compose_env(worker), monkeypatch)
    kube_timeout = _worker_shutdown_timeout(container["command"], _container_env(container), monkeypatch)

    # Then the orchestrator waits longer than that plus the supervisor's own margin before SIGKILL
    assert _duration(worker["stop_grace_period"]) > compose_timeout + _SUPERVISOR_MARGIN
    assert pod["terminationGracePeriodSeconds"] > kube_timeout + _SUPERVISOR_MARGIN


def test_the_api_gets_longer_to_stop_than_gunicorn_drains(monkeypatch, tmp_path):
    # Given gunicorn's graceful timeout
    graceful = _gunicorn_settings(monkeypatch, tmp_path)["graceful_timeout"]

    # Then compose waits longer, and Kubernetes waits longer than the preStop pause plus that
    assert _duration(_threeport_services()["api"]["stop_grace_period"]) > graceful
    container, pod = _kube_containers()["threeport-api/api"]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + graceful


# Scaling ---------------------------------------------------------------------------------------


def test_keda_scales_workers_on_every_core_queue_by_the_brokers_names():
    # Given the ScaledObject, the deployment's prefix and the core queues
    scaled = _kube_object("ScaledObject", "threeport-worker")
    names = Names(_config_map()["THREEPORT_PREFIX"])
    queues = {model.queue for model in registry.reconciled_kinds()}

    # Then it scales the worker Deployment, never to zero (workers also run the relay)
    worker = _kube_object("Deployment", "threeport-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] >= 1
    # with one trigger per core queue, on the stream and durable consumer the broker makes
    triggers = scaled["spec"]["triggers"]
    assert all(t["type"] == "nats-jetstream" for t in triggers)
    assert sorted(t["metadata"]["stream"] for t in triggers) == sorted(names.stream(q) for q in queues)
    assert {t["metadata"]["consumer"] for t in triggers} == {DURABLE}
    assert {t["metadata"]["account"] for t in triggers} == {"$G"}  # no accounts configured
    # read from the monitoring port of the NATS pods NATS_URL names
    nats_hosts = {urlsplit(u).hostname for u in _config_map()["NATS_URL"].split(",")}
    monitor = _helm_values("nats")["config"]["monitor"]["port"]
    for trigger in triggers:
        host, _, port = trigger["metadata"]["natsServerMonitoringEndpoint"].partition(":")
        assert int(port) == monitor and all(h.endswith("." + host) for h in nats_hosts)


def test_the_worker_deployment_leaves_its_replica_count_to_keda_and_the_api_runs_two():
    # Given the two Deployments, then KEDA alone sets the workers' count and two API replicas serve
    assert "replicas" not in _kube_object("Deployment", "threeport-worker")["spec"]
    assert _kube_object("Deployment", "threeport-api")["spec"]["replicas"] == 2
    assert _kube_object("PodDisruptionBudget", "threeport-api")["spec"]["minAvailable"] == 1
    # and compose runs two of each, scalable (no fixed container name)
    for name in ("api", "worker"):
        service = _threeport_services()[name]
        assert service["deploy"]["replicas"] == 2 and "container_name" not in service


@pytest.mark.parametrize("name", ["api", "worker", "migrate"])
def test_compose_starts_our_processes_after_the_database_is_ready_and_migrated(name):
    # Given the service's dependencies
    depends = _threeport_services()[name]["depends_on"]

    # Then the migration waits for the initialised, healthy database; the rest wait for the migration and NATS
    if name == "migrate":
        assert depends["cockroach-init"]["condition"] == "service_completed_successfully"
        assert all(depends[f"cockroach-{n}"]["condition"] == "service_healthy" for n in range(3))
    else:
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert all(depends[f"nats-{n}"]["condition"] == "service_healthy" for n in range(3))


# Servers ---------------------------------------------------------------------------------------


def test_nats_runs_three_nodes_on_files_fsyncing_every_write_in_both_deployments():
    # Given compose's NATS services and the chart values
    services = {name: s for name, s in _compose()["services"].items() if name.startswith("nats-")}
    values = _helm_values("nats")["config"]

    # Then compose runs three nodes of the shipped configuration (which fsyncs every write, see
    # test_deployment_config.py), each with its own store
    assert len(services) == 3
    for service in services.values():
        [config_mount] = [v for v in service["volumes"] if v.startswith("./nats/nats-server.conf:")]
        assert config_mount.split(":")[1] == service["command"][service["command"].index("--config") + 1]
    # and the chart: a 3-node cluster, JetStream on persistent files, sync_interval always
    assert values["cluster"]["enabled"] and values["cluster"]["replicas"] == 3
    assert values["jetstream"]["enabled"] and values["jetstream"]["fileStore"]["pvc"]["enabled"]
    assert values["jetstream"]["merge"]["sync_interval"] == "always"
    # on a server that has message schedules (delayed messages)
    tags = [s["image"].partition(":")[2] for s in services.values()] + [
        _helm_values("nats")["container"]["image"]["tag"]
    ]
    for tag in tags:
        major, minor = (int(n) for n in re.match(r"(\d+)\.(\d+)", tag).groups())
        assert (major, minor) >= (2, 12), tag


def test_cockroachdb_runs_three_nodes_checked_for_readiness():
    # Given compose's CockroachDB nodes and the chart values
    nodes = {name: s for name, s in _compose()["services"].items() if re.fullmatch(r"cockroach-\d", name)}
    values = _helm_values("cockroachdb")

    # Then each compose node is healthy only when ready for SQL, and the chart runs three replicas
    assert len(nodes) == 3
    for node in nodes.values():
        assert any("/health?ready=1" in part for part in node["healthcheck"]["test"])
    assert values["statefulset"]["replicas"] == 3 and values["tls"]["enabled"] is True
