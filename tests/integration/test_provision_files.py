"""`ioc devices` and `ioc pki` on real files: modes, written-once credentials, re-runs, conflicts."""

from __future__ import annotations

import csv
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ioc.cli import main
from ioc.provision import accounts, dynsec

pytestmark = pytest.mark.integration


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(*argv: str) -> int:
    return main(list(argv))


def test_provision_single_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    files = ["--passwd", str(pw), "--acl", str(acl)]
    assert run("devices", "provision", "camera", "HP-CAM-1", "--out", str(tmp_path / "one.csv"), *files) == 0
    (tmp_path / "province.csv").write_text("\ufeffkind,device_id,name\ncamera,HP-CAM-1,x\nbts,HP-BTS-1,y\n",
                                           encoding="utf-8")
    assert run("devices", "provision", "--csv", str(tmp_path / "province.csv"), "--out", str(tmp_path / "b.csv"),
               "--broker-url", "mqtts://broker.example.vn:8883", *files) == 0
    assert "1 account(s) created, 1 already provisioned" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "b.csv").open()))
    assert [(r["kind"], r["username"], r["topic_prefix"], r["broker_url"]) for r in rows] == [
        ("bts", "HP-BTS-1", "ioc/v1/bts/HP-BTS-1", "mqtts://broker.example.vn:8883")]
    users = accounts.read_password_file(pw)
    assert accounts.verify_password(rows[0]["password"], users["HP-BTS-1"])
    assert accounts.read_acl_devices(acl.read_text()) == {"HP-CAM-1": "camera", "HP-BTS-1": "bts"}
    assert acl.read_text().startswith(accounts.service_acl())
    for secret in (pw, tmp_path / "one.csv", tmp_path / "b.csv"):
        assert mode(secret) == 0o600, secret

    # Credentials are written once: an existing output file is refused before anything changes.
    before = pw.read_text()
    assert run("devices", "provision", "bts", "HP-BTS-2", "--out", str(tmp_path / "b.csv"), *files) == 2
    assert pw.read_text() == before
    # The same id as another kind is refused; --rotate gives a new password and keeps the ACL as it is.
    assert run("devices", "provision", "traffic", "HP-CAM-1", "--out", str(tmp_path / "c.csv"), *files) == 2
    acl_before = acl.read_text()
    assert run("devices", "provision", "camera", "HP-CAM-1", "--rotate", "--out", str(tmp_path / "r.csv"),
               *files) == 0
    new = next(csv.DictReader((tmp_path / "r.csv").open()))["password"]
    assert accounts.verify_password(new, accounts.read_password_file(pw)["HP-CAM-1"])
    assert acl.read_text() == acl_before


def test_passwd_written_by_us_is_read_by_mosquitto_passwd(tmp_path: Path) -> None:
    """mosquitto_passwd can update the file we write (one format, one file, two tools)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd not installed")
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    accounts.provision([accounts.Device("bts", "HP-1")], pw, acl)
    subprocess.run([tool, "-b", str(pw), "HP-2", "pw2"], check=True, capture_output=True)
    users = accounts.read_password_file(pw)
    assert set(users) == {"HP-1", "HP-2"} and accounts.verify_password("pw2", users["HP-2"])


def test_service_accounts_env(tmp_path: Path) -> None:
    out = tmp_path / "svc.env"
    files = ["--passwd", str(tmp_path / "pw"), "--acl", str(tmp_path / "acl"), "--dynsec", str(tmp_path / "ds.json")]
    assert run("devices", "services", "--out", str(out), *files, "--device-passwd", str(tmp_path / "devices")) == 0
    assert (tmp_path / "devices").read_text() == "" and mode(tmp_path / "devices") == 0o600  # asked for
    names = [line.split("=")[0] for line in out.read_text().splitlines() if not line.startswith("#")]
    # A new ingest account comes with a secret share group (tests/integration/test_broker_front_door.py), a new
    # device store (the dynamic-security plugin's file) with its admin account.
    assert names == ["IOC_MQTT_INGEST_PASSWORD", "IOC_MQTT_LIVE_PASSWORD", "IOC_MQTT_BRAIN_PASSWORD",
                     dynsec.ADMIN_ENV, accounts.SHARE_GROUP_ENV]
    assert mode(out) == mode(tmp_path / "ds.json") == 0o600
    assert set(accounts.read_password_file(tmp_path / "pw")) == {"ioc-ingest", "ioc-live", "ioc-brain"}
    store = (tmp_path / "ds.json").read_text()
    again = tmp_path / "svc2.env"  # a rotation keeps the group (workers' sessions stay subscribed to it) and store
    assert run("devices", "services", "--out", str(again), *files) == 0
    assert accounts.SHARE_GROUP_ENV not in again.read_text() and dynsec.ADMIN_ENV not in again.read_text()
    assert (tmp_path / "ds.json").read_text() == store
    with pytest.raises(accounts.ProvisionError, match="reserved"):
        accounts.check_device("camera", "ioc-ingest-host1")  # a device's client id is its id: not a service's


def test_pki_init_and_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "certs"
    assert run("pki", "init", "--dir", str(d), "--host", "mosquitto", "--host", "10.0.0.5",
               "--client", "ioc-ingest") == 0
    out = capsys.readouterr().out
    assert "created CA" in out and "mosquitto, 10.0.0.5" in out
    ca = (d / "ca.crt").read_bytes()
    assert mode(d / "ca.key") == mode(d / "server.key") == mode(d / "clients" / "ioc-ingest.key") == 0o600
    assert run("pki", "init", "--dir", str(d), "--host", "broker.example.vn") == 0  # keeps the CA
    assert "kept existing CA" in capsys.readouterr().out and (d / "ca.crt").read_bytes() == ca
    assert run("pki", "init", "--dir", str(d), "--host", "bad host") == 2
    assert run("pki", "client", "HP-CAM-1", "--dir", str(d)) == 0
    openssl = shutil.which("openssl")
    if openssl:
        for cert in (d / "server.crt", d / "clients" / "HP-CAM-1.crt"):
            subprocess.run([openssl, "verify", "-CAfile", str(d / "ca.crt"), str(cert)], check=True,
                           capture_output=True)


def test_remove_devices(tmp_path: Path) -> None:
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    devs = [accounts.Device("camera", f"HP-CAM-{i}") for i in range(3)]
    accounts.provision(devs, pw, acl)
    accounts.provision_services(["ioc-ingest"], pw, acl)
    files = ["--passwd", str(pw), "--acl", str(acl)]
    assert run("devices", "remove", "HP-CAM-1", *files) == 0
    assert run("devices", "remove", "HP-CAM-1", "ioc-ingest", *files) == 1  # gone already; services are not devices
    assert set(accounts.read_password_file(pw)) == {"HP-CAM-0", "HP-CAM-2", "ioc-ingest"}
    assert accounts.read_acl_devices(acl.read_text()) == {"HP-CAM-0": "camera", "HP-CAM-2": "camera"}
    assert acl.read_text() == accounts.service_acl() + accounts.device_acl(devs[0]) + accounts.device_acl(devs[2])
