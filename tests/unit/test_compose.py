"""compose.yaml cannot run here (no Docker engine): check by hand-rolled rules that it names only real things."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from ioc.cli import build_parser
from ioc.provision.accounts import SERVICE_ACCOUNTS, SHARE_GROUP_ENV, service_acl
from ioc.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
# Files the operator creates from the documented steps (deploy/mosquitto/README.md), never committed.
OPERATOR_FILES = {"deploy/mosquitto/passwd", "deploy/mosquitto/passwd-services", "deploy/mosquitto/certs",
                  "deploy/mosquitto/certs/ca.crt"}
# Variables compose itself substitutes (secrets from .env); the IOC never reads them.
COMPOSE_SECRETS = {"IOC_DB_PASSWORD", "IOC_GRAFANA_PASSWORD", "IOC_NATS_PASSWORD",
                   SHARE_GROUP_ENV, *(a.env for a in SERVICE_ACCOUNTS.values())}


def setting_names(model: type[BaseModel] = Settings, prefix: str = "IOC_") -> set[str]:
    """Every environment variable the settings object reads."""
    names = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names |= setting_names(ann, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_every_ioc_variable_is_a_setting() -> None:
    known = setting_names()
    for name, service in COMPOSE["services"].items():
        for var in service_env(service):
            if var.startswith("IOC_") and service.get("build"):
                assert var in known, f"{name}: {var} is not read by ioc.settings.Settings"


def test_ioc_services_run_real_commands() -> None:
    parser = build_parser()
    for name, service in COMPOSE["services"].items():
        if service.get("build"):
            args = parser.parse_args(service["command"])  # SystemExit here means an unknown command/flag
            assert args.command, name


def test_volumes_ports_and_mounted_files_exist() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in COMPOSE["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                rel = source[2:]
                assert (ROOT / rel).exists() or rel in OPERATOR_FILES, f"{name}: missing {rel}"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
        for dep in service.get("depends_on", {}):
            assert dep in COMPOSE["services"], f"{name} depends on unknown {dep}"
    api = COMPOSE["services"]["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert any(p.endswith(f":{port}") for p in api["ports"])
    health = " ".join(COMPOSE["services"]["ingest"]["healthcheck"]["test"])
    metrics_port = COMPOSE["services"]["ingest"]["command"][COMPOSE["services"]["ingest"]["command"]
                                                           .index("--metrics-port") + 1]
    assert f":{metrics_port}/metrics" in health


def test_broker_config_keeps_the_no_loss_limits() -> None:
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    for line in ("persistence true", "allow_anonymous false"):
        assert re.search(rf"^{line}$", conf, re.M), line
    # Queues bounded (no session may take the broker's memory) yet deep enough for ~50 min of a province.
    messages = int(re.search(r"^max_queued_messages (\d+)$", conf, re.M)[1])  # type: ignore[index]
    size = int(re.search(r"^max_queued_bytes (\d+)$", conf, re.M)[1])  # type: ignore[index]
    assert 3000 * 50 * 60 <= messages < 10**9 and 2**30 <= size < 2**40


def test_compose_substitutions_are_documented() -> None:
    used = set(re.findall(r"\$\{(IOC_[A-Z0-9_]+)", (ROOT / "compose.yaml").read_text()))
    example = (ROOT / ".env.example").read_text()
    for var in used:
        assert var in setting_names() | COMPOSE_SECRETS, var
        assert re.search(rf"^#?\s*{var}=", example, re.M), f"{var} missing from .env.example"


def test_env_example_lists_only_real_settings() -> None:
    known = setting_names() | COMPOSE_SECRETS
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"#?\s*(IOC_[A-Z0-9_]+)=", line)
        if match:
            assert match[1] in known, match[1]


def test_env_example_lists_every_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    missing = sorted(n for n in setting_names() if not re.search(rf"^#?\s*{n}=", example, re.M))
    assert not missing, f"settings missing from .env.example: {missing}"


# --- Credentials: every service that talks to the database or the broker can actually log in ----------------

#: What each ``ioc`` command talks to. Every command of the CLI must be listed (a test checks), so a new
#: command run by a compose service cannot be forgotten: "db", "broker-read", "broker-write" or "nats".
COMMAND_NEEDS: dict[str, set[str]] = {
    "db": {"db"}, "ingest": {"db", "broker-read"}, "serve": {"db"}, "simulate": {"broker-write"},
    "analytics-worker": {"db", "nats"},
    "history": {"db"}, "dashboards": {"db"}, "users": {"db"}, "tokens": {"db"},
    "demo": set(),  # starts or finds its own services
    "camera-check": set(), "detect": set(), "pki": set(), "devices": set(),
}


def command_needs(args: argparse.Namespace, settings: Settings) -> set[str]:
    """What a parsed command needs, given the settings it will run with."""
    needs = set(COMMAND_NEEDS[args.command])
    if args.command == "serve" and (settings.live.listen_mqtt or getattr(args, "ingest", False)):
        needs.add("broker-read")  # the live listener (wall, detectors, alerts) or an embedded ingest worker
    if args.command in ("ingest", "serve") and settings.partition.nats_url:
        needs.add("nats")  # ingest feeds the stream; the brain reads the workers' findings from it
    return needs


def substituted(value: str) -> str:
    """Compose's ${VAR:?err} -> a marker naming VAR; ${VAR:-default} -> default."""
    value = re.sub(r"\$\{([A-Z0-9_]+):-([^}]*)\}", lambda m: m[2], value)
    return re.sub(r"\$\{([A-Z0-9_]+)(:?\?[^}]*)?\}", lambda m: f"FROM-{m[1]}", value)


def broker_listeners() -> dict[int, tuple[str | None, bool]]:
    """port -> (bind address, TLS?) of the shipped mosquitto.conf."""
    listeners: dict[int, tuple[str | None, bool]] = {}
    port = None
    for line in (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines():
        words = line.split()
        if words[:1] == ["listener"]:
            port = int(words[1])
            listeners[port] = (words[2] if len(words) > 2 else None, False)
        elif words[:1] == ["certfile"] and port is not None:
            listeners[port] = (listeners[port][0], True)
    return listeners


def acl_lines(user: str) -> set[str]:
    acl = (ROOT / "deploy/mosquitto/acl").read_text()
    block = re.search(rf"^user {re.escape(user)}\n((?:topic .*\n)+)", acl, re.M)
    return set(block[1].splitlines()) if block else set()


def mounted(service: dict[str, Any], container_path: str) -> bool:
    return any(m.split(":")[1] == container_path or container_path.startswith(m.split(":")[1].rstrip("/") + "/")
               for m in service.get("volumes", []) if m.split(":")[0].startswith("./"))


def test_every_command_declares_what_it_talks_to() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) <= set(COMMAND_NEEDS), f"add to COMMAND_NEEDS: {sorted(set(commands) - set(COMMAND_NEEDS))}"


def test_services_have_the_credentials_their_commands_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """Derived from each service's command: a DB user with a password, a broker account allowed to do what the
    command does (its password from that account's own .env variable), TLS to a TLS listener with the CA
    mounted. Catches e.g. an API without broker credentials: a wall, detectors and alerts that get nothing."""
    parser = build_parser()
    listeners = broker_listeners()
    services = COMPOSE["services"]
    checked = 0
    for name, service in services.items():
        if not service.get("build"):
            continue
        env = {k: substituted(str(v)) for k, v in service_env(service).items()}
        for var in [v for v in list(__import__("os").environ) if v.startswith("IOC_")]:
            monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        settings = Settings()
        args = parser.parse_args(service["command"])
        needs = command_needs(args, settings)
        if "db" in needs:
            db = urlsplit(settings.database_url)
            assert db.hostname in services, f"{name}: database host {db.hostname} is not a compose service"
            assert db.username and (db.password or "").startswith("FROM-"), \
                f"{name}: {args.command} needs the database but IOC_DATABASE_URL has no user/password from .env"
        if "nats" in needs:
            nats = urlsplit(settings.partition.nats_url or "")
            assert nats.hostname in services, f"{name}: {args.command} needs NATS (IOC_PARTITION__NATS_URL)"
            assert nats.username == NATS_USER and nats.password == "FROM-IOC_NATS_PASSWORD", \
                f"{name}: the NATS account must be {NATS_USER} with the password from IOC_NATS_PASSWORD"
        broker = {n for n in needs if n.startswith("broker")}
        if broker:
            user, password = settings.mqtt_credentials
            where = f"{name} ({args.command})"
            assert user and password, f"{where} talks to the broker but has no MQTT account"
            assert user in SERVICE_ACCOUNTS, f"{where}: {user} is not a service account"
            assert password == f"FROM-{SERVICE_ACCOUNTS[user].env}", \
                f"{where}: the password of {user} must come from {SERVICE_ACCOUNTS[user].env}"
            for need in broker:
                right = "read" if need == "broker-read" else "write"
                assert f"topic {right} ioc/v1/#" in acl_lines(user), f"{where}: the ACL lets {user} not {right}"
            assert settings.mqtt_host in services, f"{where}: broker host {settings.mqtt_host} is not a service"
            bind, tls = listeners.get(settings.mqtt_port, (None, False))
            assert settings.mqtt_port in listeners and bind not in ("127.0.0.1", "localhost"), \
                f"{where}: the broker does not listen on {settings.mqtt_port} for other containers"
            assert (settings.mqtt_tls is not None) == tls, f"{where}: TLS must match the broker's listener"
            if settings.mqtt_tls is not None:
                assert settings.mqtt_tls.ca_file and mounted(service, settings.mqtt_tls.ca_file), \
                    f"{where}: CA file {settings.mqtt_tls.ca_file} is not mounted"
        checked += bool(needs)
    assert checked >= 4


NATS_USER = "ioc"


def test_nats_runs_jetstream_with_the_account_the_services_use() -> None:
    nats = COMPOSE["services"]["nats"]
    conf_mount = next(m for m in nats["volumes"] if m.startswith("./deploy/nats/"))
    source, target = conf_mount.split(":")[:2]
    assert target in nats["command"], "the server is not started with the mounted configuration"
    conf = (ROOT / source[2:]).read_text()
    store = re.search(r"^jetstream\s*\{[^}]*store_dir:\s*(\S+)", conf, re.M | re.S)
    assert store, "JetStream is not enabled"
    assert any(m.split(":")[1] == store[1] for m in nats["volumes"] if not m.startswith("./")), \
        "the stream's store is not on a volume"
    assert re.search(rf"^\s*user:\s*{NATS_USER}$", conf, re.M)
    assert re.search(r"^\s*password:\s*\$IOC_NATS_PASSWORD$", conf, re.M)
    assert substituted(service_env(nats)["IOC_NATS_PASSWORD"]) == "FROM-IOC_NATS_PASSWORD"
    port = urlsplit(substituted(COMPOSE["x-partition-env"]["IOC_PARTITION__NATS_URL"])).port
    assert re.search(rf"^port:\s*{port}\b", conf, re.M)
    health = " ".join(nats["healthcheck"]["test"])
    http = re.search(r"^http_port:\s*(\d+)", conf, re.M)
    assert http and f":{http[1]}/healthz" in health


def test_topology_of_the_issue() -> None:
    """Two API replicas, a brain and its standby, ingest and analytics workers scalable, one stream for all."""
    parser = build_parser()
    services = COMPOSE["services"]
    roles: dict[str, list[str]] = {}
    for name, service in services.items():
        if service.get("build"):
            args = parser.parse_args(service["command"])
            role = getattr(args, "role", None)
            roles.setdefault(f"{args.command}:{role}" if role else args.command, []).append(name)
    assert len(roles["serve:api"]) >= 2
    brains = [services[n] for n in roles["serve:brain"]]
    assert sum(b.get("deploy", {}).get("replicas", 1) for b in brains) >= 2
    for name in (*roles["ingest"], *roles["analytics-worker"]):
        service = services[name]  # `--scale` needs no fixed name, host port or client id
        assert "container_name" not in service and "ports" not in service, name
        assert "IOC_MQTT__CLIENT_ID" not in service_env(service), name
    streams = {(service_env(services[n]).get("IOC_PARTITION__NATS_URL"), service_env(services[n]).get(
        "IOC_PARTITION__STREAM")) for n in (*roles["ingest"], *roles["analytics-worker"], *roles["serve:brain"])}
    assert len(streams) == 1 and None not in next(iter(streams)), \
        f"ingest, analytics workers and the brain must share one stream: {streams}"


def test_shipped_broker_is_tls_only_for_the_network() -> None:
    listeners = broker_listeners()
    assert listeners.get(8883, (None, False))[1], "no TLS listener on 8883"
    for port, (bind, tls) in listeners.items():
        assert tls or bind == "127.0.0.1", f"plaintext listener {port} open beyond the container's loopback"
    published = [p for p in COMPOSE["services"]["mosquitto"].get("ports", [])]
    assert all(str(p).split(":")[-1] in {str(port) for port, (_, tls) in listeners.items() if tls}
               for p in published), published


def listener_options() -> dict[int, dict[str, str]]:
    """port -> {option: value} of the shipped mosquitto.conf's listeners."""
    options: dict[int, dict[str, str]] = {}
    port = None
    for line in (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines():
        words = line.split(None, 1)
        if words[:1] == ["listener"]:
            port = int(words[1].split()[0])
            options[port] = {}
        elif port is not None and len(words) == 2 and not words[0].startswith("#"):
            options[port][words[0]] = words[1].strip()
    return options


def test_devices_cannot_reach_the_services_listener() -> None:
    """The published (device) listener ties each client id to its account; the services dial a listener only the
    service accounts log in on (docs/broker-security.md, "What a hostile device can do")."""
    options = listener_options()
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    assert re.search(r"^per_listener_settings true$", conf, re.M)
    published = {int(str(p).split(":")[-1]) for p in COMPOSE["services"]["mosquitto"].get("ports", [])}
    for port in published:
        assert options[port].get("use_username_as_clientid") == "true", port
    for name, service in COMPOSE["services"].items():
        env = {**COMPOSE["x-ioc-env"], **service_env(service)} if service.get("build") else {}
        url = env.get("IOC_MQTT_URL")
        if url:
            port = urlsplit(substituted(url)).port
            assert port not in published, f"{name} dials the device listener"
            assert options[port]["password_file"].endswith("/passwd-services"), name
            assert "use_username_as_clientid" not in options[port], name


def test_shipped_acl_is_what_provisioning_writes() -> None:
    """deploy/mosquitto/acl is the service block `ioc devices provision` appends devices to."""
    assert (ROOT / "deploy/mosquitto/acl").read_text() == service_acl()
