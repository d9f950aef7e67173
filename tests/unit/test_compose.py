"""compose.yaml cannot run here (no Docker engine): check by hand-rolled rules that it names only real things."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from ioc.cli import build_parser
from ioc.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
# Files the operator creates from the documented steps (deploy/mosquitto/README.md), never committed.
OPERATOR_FILES = {"deploy/mosquitto/passwd"}
# Variables compose itself substitutes (secrets from .env); the IOC never reads them.
COMPOSE_SECRETS = {"IOC_DB_PASSWORD", "IOC_MQTT_INGEST_PASSWORD", "IOC_MQTT_SIMULATOR_PASSWORD", "IOC_GRAFANA_PASSWORD"}


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
