"""``threeport config``: the client's control planes, in a file of its own per test."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import certifi
import pytest
import yaml
from typer.testing import CliRunner, Result

from cli.config import ClientConfig, ConfigError, ControlPlane, current_control_plane, load
from cli.main import app
from cli.manifests import ManifestError, read_documents

TOKEN = "tok-0123456789abcdef"


@pytest.fixture
def config_file(tmp_path, monkeypatch) -> Path:
    """Where this test's client config lives (THREEPORT_CONFIG), with no overrides in the environment."""
    path = tmp_path / "threeport" / "config.yaml"
    monkeypatch.setenv("THREEPORT_CONFIG", str(path))
    monkeypatch.delenv("THREEPORT_API_URL", raising=False)
    monkeypatch.delenv("THREEPORT_API_TOKEN", raising=False)
    return path


@pytest.fixture
def cli(config_file):
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None) -> Result:
        return runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})

    return invoke


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_add_writes_the_file_0600_and_the_first_control_plane_becomes_current(cli, config_file):
    # When I add a control plane to an empty config
    result = cli("config", "add", "prod", "--api-url", "https://tp.example.com/", "--token", TOKEN)

    # Then it is saved, current, readable by me only (it holds the token)
    assert result.exit_code == 0, result.output
    assert "'prod' added (current)" in result.stdout
    assert mode_of(config_file) == 0o600
    assert yaml.safe_load(config_file.read_text()) == {
        "current": "prod",
        "control_planes": [{"name": "prod", "api_url": "https://tp.example.com", "token": TOKEN}],
    }

    # And a second one is added without taking over, unless asked with --use
    assert cli("config", "add", "dev", "--api-url", "http://127.0.0.1:1323", "--token", "t2").exit_code == 0
    assert load(config_file).current == "prod"
    assert cli("config", "add", "stage", "--api-url", "http://s:1", "--token", "t3", "--use").exit_code == 0
    assert load(config_file).current == "stage"


def test_a_rewrite_keeps_the_file_private_even_if_it_was_opened_up(cli, config_file):
    # Given a config someone made world-readable
    cli("config", "add", "prod", "--api-url", "https://tp.example.com", "--token", TOKEN)
    config_file.chmod(0o644)

    # When the config is changed
    cli("config", "add", "dev", "--api-url", "http://127.0.0.1:1323", "--token", "t2")

    # Then the file is 0600 again
    assert mode_of(config_file) == 0o600


def test_a_config_behind_a_link_is_written_through_it_and_a_device_is_never_replaced(cli, config_file, tmp_path):
    # Given a config file kept elsewhere (a dotfiles repository) and linked to where the client looks
    kept = tmp_path / "dotfiles" / "threeport.yaml"
    kept.parent.mkdir()
    config_file.parent.mkdir()
    config_file.symlink_to(kept)

    # When I add a control plane, then the file the link points at is written and the link stays a link
    assert cli("config", "add", "prod", "--api-url", "https://tp.example.com", "--token", TOKEN).exit_code == 0
    assert config_file.is_symlink() and load(kept).current == "prod"

    # Given the config pointing at a device
    config_file.unlink()
    config_file.symlink_to("/dev/null")

    # When I add a control plane, then one line says it is no file to write, and the device is left alone
    result = cli("config", "add", "prod", "--api-url", "https://tp.example.com", "--token", TOKEN)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: cannot write the client config /dev/null: not a regular file"
    assert config_file.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_use_switches_and_list_marks_the_current_one(cli, config_file):
    # Given two control planes, prod current
    cli("config", "add", "prod", "--api-url", "https://tp.example.com", "--token", TOKEN)
    cli("config", "add", "dev", "--api-url", "http://127.0.0.1:1323", "--token", "t2")

    # When I switch to dev
    result = cli("config", "use", "dev")

    # Then dev is current, and the list marks it
    assert result.exit_code == 0, result.output
    listed = {line.split()[-3]: line for line in cli("config", "list").stdout.splitlines()[1:]}
    assert listed["dev"].startswith("*") and not listed["prod"].startswith("*")
    assert "http://127.0.0.1:1323" in listed["dev"]


def test_show_masks_the_token(cli, config_file):
    # Given a control plane
    cli("config", "add", "prod", "--api-url", "https://tp.example.com", "--token", TOKEN)

    # When I show it
    result = cli("config", "show")

    # Then I see where it is, but only the start of its token
    assert result.exit_code == 0, result.output
    assert "https://tp.example.com" in result.stdout
    assert TOKEN not in result.stdout
    assert f"{TOKEN[:4]}… ({len(TOKEN)} characters)" in result.stdout


def test_remove_forgets_a_control_plane_and_unsets_current(cli, config_file):
    # Given the current control plane
    cli("config", "add", "prod", "--api-url", "https://tp.example.com", "--token", TOKEN)

    # When I remove it
    result = cli("config", "remove", "prod")

    # Then it and its token are gone from the file, and nothing is current
    assert result.exit_code == 0, result.output
    assert TOKEN not in config_file.read_text()
    assert load(config_file) == ClientConfig()

    # Given two control planes, prod current
    cli("config", "add", "prod", "--api-url", "https://tp.example.com", "--token", TOKEN)
    cli("config", "add", "dev", "--api-url", "http://127.0.0.1:1323", "--token", "t2")

    # When I remove the current one, then I am told how to pick another
    result = cli("config", "remove", "prod")
    assert result.stdout.splitlines() == [
        "Control plane 'prod' removed.",
        "No control plane is current now: `threeport config use NAME` picks one (dev).",
    ]
    assert load(config_file).current is None


def test_the_environment_overrides_the_current_entry(cli, config_file):
    # Given a current control plane
    cli("config", "add", "prod", "--api-url", "https://tp.example.com", "--token", TOKEN)
    env = {"THREEPORT_API_URL": "http://10.0.0.1:1323", "THREEPORT_API_TOKEN": "from-env-token"}

    # When THREEPORT_API_URL and THREEPORT_API_TOKEN are set, then they win over the file
    plane = current_control_plane(load(config_file), env)
    assert (plane.name, plane.api_url, plane.token) == ("prod", "http://10.0.0.1:1323", "from-env-token")
    shown = cli("config", "show", env=env).stdout
    assert "http://10.0.0.1:1323  (from THREEPORT_API_URL)" in shown
    assert "from-env-token" not in shown

    # And one of them alone overrides only its own value
    plane = current_control_plane(load(config_file), {"THREEPORT_API_TOKEN": "other"})
    assert (plane.api_url, plane.token) == ("https://tp.example.com", "other")

    # And they are enough without any file
    plane = current_control_plane(ClientConfig(), env)
    assert (plane.api_url, plane.token) == ("http://10.0.0.1:1323", "from-env-token")


@pytest.mark.parametrize(
    ("env", "error"),
    [
        (
            {"THREEPORT_API_TOKEN": "secret-token\r\nX-Other: 1"},
            "error: the API token has spaces, control or non-ASCII characters;"
            " check THREEPORT_API_TOKEN or the client config",
        ),
        (
            {"THREEPORT_API_TOKEN": "sécret-token"},
            "error: the API token has spaces, control or non-ASCII characters;"
            " check THREEPORT_API_TOKEN or the client config",
        ),
        (
            {"THREEPORT_API_URL": "http://me:secret-token@127.0.0.1:1"},
            "error: the API URL must not carry a user or password (the token authenticates)",
        ),
        ({"THREEPORT_API_URL": "http://[::1"}, "error: invalid API URL 'http://[::1': Invalid IPv6 URL"),
        (
            {"THREEPORT_API_URL": "http://xn--a.com"},
            "error: invalid API URL http://xn--a.com/v0/kinds: Codepoint U+0080 at position 1 of '\\x80' not allowed",
        ),
    ],
    ids=["token-newline", "token-non-ascii", "url-password", "url-bracket", "url-idna"],
)
def test_a_token_unfit_for_a_header_is_refused_without_showing_it(cli, config_file, env, error):
    # Given a control plane, and a token or URL from the environment that no request could carry
    cli("config", "add", "prod", "--api-url", "http://127.0.0.1:1", "--token", TOKEN)

    # When I use a verb that talks to the API, then one line says what is wrong, without the secret
    result = cli("get", "workload-definitions", env=env)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [error]
    assert "secret-token" not in result.output


def test_without_a_control_plane_client_verbs_say_how_to_get_one(cli, config_file):
    # Given no config at all
    assert not config_file.exists()

    # When I use a verb that talks to the API
    result = cli("get", "workload-definitions")

    # Then one line tells me to run `threeport up` or `threeport config add`
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: no control plane is configured: run `threeport up` or "
        "`threeport config add NAME --api-url URL --token TOKEN`"
    ]
    # And a URL without a token is refused as clearly
    with pytest.raises(ConfigError, match="no API token for http://x:1"):
        current_control_plane(ClientConfig(), {"THREEPORT_API_URL": "http://x:1"})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["config", "use", "nope"], "error: no control plane named 'nope' (configured: prod)"),
        (["config", "remove", "nope"], "error: no control plane named 'nope' (configured: prod)"),
        (["config", "show", "nope"], "error: no control plane named 'nope' (configured: prod)"),
        (
            ["config", "add", "x", "--api-url", "tp.example.com", "--token", "t"],
            "error: --api-url must be an http:// or https:// URL with a host, not 'tp.example.com'",
        ),
        (
            ["config", "add", "x", "--api-url", "https://x", "--token", "t", "--ca-cert", "/no/such.pem"],
            "error: --ca-cert /no/such.pem: no such file",
        ),
        (
            ["config", "add", "x", "--api-url", "https://x", "--token", "t", "--ca-cert", __file__],
            f"error: --ca-cert {__file__}: not a PEM CA certificate (NO_CERTIFICATE_OR_CRL_FOUND)",
        ),
        (
            ["config", "add", " ", "--api-url", "https://x", "--token", "t"],
            "error: the control plane's name must not be empty",
        ),
        (
            ["config", "add", "x", "--api-url", "https://", "--token", "t"],
            "error: --api-url must be an http:// or https:// URL with a host, not 'https://'",
        ),
        (
            ["config", "add", "x", "--api-url", "https://x", "--token", ""],
            "error: --token is empty",
        ),
        (
            ["config", "add", "x", "--api-url", "https://x", "--token", "two\nlines"],
            "error: --token has spaces, control or non-ASCII characters",
        ),
        (
            ["config", "add", "x", "--api-url", "https://x", "--token", "tökén"],
            "error: --token has spaces, control or non-ASCII characters",
        ),
        (
            ["config", "add", "x", "--api-url", "https://me:pw@x", "--token", "t"],
            "error: --api-url must not carry a user or password (the token authenticates)",
        ),
        (
            ["config", "add", "x", "--api-url", "https://x:99999", "--token", "t"],
            "error: --api-url has a port that is not a number from 1 to 65535: 'https://x:99999'",
        ),
        (
            ["config", "add", "x", "--api-url", "http://[::1", "--token", "t"],
            "error: --api-url 'http://[::1' is not a URL: Invalid IPv6 URL",
        ),
        (
            ["config", "add", "x", "--api-url", "https://x", "--token", "t", "--ca-cert", "/"],
            "error: --ca-cert /: a directory; give the PEM file of the CA certificate",
        ),
        (
            ["config", "add", "x\ny", "--api-url", "https://x", "--token", "t"],
            "error: the control plane's name must not hold control characters, not 'x\\ny'",
        ),
    ],
    ids=[
        "use",
        "remove",
        "show",
        "url-scheme",
        "ca-missing",
        "ca-not-pem",
        "name-blank",
        "url-no-host",
        "token-empty",
        "token-newline",
        "token-non-ascii",
        "url-userinfo",
        "url-port",
        "url-bracket",
        "ca-directory",
        "name-newline",
    ],
)
def test_mistakes_are_one_line_errors(cli, args, error):
    # Given one control plane
    cli("config", "add", "prod", "--api-url", "https://tp.example.com", "--token", TOKEN)

    # When I name one that does not exist, or give a bad option, then one line says what is wrong
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [error]


def test_a_ca_certificate_is_kept_by_absolute_path(cli, config_file, tmp_path, monkeypatch):
    # Given a CA certificate named relative to where I am
    (tmp_path / "ca.pem").write_text(Path(certifi.where()).read_text())
    monkeypatch.chdir(tmp_path)

    # When I add a control plane with it
    result = cli("config", "add", "prod", "--api-url", "https://tp", "--token", TOKEN, "--ca-cert", "ca.pem")

    # Then the config holds its absolute path, whatever directory the client runs from later
    assert result.exit_code == 0, result.output
    assert load(config_file).named("prod") == ControlPlane(
        name="prod", api_url="https://tp", token=TOKEN, ca_cert=str(tmp_path / "ca.pem")
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "control_planes:\n  - {name: a, url: http://x}\n",
            "control_planes[0]: unknown key 'url' (known: api_url, ca_cert, name, token)",
        ),
        ("- a\n- b\n", "expected a mapping with 'current' and 'control_planes', not list"),
        ("control_planes: {a: 1}\n", "'control_planes' must be a list, not dict"),
        (
            "control_planes: [[1]]\n",
            "control_planes[0]: expected a mapping of name, api_url, token and ca_cert, not list",
        ),
        (
            "control_planes:\n  - {name: a, api_url: http://x, token: 5}\n",
            "control_planes[0]: 'token' must be a non-empty string",
        ),
        (
            "control_planes:\n  - {name: a, api_url: http://x, token: t, ca_cert: [1]}\n",
            "control_planes[0]: 'ca_cert' must be a file's path",
        ),
        (
            "control_planes:\n  - {name: a, api_url: http://x, token: t}\n  - {name: a, api_url: http://y, token: u}\n",
            "control_planes[1]: a second control plane named 'a'",
        ),
        ("current: [a]\ncontrol_planes: []\n", "'current' must be a control plane's name, not list"),
    ],
    ids=["unknown-key", "list", "planes-mapping", "plane-list", "token-int", "ca-list", "twice", "current-list"],
)
def test_a_malformed_file_is_one_line_error_saying_where(cli, config_file, text, error):
    # Given a config file that is not what the client writes
    config_file.parent.mkdir(parents=True)
    config_file.write_text(text)

    # When I list the control planes, then one line names the file and what in it is wrong
    result = cli("config", "list")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: the client config {config_file} is malformed: {error}"]


def run_threeport(*args: str, env: dict[str, str]) -> "subprocess.CompletedProcess[str]":
    """``python -m cli.main`` as a user runs it (its entry point, not the test runner's)."""
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=root, env={**os.environ, **env}, capture_output=True, text=True
    )


def test_an_error_no_command_foresaw_is_one_line_and_exit_1_not_a_traceback(tmp_path):
    # Given a client config that is not text
    broken = tmp_path / "config.yaml"
    broken.write_bytes(b"\x9b\xff\x00garbage")

    # When a command reads it, then it fails with one line naming the error, and no traceback
    result = run_threeport("config", "list", env={"THREEPORT_CONFIG": str(broken)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: UnicodeDecodeError: ")
    assert "THREEPORT_DEBUG=1 shows where" in result.stderr

    # And with THREEPORT_DEBUG set, the traceback is shown
    debug = run_threeport("config", "list", env={"THREEPORT_CONFIG": str(broken), "THREEPORT_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("worker", "--processes", "0"),
        ("worker", "--metrics-port", "99999"),
        ("api", "--port", "99999"),
        ("worker", "--database-url", "garbage"),
        ("up", "--home", ""),
        ("up", "--home", __file__),
    ],
    ids=["processes", "metrics-port", "api-port", "database-url", "home-empty", "home-file"],
)
def test_counts_ports_urls_and_homes_no_command_could_use_are_usage_errors(args):
    result = run_threeport(*args, env={})
    assert result.returncode == 2
    assert "Invalid value" in result.stderr and "Traceback" not in result.stderr


def test_a_worker_queue_no_kind_uses_is_a_usage_error_naming_the_queues():
    # (it used to create the stream and consume nothing, for ever)
    result = CliRunner().invoke(app, ["worker", "--queues", "aws", "--queues", "workload"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "no kind is reconciled on queue 'workload' (queues: aws, gateways, kubernetes, workloads)" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("wait", "WorkloadInstance", "web", "--timeout", "nan"),
        ("wait", "WorkloadInstance", "web", "--timeout", "-1"),
        ("delete", "WorkloadInstance", "web", "--wait", "--timeout", "inf"),
        ("events", "-n", "99999999999999999999999"),
        ("delete", "WorkloadInstance", "web", "--timeout", "5"),
        ("api", "--graceful-timeout", "-5"),
    ],
)
def test_a_timeout_or_count_no_wait_could_honour_is_a_usage_error(args):
    # (a NaN timeout used to wait for ever; a 23-digit count was a ValueError from islice)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output


@pytest.mark.parametrize("text", ["", "---\n---\n", "# only a comment\n"])
def test_a_manifest_with_no_documents_is_an_error_naming_it(tmp_path, text):
    # (an empty file used to apply nothing, say nothing and exit 0)
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(ManifestError, match=f"{empty}: no documents"):
        read_documents([str(empty)])


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("kind: K\nname: a\nstarts: 2024-01-01\n", "'starts' is a date (2024-01-01), which the API does not take"),
        ("kind: K\nname: a\nat: 2001-12-14 21:59:43\n", "'at' is a timestamp (2001-12-14 21:59:43)"),
        ("kind: K\nname: a\nblob: !!binary aGk=\n", "'blob' is binary data (b'hi')"),
        ("kind: K\nname: a\ntags: !!set {x}\n", "'tags' is a set ({'x'})"),
        ("kind: K\nname: a\nratio: .nan\n", "'ratio' is nan, which JSON cannot carry"),
        ("kind: K\nname: a\nspec: {limit: .inf}\n", "'spec.limit' is inf, which JSON cannot carry"),
        ("kind: K\nname: a\nloop: &l [1, *l]\n", "'loop[1]' contains itself"),
        ("kind: K\nname: a\nlabels: {1: x}\n", "'labels' has the key 1, which is no text"),
        ("kind: K\nname: a\n~: x\n", "the document has the key None, which is no text"),
        ("kind: K\nname: a\nx: " + "[" * 70 + "]" * 70 + "\n", "is nested more than 64 levels deep"),
        ("kind: K\nname: a\nx: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply to read"),
        ("kind: K\nname: a\nname: b\n", "invalid YAML: while reading a mapping"),
        ('{"kind": "K", "name": "a", "name": "b"}', "invalid JSON: the key 'name' is given twice in one object"),
        ('{"kind": "K" "name": "a"}', "invalid JSON: Expecting ',' delimiter: line 1 column 14"),
    ],
    ids=[
        "date",
        "timestamp",
        "binary",
        "set",
        "nan",
        "inf",
        "alias-loop",
        "int-key",
        "null-key",
        "deep",
        "deeper",
        "yaml-duplicate",
        "json-duplicate",
        "json-malformed",
    ],
)
def test_a_manifest_value_json_cannot_carry_is_refused_before_anything_is_written(tmp_path, text, error):
    # Given a file whose first document is fine and whose second holds what the API could not be sent
    path = tmp_path / "app.yaml"
    path.write_text("kind: K\nname: fine\n---\n" + text if not text.startswith("{") else text)

    # When it is read (before any object is written), then one line names the document and the value
    with pytest.raises(ManifestError) as raised:
        read_documents([str(path)])
    message = str(raised.value)
    assert message.startswith(str(path)) and error in message and "\n" not in message.strip()


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"THREEPORT_LOG_LEVEL": "LOUD"}, "error: THREEPORT_LOG_LEVEL: unknown log level 'LOUD': use debug,"),
        ({"THREEPORT_LOG_FORMAT": "xml"}, "error: THREEPORT_LOG_FORMAT: unknown log format 'xml': use one of json"),
    ],
    ids=["level", "format"],
)
def test_a_log_setting_no_process_could_use_is_one_line_before_anything_starts(env, error):
    # (the API's gunicorn workers failed to boot, each with a traceback)
    result = run_threeport("api", "--port", "1", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(error)
