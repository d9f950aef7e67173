"""Device accounts in Mosquitto's dynamic-security plugin, which the shipped broker runs on the device listener.

Why not the password and ACL files: Mosquitto 2.0's ACL file checks reads when it delivers, not when a client
subscribes, so a device could add subscriptions without end (50,000 cost the broker 143 MB). The plugin checks a
SUBSCRIBE against the client's roles, default deny; a device's role allows it to publish on its channels and
nothing else, so it holds no subscription at all. Deleting a client or changing its password also closes its open
connection at once.

Each device is a client (username = device id) with a role of the same name: one ``publishClientSend`` ACL per
channel of its kind (the 2.0 plugin has no ``%u`` substitution, so roles cannot be shared). Passwords use the
plugin's own hash (PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt: the same as the password file's ``$7$``).

Two ways to write it (docs/broker-security.md):

* the plugin's JSON file, while the broker is stopped (first setup, a province in one go; the plugin reads it at
  start and rewrites it on every change, so an edit under a running broker is lost): :func:`provision_file`;
* the plugin's control topic on a running broker, as the ``ioc-admin`` account over the device listener (the
  plugin answers on the listener it is loaded on): :class:`DynsecAdmin`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import uuid
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ingest.contract import CHANNELS_BY_KIND, TOPIC_PREFIX
from ingest.tls import TlsOptions, default_port, url_uses_tls
from ioc.provision.accounts import (
    ITERATIONS,
    SALT_BYTES,
    Device,
    ProvisionError,
    ProvisionResult,
    _write_private,
    new_password,
)

ADMIN = "ioc-admin"
ADMIN_ENV = "IOC_MQTT_ADMIN_PASSWORD"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
#: Default deny: whatever a role does not allow, nobody may do (subscribing included).
DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                  "unsubscribe": False}
#: The admin may use the control topic and nothing else (mosquitto_ctrl's own init also grants '#').
ADMIN_ACLS = [{"acltype": "publishClientSend", "topic": CONTROL_TOPIC, "allow": True},
              *({"acltype": t, "topic": RESPONSE_TOPIC, "allow": True}
                for t in ("publishClientReceive", "subscribeLiteral", "unsubscribeLiteral"))]
BATCH = 200  # commands per control message


def _hash(password: str) -> dict[str, Any]:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": ITERATIONS}


def device_acls(dev: Device) -> list[dict[str, Any]]:
    """The device role's ACLs: publish on each channel of its kind (its retained last will is its status)."""
    return [{"acltype": "publishClientSend", "topic": f"{dev.topic_prefix}/{channel}", "allow": True}
            for channel in sorted(CHANNELS_BY_KIND[dev.kind])]


def role_kind(device_id: str, acls: Iterable[dict[str, Any]]) -> str | None:
    """The kind a device's role was written for (None: not a role this module wrote)."""
    kinds = {parts[2] for a in acls if len(parts := str(a.get("topic", "")).split("/")) == 5
             and "/".join(parts[:2]) == TOPIC_PREFIX and parts[3] == device_id}
    return kinds.pop() if len(kinds) == 1 else None


# --- the plugin's file (broker stopped) ---------------------------------------------------------------------

def new_config(admin_password: str) -> dict[str, Any]:
    """A plugin file holding only the admin account, default deny."""
    return {"clients": [{"username": ADMIN, "textName": "ioc devices (provisioning)", **_hash(admin_password),
                         "roles": [{"rolename": ADMIN}]}],
            "groups": [], "roles": [{"rolename": ADMIN, "acls": ADMIN_ACLS}],
            "defaultACLAccess": dict(DEFAULT_ACCESS)}


def init_file(path: Path) -> str | None:
    """Create the plugin's file with a new admin password (returned) if it is missing; None if it exists."""
    if path.exists():
        return None
    password = new_password()
    _write_private(path, json.dumps(new_config(password), indent=1) + "\n")
    return password


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ProvisionError(f"{path} is missing: create it with `ioc devices services` (it holds the admin account)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ProvisionError(f"{path} is not the plugin's JSON: {err}") from None
    config.setdefault("clients", [])
    config.setdefault("roles", [])
    return dict(config)


def file_devices(config: dict[str, Any]) -> dict[str, str]:
    """device id -> kind for the device clients of a plugin file (their role named after them)."""
    roles = {r["rolename"]: r.get("acls", []) for r in config["roles"]}
    out = {}
    for client in config["clients"]:
        name = client["username"]
        if name in roles and (kind := role_kind(name, roles[name])):
            out[name] = kind
    return out


def _check_kinds(devices: list[Device], known: dict[str, str], taken: set[str]) -> None:
    for dev in devices:
        if dev.device_id in known and known[dev.device_id] != dev.kind:
            raise ProvisionError(f"{dev.device_id} is already provisioned as {known[dev.device_id]}, not {dev.kind}: "
                                 "`ioc devices remove` it first")
        if dev.device_id not in known and dev.device_id in taken:
            raise ProvisionError(f"{dev.device_id} is an account or role of the plugin that is not a device's")


def provision_file(devices: Iterable[Device], path: Path, rotate: bool = False, cert: bool = False
                   ) -> ProvisionResult:
    """Add device clients and roles to the plugin's file (the broker stopped); ``rotate``: new passwords for those
    already there; ``cert``: clients without a password (they log in with a client certificate, CN = device id, on
    a listener with ``use_identity_as_username``; their passwords in ``created`` are empty). Nothing is written when
    a device conflicts."""
    devices = list(devices)
    if cert and rotate:
        raise ProvisionError("certificate accounts have no password to rotate: revoke and reissue the certificate")
    config = _load(path)
    known = file_devices(config)
    _check_kinds(devices, known, {c["username"] for c in config["clients"]} | {r["rolename"] for r in config["roles"]})
    clients = {c["username"]: c for c in config["clients"]}
    result = ProvisionResult([], [])
    for dev in devices:
        if dev.device_id in known and not rotate:
            result.kept.append(dev)
            continue
        password = "" if cert else new_password()
        if dev.device_id in known:
            clients[dev.device_id].update(_hash(password))
        else:
            config["clients"].append({"username": dev.device_id, **(_hash(password) if password else {}),
                                      "roles": [{"rolename": dev.device_id}]})
            config["roles"].append({"rolename": dev.device_id, "acls": device_acls(dev)})
            known[dev.device_id] = dev.kind
        result.created.append((dev, password))
    if result.created:
        _write_private(path, json.dumps(config, indent=1) + "\n")
    return result


def remove_file(device_ids: Iterable[str], path: Path) -> list[str]:
    """Delete devices' clients and roles from the plugin's file (the broker stopped); returns those found."""
    config = _load(path)
    found = sorted(set(device_ids) & set(file_devices(config)))
    if found:
        gone = set(found)
        config["clients"] = [c for c in config["clients"] if c["username"] not in gone]
        config["roles"] = [r for r in config["roles"] if r["rolename"] not in gone]
        _write_private(path, json.dumps(config, indent=1) + "\n")
    return found


def import_password_file(users: dict[str, str], devices: dict[str, str], path: Path) -> int:
    """Move device accounts from Mosquitto's password file (username -> ``$7$`` hash) and ACL (device -> kind)
    into the plugin's file, passwords unchanged (same hash); returns how many were added."""
    config = _load(path)
    known = set(file_devices(config)) | {c["username"] for c in config["clients"]}
    added = 0
    for device_id, kind in devices.items():
        parts = users.get(device_id, "").split("$")
        if device_id in known or len(parts) != 5 or parts[1] != "7":
            continue
        config["clients"].append({"username": device_id, "password": parts[4], "salt": parts[3],
                                  "iterations": int(parts[2]), "roles": [{"rolename": device_id}]})
        config["roles"].append({"rolename": device_id, "acls": device_acls(Device(kind, device_id))})
        added += 1
    if added:
        _write_private(path, json.dumps(config, indent=1) + "\n")
    return added


# --- the control topic (broker running) ---------------------------------------------------------------------

class DynsecAdmin:
    """The plugin's control API over MQTT, as the admin account: ``with DynsecAdmin(url, tls) as admin: ...``.

    ``url``: ``mqtts://[ioc-admin[:password]@]host:8883`` (the device listener, where the plugin is loaded); the
    password defaults to ``password``.
    """

    def __init__(self, url: str, tls: TlsOptions | None = None, password: str | None = None,
                 timeout: float = 30.0) -> None:
        import paho.mqtt.client as mqtt

        parts = urlsplit(url)
        if not parts.hostname:
            raise ProvisionError("the admin URL must look like mqtts://host:8883")
        self.host, self.port = parts.hostname, default_port(url)
        user = unquote(parts.username) if parts.username else ADMIN
        secret = unquote(parts.password) if parts.password else password
        if not secret and not (tls and tls.cert_file):
            # With a client certificate the password may be absent: a listener with use_identity_as_username
            # ignores it (the certificate's CN is the account).
            raise ProvisionError(f"no password for {user}: put it in the URL or in ${ADMIN_ENV}")
        self.timeout = timeout
        self._cond = threading.Condition()
        self._responses: dict[str, dict[str, Any]] = {}
        self._ready: bool | None = None
        self._connack: Any = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, secret)
        if url_uses_tls(url):
            self.client.tls_set_context((tls or TlsOptions()).context())
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: object, flags: object, rc: Any, props: object = None) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()
        if not rc.is_failure:
            client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_subscribe(self, client: Any, userdata: object, mid: int, rcs: list[Any], props: object = None) -> None:
        with self._cond:
            self._ready = not rcs[0].is_failure
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: object, msg: Any) -> None:
        try:
            responses = json.loads(msg.payload).get("responses", [])
        except (ValueError, AttributeError):
            return
        with self._cond:
            for resp in responses:
                self._responses[str(resp.get("correlationData"))] = resp
            self._cond.notify_all()

    def __enter__(self) -> DynsecAdmin:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as err:
            raise ProvisionError(f"cannot reach the broker at {self.host}:{self.port}: {err}") from None
        self.client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._ready is not None or (self._connack is not None
                                                                    and self._connack.is_failure), self.timeout)
        if not self._ready:
            self.close()
            raise ProvisionError(f"the broker did not let the admin account in ({self._connack or 'no answer'}"
                                 f"{', no subscription' if self._ready is False else ''}); is the dynamic-security "
                                 "plugin loaded on this listener?")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands (in batches), return their responses in order; raise on a timeout."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(commands), BATCH):
            batch = [{**c, "correlationData": uuid.uuid4().hex} for c in commands[start:start + BATCH]]
            self.client.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=1)
            keys = [c["correlationData"] for c in batch]
            with self._cond:
                if not self._cond.wait_for(partial(self._answered, keys), self.timeout):
                    raise ProvisionError("the broker did not answer the control commands in time")
                out += [self._responses.pop(k) for k in keys]
        return out

    def _answered(self, keys: list[str]) -> bool:
        return all(k in self._responses for k in keys)

    def check(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`run`, raising on the first error."""
        responses = self.run(commands)
        for resp in responses:
            if resp.get("error"):
                raise ProvisionError(f"{resp.get('command')}: {resp['error']}")
        return responses

    def clients(self) -> set[str]:
        """Every client of the plugin."""
        data = self.check([{"command": "listClients", "verbose": False, "count": -1}])[0].get("data", {})
        return set(data.get("clients", []))

    def kinds(self, device_ids: Iterable[str]) -> dict[str, str | None]:
        """device id -> kind of its role (None: no role this module wrote), for those that have a role."""
        ids = list(device_ids)
        out: dict[str, str | None] = {}
        for device_id, resp in zip(ids, self.run([{"command": "getRole", "rolename": d} for d in ids]), strict=True):
            if not resp.get("error"):
                out[device_id] = role_kind(device_id, resp.get("data", {}).get("role", {}).get("acls", []))
        return out

    def provision(self, devices: Iterable[Device], rotate: bool = False, cert: bool = False) -> ProvisionResult:
        """Create device clients and roles; ``rotate``: new passwords for those there (their connection is
        closed by the broker); ``cert``: clients without a password (see :func:`provision_file`). Idempotent;
        nothing is changed when a device conflicts."""
        devices = list(devices)
        if cert and rotate:
            raise ProvisionError("certificate accounts have no password to rotate: revoke and reissue the certificate")
        existing = self.clients()
        roles = self.kinds(d.device_id for d in devices)
        known = {d: k for d, k in roles.items() if d in existing and k}
        _check_kinds(devices, known, existing | set(roles))
        result = ProvisionResult([], [])
        commands: list[dict[str, Any]] = []
        for dev in devices:
            if dev.device_id in known and not rotate:
                result.kept.append(dev)
                continue
            password = "" if cert else new_password()
            if dev.device_id in known:
                commands.append({"command": "setClientPassword", "username": dev.device_id, "password": password})
            else:
                commands += [{"command": "createRole", "rolename": dev.device_id, "acls": device_acls(dev)},
                             {"command": "createClient", "username": dev.device_id,
                              **({"password": password} if password else {}), "roles": [{"rolename": dev.device_id}]}]
            result.created.append((dev, password))
        self.check(commands)
        return result

    def remove(self, device_ids: Iterable[str]) -> list[str]:
        """Delete devices' clients (closing their connections) and roles; returns those found."""
        wanted = sorted(set(device_ids) - {ADMIN})
        existing = self.clients()
        found = sorted(d for d, k in self.kinds(wanted).items() if k and d in existing)
        self.check([c for d in found for c in ({"command": "deleteClient", "username": d},
                                               {"command": "deleteRole", "rolename": d})])
        return found

