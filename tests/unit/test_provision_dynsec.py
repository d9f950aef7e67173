"""The dynamic-security plugin's file as ``ioc devices`` writes it (the broker's side: test_broker_subscribe_limits)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest

from ioc.cli import main
from ioc.provision import accounts, dynsec

pytestmark = pytest.mark.unit


def login(config: dict, user: str, password: str) -> bool:
    """What the plugin checks at CONNECT: PBKDF2-HMAC-SHA512 of the password with the client's salt."""
    client = next(c for c in config["clients"] if c["username"] == user)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(client["salt"]), client["iterations"])
    return base64.b64encode(digest).decode() == client["password"]


def test_new_file_holds_only_the_admin_and_denies_by_default(tmp_path: Path) -> None:
    path = tmp_path / "dynsec" / "dynamic-security.json"
    password = dynsec.init_file(path)
    assert password and dynsec.init_file(path) is None  # kept as it is
    config = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and login(config, dynsec.ADMIN, password)
    assert config["defaultACLAccess"] == dict.fromkeys(
        ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe"), False)
    assert {a["topic"] for a in config["roles"][0]["acls"]} <= {dynsec.CONTROL_TOPIC, dynsec.RESPONSE_TOPIC}


def test_devices_publish_on_their_channels_and_subscribe_to_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    dynsec.init_file(path)
    cam, bts = accounts.Device("camera", "HP-CAM-1"), accounts.Device("bts", "HP-BTS-1")
    result = dynsec.provision_file([cam, bts], path)
    config = json.loads(path.read_text())
    roles = {r["rolename"]: r["acls"] for r in config["roles"]}
    assert [(a["acltype"], a["topic"]) for a in roles["HP-CAM-1"]] == [
        ("publishClientSend", f"ioc/v1/camera/HP-CAM-1/{ch}") for ch in ("event", "snapshot", "status", "telemetry")]
    assert all(a["acltype"] == "publishClientSend" for r, acls in roles.items() if r != dynsec.ADMIN for a in acls)
    assert dynsec.file_devices(config) == {"HP-CAM-1": "camera", "HP-BTS-1": "bts"}
    assert all(login(config, dev.device_id, pw) for dev, pw in result.created)

    # Idempotent; --rotate changes only the password; another kind is refused before anything is written.
    assert dynsec.provision_file([cam], path).kept == [cam]
    (_, new), = dynsec.provision_file([cam], path, rotate=True).created
    config = json.loads(path.read_text())
    assert login(config, "HP-CAM-1", new) and roles == {r["rolename"]: r["acls"] for r in config["roles"]}
    before = path.read_text()
    with pytest.raises(accounts.ProvisionError, match="already provisioned as camera"):
        dynsec.provision_file([accounts.Device("traffic", "HP-CAM-1"), accounts.Device("bts", "HP-BTS-9")], path)
    assert path.read_text() == before
    config["clients"].append({"username": "HP-OPS", "roles": []})  # an account written by hand, not a device's
    path.write_text(json.dumps(config))
    with pytest.raises(accounts.ProvisionError, match="not a device's"):
        dynsec.provision_file([accounts.Device("bts", "HP-OPS")], path)
    assert dynsec.remove_file(["HP-CAM-1", "nope", dynsec.ADMIN], path) == ["HP-CAM-1"]
    assert dynsec.file_devices(json.loads(path.read_text())) == {"HP-BTS-1": "bts"}
    assert dynsec.ADMIN in {c["username"] for c in json.loads(path.read_text())["clients"]}


def test_migrate_keeps_device_passwords(tmp_path: Path) -> None:
    """`ioc devices migrate`: accounts of the password file move to the plugin, their passwords unchanged."""
    pw, acl, store = tmp_path / "passwd", tmp_path / "acl", tmp_path / "ds.json"
    created = accounts.provision([accounts.Device("traffic", "HP-TR-1"), accounts.Device("bts", "HP-BTS-2")], pw, acl)
    accounts.provision_services(["ioc-ingest"], pw, acl)  # a service account in the same file is not a device
    args = ["devices", "migrate", "--passwd", str(pw), "--acl", str(acl), "--dynsec", str(store)]
    assert main(args) == 2 and not store.exists()  # a new plugin file needs somewhere to put the admin's password
    assert main([*args, "--out", str(tmp_path / "admin.env")]) == 0
    admin = (tmp_path / "admin.env").read_text().split(f"{dynsec.ADMIN_ENV}=")[1].strip()
    assert login(json.loads(store.read_text()), dynsec.ADMIN, admin)
    config = json.loads(store.read_text())
    assert dynsec.file_devices(config) == {"HP-TR-1": "traffic", "HP-BTS-2": "bts"}
    assert all(login(config, dev.device_id, password) for dev, password in created.created)
    before = store.read_text()
    assert main(args) == 0 and store.read_text() == before  # again: nothing to move


def test_the_cli_writes_the_plugins_file_by_default(tmp_path: Path) -> None:
    store = tmp_path / "ds.json"
    files = ["--dynsec", str(store)]
    assert main(["devices", "provision", "camera", "HP-CAM-7", "--out", str(tmp_path / "a.csv"), *files]) == 2
    dynsec.init_file(store)  # `ioc devices services` creates it
    assert main(["devices", "provision", "camera", "HP-CAM-7", "--out", str(tmp_path / "a.csv"), *files]) == 0
    password = (tmp_path / "a.csv").read_text().splitlines()[1].split(",")[3]
    assert login(json.loads(store.read_text()), "HP-CAM-7", password)
    assert main(["devices", "remove", "HP-CAM-7", *files]) == 0
    assert main(["devices", "remove", "HP-CAM-7", *files]) == 1
