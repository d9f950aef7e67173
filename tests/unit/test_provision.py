"""Device provisioning and MQTT TLS settings: pure parts (file handling is in tests/integration)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from ingest.tls import TlsOptions
from ioc.provision import accounts
from ioc.settings import Settings
from simulators.transport import Broker

pytestmark = pytest.mark.unit

# Written by `mosquitto_passwd -b pw dev1 secret` (Mosquitto 2.0.11).
MOSQUITTO_PASSWD_LINE = ("dev1:$7$101$NlKsl58nnrXWTcOK$8Dl+95a1V2p0BSWmf4JIwHDuOA60BuO4A+K5WseiRc3aGu7aRyX/"
                         "SQJfXMmMm0+AzbM4PlkECgqoT2Zw2ygTmg==")


def test_password_hash_is_mosquitto_passwds_format() -> None:
    hashed = MOSQUITTO_PASSWD_LINE.split(":", 1)[1]
    salt = base64.b64decode(hashed.split("$")[3])
    assert accounts.hash_password("secret", salt=salt) == hashed
    assert accounts.verify_password("secret", hashed)
    assert not accounts.verify_password("Secret", hashed)


def test_new_hashes_use_fresh_salts() -> None:
    a, b = accounts.hash_password("x"), accounts.hash_password("x")
    assert a != b and a.startswith("$7$101$")
    assert accounts.verify_password("x", a) and accounts.verify_password("x", b)


def test_new_passwords_are_long_and_fit_the_files() -> None:
    pw = {accounts.new_password() for _ in range(50)}
    assert len(pw) == 50
    assert all(len(p) >= 32 and ":" not in p and "@" not in p and "/" not in p for p in pw)


@pytest.mark.parametrize(("kind", "device_id", "why"), [
    ("drone", "HP-1", "unknown kind"),
    ("camera", "HP/1", "must match"),
    ("camera", "HP-+", "must match"),
    ("camera", "#", "must match"),
    ("camera", "", "must match"),
    ("camera", "a" * 65, "must match"),
    ("bts", "ioc-ingest", "service account"),
])
def test_bad_devices_are_refused(kind: str, device_id: str, why: str) -> None:
    with pytest.raises(accounts.ProvisionError, match=why):
        accounts.check_device(kind, device_id)


def test_device_csv() -> None:
    text = "kind,device_id,name,lat\ncamera,HP-CAM-1,Cầu Rào,20.8\n\n bts , HP-BTS-1 ,x,1\n"
    assert accounts.read_device_csv(text) == [accounts.Device("camera", "HP-CAM-1"),
                                               accounts.Device("bts", "HP-BTS-1")]


@pytest.mark.parametrize(("text", "why"), [
    ("camera,HP-1\n", "header"),
    ("kind,id\ncamera,HP-1\n", "header"),
    ("kind,device_id\ncamera,HP-1\nbts,HP-1\n", "line 3: device id HP-1 appears twice"),
    ("kind,device_id\ncamera,HP 1\n", "line 2"),
    ("kind,device_id\nsiren,HP-1\n", "line 2: unknown kind"),
])
def test_bad_device_csv(text: str, why: str) -> None:
    with pytest.raises(accounts.ProvisionError, match=why):
        accounts.read_device_csv(text)


def test_acl_blocks_round_trip() -> None:
    devs = [accounts.Device("camera", "HP-CAM-1"), accounts.Device("traffic", "HP.TR_2")]
    text = accounts.service_acl() + "".join(accounts.device_acl(d) for d in devs)
    assert accounts.read_acl_devices(text) == {"HP-CAM-1": "camera", "HP.TR_2": "traffic"}
    assert accounts.device_acl(devs[1]) == ("user HP.TR_2\ntopic write ioc/v1/traffic/HP.TR_2/event\n"
                                            "topic write ioc/v1/traffic/HP.TR_2/status\n"
                                            "topic write ioc/v1/traffic/HP.TR_2/telemetry\n")
    assert "/#" not in accounts.device_acl(devs[0]) and "HP-CAM-1/snapshot\n" in accounts.device_acl(devs[0])


def test_blocks_granting_a_whole_prefix_are_read_and_narrowed(tmp_path: Path) -> None:
    """Blocks written before (``.../#``: any sub-topic, retained ones included) are still known, removed, and
    narrowed to the channels when the file is next written; hand-written lines stay as they are."""
    legacy = ("user HP-CAM-1\ntopic write ioc/v1/camera/HP-CAM-1/#\n"
              "user mine\ntopic write ioc/v1/camera/other/#\n"  # not a block of ours: id and topic differ
              "user HP-B-1\ntopic write ioc/v1/bts/HP-B-1/#")
    assert accounts.read_acl_devices(legacy) == {"HP-CAM-1": "camera", "HP-B-1": "bts"}
    text, narrowed = accounts.narrow_acl(accounts.service_acl() + legacy)
    mine = "user mine\ntopic write ioc/v1/camera/other/#\n"
    cam, bts = accounts.Device("camera", "HP-CAM-1"), accounts.Device("bts", "HP-B-1")
    assert narrowed == 2
    assert text == accounts.service_acl() + accounts.device_acl(cam) + mine + accounts.device_acl(bts)
    assert accounts.narrow_acl(text) == (text, 0)
    acl, pw = tmp_path / "acl", tmp_path / "passwd"
    acl.write_text(accounts.service_acl() + legacy)
    accounts.provision([accounts.Device("traffic", "HP-T-1")], pw, acl)
    assert acl.read_text() == text + accounts.device_acl(accounts.Device("traffic", "HP-T-1"))
    acl.write_text(legacy)
    assert accounts.remove(["HP-CAM-1"], pw, acl) == ["HP-CAM-1"]
    assert acl.read_text() == mine + "user HP-B-1\ntopic write ioc/v1/bts/HP-B-1/#"


def test_service_accounts_are_least_privilege() -> None:
    """Only the simulator writes; nobody but the ingest reads beyond the device topics (its health check)."""
    for name, acct in accounts.SERVICE_ACCOUNTS.items():
        writes = [line for line in acct.acl if line.startswith("topic write")]
        assert (name == "ioc-simulator") == bool(writes), name
        assert all(line.split()[1] in ("read", "write") for line in acct.acl)
    assert "ioc-simulator" not in accounts.PRODUCTION_SERVICES


def test_settings_mqtts() -> None:
    s = Settings(mqtt_url="mqtts://ioc-live:pw@broker.example.vn")
    s.mqtt.ca_file = "/etc/ioc/ca.crt"
    assert (s.mqtt_host, s.mqtt_port) == ("broker.example.vn", 8883)
    assert s.mqtt_tls == TlsOptions("/etc/ioc/ca.crt")
    assert s.mqtt_credentials == ("ioc-live", "pw")
    plain = Settings(mqtt_url="mqtt://127.0.0.1")
    assert plain.mqtt_port == 1883 and plain.mqtt_tls is None


def test_bad_broker_url_does_not_echo_the_password() -> None:
    with pytest.raises(ValidationError) as err:
        Settings(mqtt_url="http://user:hunter2@broker:8883")
    assert "hunter2" not in str(err.value)


def test_simulator_broker_url() -> None:
    b = Broker.from_url("mqtts://ioc-simulator:pw@mosquitto", TlsOptions("/run/ca.crt"))
    assert (b.host, b.port, b.username, b.tls) == ("mosquitto", 8883, "ioc-simulator", TlsOptions("/run/ca.crt"))
    assert Broker.from_url("mqtts://h").tls == TlsOptions()  # the system's CA store
    assert Broker.from_url("mqtt://h", TlsOptions("/ca")).tls is None


@pytest.mark.parametrize("command", ["provision", "remove"])
def test_a_device_csv_that_is_not_utf8_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        command: str) -> None:
    """A spreadsheet saved as UTF-16 ended ``ioc devices provision --csv`` with a UnicodeDecodeError traceback."""
    from ioc import cli

    sheet = tmp_path / "devices.csv"
    sheet.write_bytes("kind,device_id\nbts,HD-BTS-1\n".encode("utf-16"))
    args = ["devices", command, "--csv", str(sheet), "--dynsec", str(tmp_path / "dynsec.json")]
    assert cli.main(args + (["--out", str(tmp_path / "creds.txt")] if command == "provision" else [])) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "creds.txt").exists()
