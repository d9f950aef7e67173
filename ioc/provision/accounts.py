"""Broker accounts: one per device, a few least-privilege service accounts, in Mosquitto's own file formats.

Password file lines are ``user:$7$101$<salt>$<hash>``: PBKDF2-HMAC-SHA512 with a 12-byte salt, the format
``mosquitto_passwd`` (Mosquitto 2.x) writes, computed with the standard library so a province's thousands
of devices are provisioned in one pass (tests/integration/test_broker_security.py checks a real
Mosquitto accepts it). 101 iterations is what ``mosquitto_passwd`` uses; the passwords are 192-bit random
tokens, so the iteration count protects nothing, while a higher one would cost the broker CPU on every
connect of every device after an outage.

The ACL file gets one block per device, appended (existing lines, hand-written ones included, are kept)::

    user HP-CAM-0001
    topic write ioc/v1/camera/HP-CAM-0001/event
    topic write ioc/v1/camera/HP-CAM-0001/snapshot
    topic write ioc/v1/camera/HP-CAM-0001/status
    topic write ioc/v1/camera/HP-CAM-0001/telemetry

so a device publishes only on the channels the contract accepts for its kind and id (its retained last will
included: it is its ``status`` topic) and reads nothing. Blocks written before granted the whole prefix
(``ioc/v1/<kind>/<id>/#``), so a device could leave retained messages on any number of sub-topics (each one
sent to every fresh subscriber and quarantined as ``bad_topic``: 50,000 delayed a fresh start by 1.8 s):
:func:`provision` narrows such blocks to the channels whenever it writes the file.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ingest.contract import CHANNELS_BY_KIND, DEVICE_ID_RE, KINDS, SUBSCRIPTION, TOPIC_PREFIX

logger = logging.getLogger(__name__)

ITERATIONS = 101
SALT_BYTES = 12


class ProvisionError(ValueError):
    """Bad input (kind, id, CSV) or a conflict with what the files already hold."""


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A machine account of the IOC itself."""

    username: str
    env: str  # the .env variable compose.yaml reads its password from
    acl: tuple[str, ...]
    note: str


#: Least privilege: readers read, the test simulator writes, nobody else does either.
SERVICE_ACCOUNTS: dict[str, ServiceAccount] = {a.username: a for a in (
    ServiceAccount("ioc-ingest", "IOC_MQTT_INGEST_PASSWORD",
                   (f"topic read {SUBSCRIPTION}", f"topic read $share/ioc-ingest/{SUBSCRIPTION}",
                    "topic read $SYS/broker/uptime"),
                   "ingest workers: read every device topic (shared subscription, persistent session); "
                   "the broker's uptime is the compose health check"),
    ServiceAccount("ioc-live", "IOC_MQTT_LIVE_PASSWORD", (f"topic read {SUBSCRIPTION}",),
                   "API live listener (wall, detectors, alerts): read all, clean session, QoS 0"),
    ServiceAccount("ioc-brain", "IOC_MQTT_BRAIN_PASSWORD", (f"topic read {SUBSCRIPTION}",),
                   "analytics/alert services running apart from the API: read all"),
    ServiceAccount("ioc-simulator", "IOC_MQTT_SIMULATOR_PASSWORD", (f"topic write {SUBSCRIPTION}",),
                   "the device simulator: write as any device. Test and demo brokers only"),
)}
PRODUCTION_SERVICES = ("ioc-ingest", "ioc-live", "ioc-brain")
#: Client ids (and account names) of the IOC's own processes start with this; no device id may, because on the
#: device listener a device's client id is its id (``use_username_as_clientid``) and client ids are broker-wide.
SERVICE_PREFIX = "ioc-"
#: The .env variable compose reads the ingest workers' shared-subscription group from (docs/broker-security.md).
SHARE_GROUP_ENV = "IOC_MQTT_INGEST_SHARE_GROUP"


@dataclass(frozen=True, slots=True)
class Device:
    """One device to provision."""

    kind: str
    device_id: str

    @property
    def topic_prefix(self) -> str:
        return f"{TOPIC_PREFIX}/{self.kind}/{self.device_id}"


def check_device(kind: str, device_id: str) -> Device:
    """Validate a (kind, id) pair against the device API; raise ProvisionError."""
    kind, device_id = kind.strip(), device_id.strip()
    if kind not in KINDS:
        raise ProvisionError(f"unknown kind {kind!r} (one of {', '.join(sorted(KINDS))})")
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise ProvisionError(f"device id {device_id!r} must match {DEVICE_ID_RE.pattern}")
    if device_id in SERVICE_ACCOUNTS:
        raise ProvisionError(f"{device_id!r} is a service account name")
    if device_id.lower().startswith(SERVICE_PREFIX):
        raise ProvisionError(f"device id {device_id!r} starts with {SERVICE_PREFIX!r}, reserved for the IOC's "
                             "own client ids")
    return Device(kind, device_id)


def read_device_csv(text: str) -> list[Device]:
    """Devices from a CSV with a header naming at least ``kind`` and ``device_id`` (other columns ignored)."""
    reader = csv.DictReader(io.StringIO(text))
    fields = {f.strip() for f in reader.fieldnames or []}
    if not {"kind", "device_id"} <= fields:
        raise ProvisionError("the CSV needs a header row with the columns kind,device_id")
    devices: list[Device] = []
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # blank line
        try:
            dev = check_device(row.get("kind") or "", row.get("device_id") or "")
        except ProvisionError as err:
            raise ProvisionError(f"line {line}: {err}") from None
        if dev.device_id in seen:
            raise ProvisionError(f"line {line}: device id {dev.device_id} appears twice")
        seen.add(dev.device_id)
        devices.append(dev)
    return devices


def new_password() -> str:
    """A random password (192 bits, URL-safe: no ':' so it fits URLs and the password file)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """Mosquitto 2.x's ``$7$`` password hash."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (tests; Mosquitto does its own)."""
    match = re.fullmatch(r"\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", hashed)
    if match is None:
        return False
    salt, want = base64.b64decode(match[2]), base64.b64decode(match[3])
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(match[1])), want)


def read_password_file(path: Path) -> dict[str, str]:
    """username -> hash, in file order (missing file: empty)."""
    users: dict[str, str] = {}
    if path.exists():
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#") and ":" in line:
                user, hashed = line.split(":", 1)
                users[user] = hashed
    return users


def _write_private(path: Path, text: str, exclusive: bool = False) -> None:
    """Write ``text`` with mode 0600 (an existing file's mode is kept); atomic unless ``exclusive``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", newline="") as out:
            out.write(text)
        return
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """Rewrite the password file atomically (Mosquitto reads it at start and on SIGHUP)."""
    _write_private(path, "".join(f"{u}:{h}\n" for u, h in users.items()))


def service_acl() -> str:
    """The service accounts' ACL block (the start of every ACL file this module writes)."""
    out = ["# Mosquitto ACL of the IOC. Service accounts (docs/broker-security.md); devices are appended",
           "# by `ioc devices provision`. Anything not allowed here is denied.", ""]
    for acct in SERVICE_ACCOUNTS.values():
        out += [f"# {acct.note}", f"user {acct.username}", *acct.acl, ""]
    out += ["# Devices: each account may publish only under its own kind and id.", ""]
    return "\n".join(out)


def device_acl(dev: Device) -> str:
    """The ACL block of one device: a write line per channel of its kind."""
    return "".join([f"user {dev.device_id}\n"] + [f"topic write {dev.topic_prefix}/{channel}\n"
                                                   for channel in sorted(CHANNELS_BY_KIND[dev.kind])])


_WRITE = r"topic write " + re.escape(TOPIC_PREFIX) + r"/(\w+)/([^/\s]+)/(#|\w+)"
#: A device block: its user line, then its write lines (one per channel; written before: one for the prefix).
_DEVICE_BLOCK = re.compile(r"^user (\S+)[ \t]*\n((?:" + _WRITE + r"[ \t]*(?:\n|\Z))+)", re.M)
_WRITE_LINE = re.compile(_WRITE)


def _block_device(block: re.Match[str]) -> tuple[str, str, bool] | None:
    """(device id, kind, whole prefix granted) of a block this module wrote, else None."""
    writes = [_WRITE_LINE.match(line.strip()) for line in block[2].splitlines() if line.strip()]
    found = {(w[1], w[2]) for w in writes if w}
    if len(found) != 1 or len(writes) != sum(1 for w in writes if w):
        return None
    kind, device_id = found.pop()
    if device_id != block[1]:
        return None
    return device_id, kind, any(w[3] == "#" for w in writes if w)


def read_acl_devices(text: str) -> dict[str, str]:
    """device id -> kind for the device blocks an ACL file holds."""
    return {dev[0]: dev[1] for m in _DEVICE_BLOCK.finditer(text) if (dev := _block_device(m))}


def narrow_acl(text: str) -> tuple[str, int]:
    """``text`` with the device blocks that grant a whole prefix (``.../#``) narrowed to the device's channels;
    (new text, blocks narrowed). Other lines are kept as they are."""
    narrowed = 0

    def one(m: re.Match[str]) -> str:
        nonlocal narrowed
        dev = _block_device(m)
        if dev is None or not dev[2] or dev[1] not in CHANNELS_BY_KIND:
            return m[0]
        narrowed += 1
        return device_acl(Device(dev[1], dev[0]))

    return _DEVICE_BLOCK.sub(one, text), narrowed


@dataclass(slots=True)
class ProvisionResult:
    """What a provisioning run did."""

    created: list[tuple[Device, str]]  # (device, new password)
    kept: list[Device]  # already provisioned, left alone


def provision(devices: Iterable[Device], passwd: Path, acl: Path, rotate: bool = False) -> ProvisionResult:
    """Create accounts (password file) and ACL blocks for ``devices``.

    Args:
        devices: validated devices.
        passwd: Mosquitto password file (created 0600 if missing).
        acl: Mosquitto ACL file (created with the service accounts' block if missing).
        rotate: give already provisioned devices a new password (otherwise they are kept as they are).

    Raises:
        ProvisionError: a device id is already provisioned as another kind.
    """
    users = read_password_file(passwd)
    acl_text, narrowed = narrow_acl(acl.read_text()) if acl.exists() else (service_acl(), 0)
    if narrowed:
        logger.info("%d device ACL block(s) narrowed from the whole prefix to the channels", narrowed)
    known = read_acl_devices(acl_text)
    result = ProvisionResult([], [])
    appended: list[str] = []
    for dev in devices:
        if known.get(dev.device_id, dev.kind) != dev.kind:
            raise ProvisionError(f"{dev.device_id} is already provisioned as a {known[dev.device_id]} device")
        if dev.device_id in users and not rotate:
            result.kept.append(dev)
        else:
            password = new_password()
            users[dev.device_id] = hash_password(password)
            result.created.append((dev, password))
        if dev.device_id not in known:
            appended.append(device_acl(dev))
            known[dev.device_id] = dev.kind
    if appended:
        sep = "" if acl_text.endswith("\n") or not acl_text else "\n"
        _write_private(acl, acl_text + sep + "".join(appended))
    elif narrowed or not acl.exists():
        _write_private(acl, acl_text)
    if result.created:
        write_password_file(passwd, users)
    return result


def remove(device_ids: Iterable[str], passwd: Path, acl: Path) -> list[str]:
    """Delete devices' accounts and ACL blocks (revocation of a lost or retired device); returns those found.

    The broker applies it on reload (SIGHUP), which also closes the device's open connection (Mosquitto 2.0.11).
    """
    wanted = set(device_ids) - set(SERVICE_ACCOUNTS)
    users = read_password_file(passwd)
    acl_text = acl.read_text() if acl.exists() else ""
    found = sorted(wanted & (set(users) | set(read_acl_devices(acl_text))))
    if not found:
        return []
    _write_private(acl, _DEVICE_BLOCK.sub(lambda m: "" if (dev := _block_device(m)) and dev[0] in wanted
                                          else m[0], acl_text))
    write_password_file(passwd, {u: h for u, h in users.items() if u not in wanted})
    return found


def provision_services(names: Iterable[str], passwd: Path, acl: Path) -> dict[str, str]:
    """Give service accounts new passwords; returns username -> password. The ACL file is created if missing."""
    users = read_password_file(passwd)
    out: dict[str, str] = {}
    for name in names:
        if name not in SERVICE_ACCOUNTS:
            raise ProvisionError(f"unknown service account {name!r} (one of {', '.join(SERVICE_ACCOUNTS)})")
        out[name] = new_password()
        users[name] = hash_password(out[name])
    if not acl.exists():
        _write_private(acl, service_acl())
    write_password_file(passwd, users)
    return out


def write_credentials_csv(path: Path, created: list[tuple[Device, str]], broker_url: str | None = None) -> None:
    """Write new device credentials once (0600; refuses to overwrite: a second copy is a leak)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["kind", "device_id", "username", "password", "topic_prefix", "broker_url"])
    for dev, password in created:
        writer.writerow([dev.kind, dev.device_id, dev.device_id, password, dev.topic_prefix, broker_url or ""])
    try:
        _write_private(path, buf.getvalue(), exclusive=True)
    except FileExistsError:
        raise ProvisionError(f"{path} exists: credentials are written once, choose a new file") from None


def new_share_group() -> str:
    """A shared-subscription group name no device can guess.

    Mosquitto's ACL file cannot refuse a subscription (it checks reads when it delivers), so a device that
    subscribes to ``$share/<the ingest's group>/...`` joins the group, is handed its turn of the messages, and the
    broker then drops each one its ACL denies: gone, though the broker acknowledged it to the device that sent it.
    A group named with 96 random bits cannot be joined by a device that does not know it.
    """
    return f"ioc-ingest-{secrets.token_hex(12)}"


def write_service_env(path: Path, passwords: dict[str, str], share_group: str | None = None,
                      extra: Iterable[tuple[str, str, str]] = ()) -> None:
    """Write service passwords (the ingest workers' share group, ``extra`` (comment, variable, value)s, if given)
    as .env lines (0600, once)."""
    lines = [f"# {SERVICE_ACCOUNTS[u].note}\n{SERVICE_ACCOUNTS[u].env}={p}\n" for u, p in passwords.items()]
    lines += [f"# {note}\n{var}={value}\n" for note, var, value in extra]
    if share_group:
        lines.append(f"# ingest workers' shared-subscription group: a secret, keep it when rotating passwords\n"
                     f"{SHARE_GROUP_ENV}={share_group}\n")
    try:
        _write_private(path, "".join(lines), exclusive=True)
    except FileExistsError:
        raise ProvisionError(f"{path} exists: credentials are written once, choose a new file") from None
