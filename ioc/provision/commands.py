"""``ioc pki`` and ``ioc devices``: argument parsers and command bodies (mounted by :mod:`ioc.cli`)."""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

from ingest.tls import TlsOptions
from ioc.provision import accounts, dynsec, pki, revocation

DEFAULT_BROKER_DIR = Path("deploy/mosquitto")
DEFAULT_DYNSEC = DEFAULT_BROKER_DIR / "dynsec" / "dynamic-security.json"
ONLINE_MANY = 50  # devices per online run past which the plugin's file rewrites add up (docs/broker-security.md)
_ADMIN_NOTE = (f"the device listener's admin account ({dynsec.ADMIN}, dynamic-security plugin): "
               "`ioc devices provision|remove --admin-url`")


def add_pki_arguments(parser: argparse.ArgumentParser) -> None:
    """``ioc pki init|client``."""
    sub = parser.add_subparsers(dest="pki_command", required=True)
    init = sub.add_parser("init", help="create the CA (kept if present) and (re)issue the broker's certificate")
    init.add_argument("--dir", type=Path, default=DEFAULT_BROKER_DIR / "certs",
                      help="PKI folder (default deploy/mosquitto/certs, what compose.yaml mounts)")
    init.add_argument("--host", action="append", dest="hosts", metavar="NAME_OR_IP",
                      help="a host name or IP clients use to reach the broker; repeat (default localhost, "
                      "127.0.0.1). Under compose include 'mosquitto'")
    init.add_argument("--days", type=int, default=pki.CERT_DAYS, help="server certificate validity (default 825)")
    init.add_argument("--client", action="append", default=[], metavar="NAME",
                      help="also issue a client certificate with this CN; repeat")
    client = sub.add_parser("client", help="issue a client certificate (CN = NAME) from the CA, or one per device of "
                            "a CSV")
    client.add_argument("name", nargs="?", help="device id or service account name (ioc-admin: the provisioning "
                        "account on a device listener that requires certificates)")
    client.add_argument("--csv", type=Path, help="bulk: CSV with a header row and columns kind,device_id (as for "
                        "`ioc devices provision --csv`); devices that have a certificate keep it")
    client.add_argument("--reissue", action="store_true", help="with --csv: new certificates for those that have one")
    client.add_argument("--quiet", action="store_true", help="no progress bar")
    client.add_argument("--dir", type=Path, default=DEFAULT_BROKER_DIR / "certs", help="PKI folder")
    client.add_argument("--days", type=int, default=pki.CERT_DAYS)
    revoke = sub.add_parser("revoke", help="revoke client certificates: add them to the CA's CRL (ca.crl)",
                            description="Writes a new CRL signed by the CA. Mosquitto 2.0.11 reads its crlfile when it "
                            "starts and on SIGHUP, and keeps open connections of a revoked certificate: reload it and "
                            "`ioc devices remove --admin-url` the devices (docs/broker-security.md).")
    revoke.add_argument("targets", nargs="+", metavar="NAME|SERIAL",
                        help="a client name (clients/NAME.crt) or a certificate serial (hex or decimal)")
    revoke.add_argument("--dir", type=Path, default=DEFAULT_BROKER_DIR / "certs", help="PKI folder")
    check = sub.add_parser("check", help="list certificates (CA, server, unrevoked clients) and the CRL that end "
                           "within DAYS; exit 1 when any")
    check.add_argument("--days", type=int, default=30, help="look this far ahead (default 30)")
    check.add_argument("--dir", type=Path, default=DEFAULT_BROKER_DIR / "certs", help="PKI folder")


def add_devices_arguments(parser: argparse.ArgumentParser) -> None:
    """``ioc devices provision|remove|migrate|set-kind|services``."""
    sub = parser.add_subparsers(dest="devices_command", required=True)
    prov = sub.add_parser("provision", help="broker accounts + ACLs for one device (KIND ID) or a CSV of them",
                          description="Each device gets its own account (username = device id, random password) "
                          "and may publish only on ioc/v1/<kind>/<id>/<channel>, and subscribe to nothing. New "
                          "credentials are written once to --out (mode 0600). The accounts go to the running "
                          "broker with --admin-url, else to the plugin's file (broker stopped).")
    prov.add_argument("kind", nargs="?", help="camera, bts or traffic")
    prov.add_argument("device_id", nargs="?", help="the device id (its MQTT username)")
    prov.add_argument("--csv", type=Path, help="bulk: CSV with a header row and columns kind,device_id[,...]")
    _store_args(prov)
    prov.add_argument("--out", type=Path, help="CSV to write the new credentials to (must not exist; not with --cert)")
    prov.add_argument("--cert", action="store_true", help="accounts without a password, for devices that log in with "
                      "a client certificate (CN = device id, `ioc pki client`) on a device listener with "
                      "require_certificate and use_identity_as_username (docs/broker-security.md)")
    prov.add_argument("--rotate", action="store_true", help="new passwords for devices that already have an account")
    prov.add_argument("--broker-url", help="written next to each credential, e.g. mqtts://broker.example.vn:8883")
    rm = sub.add_parser("remove", help="delete devices' accounts and ACL blocks (lost, stolen or retired devices)")
    rm.add_argument("device_ids", nargs="*", metavar="ID", help="device ids")
    rm.add_argument("--csv", type=Path, help="CSV with a header row naming device_id")
    _store_args(rm)
    mig = sub.add_parser("migrate", help="move device accounts from the password and ACL files into the "
                         "dynamic-security plugin's file, passwords unchanged (broker stopped)")
    _file_args(mig)
    mig.add_argument("--dynsec", type=Path, default=DEFAULT_DYNSEC,
                     help=f"the plugin's file (default {DEFAULT_DYNSEC}); created if missing, with --out")
    mig.add_argument("--out", type=Path, help="when the plugin's file is created: its admin password goes here as a "
                     ".env line (must not exist; 0600)")
    kind = sub.add_parser("set-kind", help="change devices' kind in the registry (IOC_DATABASE_URL): re-provisioned "
                          "as another kind", description="A device's kind is fixed in the registry once known: "
                          "messages under another kind are quarantined (kind_conflict). After re-provisioning its "
                          "broker account as another kind (remove, provision), set it here; the running processes "
                          "follow within seconds. Its history stays under its id.")
    kind.add_argument("kind", help="camera, bts or traffic")
    kind.add_argument("device_ids", nargs="+", metavar="ID", help="device ids")
    svc = sub.add_parser("services", help="new passwords for the IOC's service accounts, as .env lines")
    svc.add_argument("--out", type=Path, required=True, help="file for the .env lines (must not exist; 0600)")
    svc.add_argument("--simulator", action="store_true", help="also the simulator account (test/demo brokers only)")
    svc.add_argument("--only", action="append", choices=sorted(accounts.SERVICE_ACCOUNTS), help="just these")
    _file_args(svc, "passwd-services")
    svc.add_argument("--dynsec", type=Path, default=DEFAULT_DYNSEC,
                     help="the dynamic-security plugin's file (the device listener's accounts), created with the "
                     f"ioc-admin account if missing; its password goes to --out (default {DEFAULT_DYNSEC})")
    svc.add_argument("--device-passwd", type=Path,
                     help="also create this password file empty if missing (a device listener configured with one)")


def _store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin-url", default=os.environ.get("IOC_MQTT_ADMIN_URL"),
                        help="a running broker's device listener, e.g. mqtts://broker.example.vn:8883 (default "
                        f"$IOC_MQTT_ADMIN_URL): changes apply at once. Account {dynsec.ADMIN}, password from the URL "
                        f"or ${dynsec.ADMIN_ENV}")
    parser.add_argument("--ca-file", default=os.environ.get("IOC_MQTT__CA_FILE"),
                        help="CA of the broker's certificate for --admin-url (default $IOC_MQTT__CA_FILE, else "
                        "deploy/mosquitto/certs/ca.crt if present)")
    parser.add_argument("--cert-file", default=os.environ.get("IOC_MQTT__CERT_FILE"),
                        help="with --admin-url on a listener that requires client certificates: the admin's (CN "
                        f"{dynsec.ADMIN}, `ioc pki client {dynsec.ADMIN}`; default $IOC_MQTT__CERT_FILE)")
    parser.add_argument("--key-file", default=os.environ.get("IOC_MQTT__KEY_FILE"),
                        help="its key (default $IOC_MQTT__KEY_FILE)")
    parser.add_argument("--dynsec", type=Path, default=DEFAULT_DYNSEC,
                        help=f"without --admin-url: the plugin's file, for a stopped broker (default {DEFAULT_DYNSEC})")
    parser.add_argument("--passwd", type=Path, help="instead: a Mosquitto password file (a device listener still "
                        "configured with password_file/acl_file; it cannot limit subscriptions)")
    parser.add_argument("--acl", type=Path, help="with --passwd: its ACL file (default deploy/mosquitto/acl)")


def _file_args(parser: argparse.ArgumentParser, passwd: str = "passwd") -> None:
    parser.add_argument("--passwd", type=Path, default=DEFAULT_BROKER_DIR / passwd,
                        help=f"Mosquitto password file (default deploy/mosquitto/{passwd}"
                        + (": the service listener's" if passwd != "passwd" else ": the device listener's") + ")")
    parser.add_argument("--acl", type=Path, default=DEFAULT_BROKER_DIR / "acl",
                        help="Mosquitto ACL file (default deploy/mosquitto/acl)")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _csv_text(path: Path) -> str:
    """A CSV file's text; a file that is not UTF-8 (a spreadsheet saved as UTF-16 or a legacy code page) is a
    clear error naming it, not a traceback."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise accounts.ProvisionError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                                      "save it as CSV UTF-8") from None


def run_pki(args: argparse.Namespace) -> int:
    """Run ``ioc pki ...``."""
    try:
        if args.pki_command == "init":
            store, new_ca = pki.init_pki(args.dir, args.hosts, args.days)
            print(f"{'created' if new_ca else 'kept existing'} CA: {pki.describe(store.ca_cert)}")
            print(f"broker certificate: {pki.describe(store.server_cert)}")
            print(f"  key: {store.server_key} (0600; the broker must be able to read it)")
            print(f"revocation list: {revocation.ensure_crl(store)} (the device listener's crlfile)")
            for name in args.client:
                cert, key = pki.issue_client(store, name)
                print(f"client: {pki.describe(cert)}; key {key}")
            return 0
        if args.pki_command == "client":
            return _pki_client(args)
        if args.pki_command == "revoke":
            done = revocation.revoke(pki.Pki(args.dir), args.targets)
            for what, serial in done:
                print(f"revoked {what} (serial {serial:x})")
            store = pki.Pki(args.dir)
            print(f"{revocation.crl_path(store)} rewritten ({len(revocation.revoked_serials(store))}"
                  " revoked in all). Reload the broker (SIGHUP) to refuse new connections of these certificates, and "
                  "`ioc devices remove --admin-url` the devices: their open connections stay until then. After the "
                  "reload check the broker's log: 'Unable to load certificate revocation file' means it checks no "
                  "CRL at all")
            return 0
        if args.pki_command == "check":
            soon = revocation.expiring(pki.Pki(args.dir), args.days)
            for item in soon:
                print(f"{item.path}: {item.name} ends {item.until:%Y-%m-%d %H:%M} UTC")
            print(f"{len(soon)} ending within {args.days} days" if soon else f"nothing ends within {args.days} days")
            return 1 if soon else 0
    except (pki.PkiError, accounts.ProvisionError, OSError, ValueError) as err:
        return _fail(str(err))
    return 2


def _pki_client(args: argparse.Namespace) -> int:
    store = pki.Pki(args.dir)
    if bool(args.csv) == bool(args.name):
        return _fail("give either NAME or --csv FILE")
    if args.name:
        cert, key = pki.issue_client(store, args.name, args.days)
        print(f"client: {pki.describe(cert)}; key {key}")
        return 0
    names = [d.device_id for d in accounts.read_device_csv(_csv_text(args.csv))]
    issued, kept = pki.issue_clients(store, names, args.days, args.reissue, progress=not args.quiet)
    print(f"{len(issued)} client certificate(s) issued in {store.root / 'clients'} (keys 0600), {len(kept)} kept "
          "(--reissue replaces them)")
    return 0


def run_devices(args: argparse.Namespace, database_url: str | None = None) -> int:
    """Run ``ioc devices ...`` (``set-kind`` writes to the registry at ``database_url``)."""
    if args.devices_command == "remove":
        return _remove(args)
    if args.devices_command == "set-kind":
        return _set_kind(args, database_url)
    if args.devices_command == "migrate":
        return _migrate(args)
    if args.out is None and not getattr(args, "cert", False):
        return _fail("give --out FILE for the new credentials")
    if args.out is not None and args.out.exists():
        return _fail(f"{args.out} exists: credentials are written once, choose a new file")
    try:
        if args.devices_command == "provision":
            return _provision(args)
        if args.devices_command == "services":
            names = args.only or [*accounts.PRODUCTION_SERVICES, *(["ioc-simulator"] if args.simulator else [])]
            # A new ingest account gets a secret share group; a rotation keeps the group (a worker's persistent
            # session stays subscribed to its old group, and would get every message twice).
            group = (accounts.new_share_group() if "ioc-ingest" in names
                     and "ioc-ingest" not in accounts.read_password_file(args.passwd) else None)
            passwords = accounts.provision_services(names, args.passwd, args.acl)
            if args.device_passwd and not args.device_passwd.exists():
                accounts.write_password_file(args.device_passwd, {})
            admin = dynsec.init_file(args.dynsec)
            extra = [(_ADMIN_NOTE, dynsec.ADMIN_ENV, admin)] if admin else []
            accounts.write_service_env(args.out, passwords, group, extra)
            print(f"{len(passwords)} service account(s) ({', '.join(passwords)}) -> {args.passwd}; "
                  f"passwords{' and the ingest share group' if group else ''} as .env lines in {args.out}. "
                  "Reload the broker (SIGHUP).")
            if admin:
                print(f"created {args.dynsec} (the device accounts' store) with the {dynsec.ADMIN} account; its "
                      f"password is {dynsec.ADMIN_ENV} in {args.out}")
            return 0
    except (accounts.ProvisionError, OSError) as err:
        return _fail(str(err))
    return 2


def _remove(args: argparse.Namespace) -> int:
    ids = list(args.device_ids)
    if args.csv:
        try:
            reader = csv.DictReader(io.StringIO(_csv_text(args.csv)))
        except (accounts.ProvisionError, OSError) as err:
            return _fail(str(err))
        if "device_id" not in (reader.fieldnames or []):
            return _fail("the CSV needs a header row naming device_id")
        ids += [row["device_id"].strip() for row in reader if (row.get("device_id") or "").strip()]
    if not ids:
        return _fail("give device ids or --csv FILE")
    try:
        if args.admin_url:
            with _admin(args) as admin:
                removed = admin.remove(ids)
        elif args.passwd or args.acl:
            removed = accounts.remove(ids, *_legacy_files(args))
        else:
            removed = dynsec.remove_file(ids, args.dynsec)
    except (accounts.ProvisionError, OSError) as err:
        return _fail(str(err))
    missing = sorted(set(ids) - set(removed))
    print(f"{len(removed)} device account(s) removed" + (f"; not found: {', '.join(missing[:20])}" if missing else ""))
    if removed:
        print(_applied(args, "their open connections were closed"))
    return 0 if not missing else 1


def _legacy_files(args: argparse.Namespace) -> tuple[Path, Path]:
    return args.passwd or DEFAULT_BROKER_DIR / "passwd", args.acl or DEFAULT_BROKER_DIR / "acl"


def _admin(args: argparse.Namespace) -> dynsec.DynsecAdmin:
    ca = args.ca_file or (str(DEFAULT_BROKER_DIR / "certs" / "ca.crt")
                          if (DEFAULT_BROKER_DIR / "certs" / "ca.crt").exists() else None)
    return dynsec.DynsecAdmin(args.admin_url, TlsOptions(ca, args.cert_file, args.key_file),
                              os.environ.get(dynsec.ADMIN_ENV))


def _applied(args: argparse.Namespace, online: str) -> str:
    """How the change reaches the broker."""
    if args.admin_url:
        return f"applied on the running broker; {online}"
    if args.passwd or args.acl:
        return "reload the broker to apply: docker compose kill -s HUP mosquitto (or kill -HUP <pid>)"
    return (f"written to {args.dynsec}: the broker reads it when it starts (on a running broker use --admin-url: it "
            "rewrites the file on its next change and this edit is lost)")


def _migrate(args: argparse.Namespace) -> int:
    try:
        if not args.dynsec.exists():
            if not args.out or args.out.exists():
                return _fail(f"{args.dynsec} is missing: give --out (a new file) for its admin account's password")
            accounts.write_service_env(args.out, {}, extra=[(_ADMIN_NOTE, dynsec.ADMIN_ENV,
                                                            dynsec.init_file(args.dynsec) or "")])
            print(f"created {args.dynsec} with the {dynsec.ADMIN} account; its password: {args.out}")
        devices = accounts.read_acl_devices(args.acl.read_text() if args.acl.exists() else "")
        added = dynsec.import_password_file(accounts.read_password_file(args.passwd), devices, args.dynsec)
    except (accounts.ProvisionError, OSError) as err:
        return _fail(str(err))
    print(f"{added} device account(s) moved to {args.dynsec}, passwords unchanged; start the broker with the shipped "
          f"mosquitto.conf (the device listener reads the plugin's file), then {args.passwd} can go")
    return 0


def _set_kind(args: argparse.Namespace, database_url: str | None) -> int:
    import asyncio

    import asyncpg

    from storage.kinds import set_kind

    try:
        ids = [accounts.check_device(args.kind, d).device_id for d in args.device_ids]
    except accounts.ProvisionError as err:
        return _fail(str(err))
    if not database_url:
        return _fail("set IOC_DATABASE_URL: the registry is in the database")

    async def run() -> dict[str, str]:
        conn = await asyncpg.connect(database_url)
        try:
            return await set_kind(conn, ids, args.kind.strip())
        finally:
            await conn.close()

    try:
        before = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as err:
        return _fail(f"registry not changed: {err}")
    for device_id in ids:
        if device_id in before:
            print(f"{device_id}: {before[device_id]} -> {args.kind.strip()}")
    missing = [d for d in ids if d not in before]
    if missing:
        print(f"not in the registry (a new device takes the kind of its first message): {', '.join(missing[:20])}")
    return 0 if not missing else 1


def _provision(args: argparse.Namespace) -> int:
    if args.csv and (args.kind or args.device_id):
        return _fail("give either KIND ID or --csv, not both")
    if args.csv:
        devices = accounts.read_device_csv(_csv_text(args.csv))
    elif args.kind and args.device_id:
        devices = [accounts.check_device(args.kind, args.device_id)]
    else:
        return _fail("give KIND ID (e.g. camera HP-CAM-0001) or --csv FILE")
    if args.admin_url:
        if len(devices) > ONLINE_MANY:
            print(f"note: {len(devices)} devices on a running broker: each change makes it rewrite its whole file "
                  "while other clients wait; a province's list goes faster through --dynsec with the broker stopped "
                  "(docs/broker-security.md)", file=sys.stderr)
        with _admin(args) as admin:
            result = admin.provision(devices, rotate=args.rotate, cert=args.cert)
    elif args.passwd or args.acl:
        if args.cert:
            return _fail("--cert needs the dynamic-security plugin (a password file cannot hold an account without "
                         "a password)")
        result = accounts.provision(devices, *_legacy_files(args), rotate=args.rotate)
    else:
        result = dynsec.provision_file(devices, args.dynsec, rotate=args.rotate, cert=args.cert)
    if args.cert:
        print(f"{len(result.created)} certificate account(s) created (no password: the client certificate's CN is "
              f"the account), {len(result.kept)} already provisioned and kept")
        if result.created:
            print(_applied(args, "issue their certificates with `ioc pki client --csv`"))
        return 0
    if result.created:
        # Written even when the broker has them already: losing the only copy of new passwords is worse.
        accounts.write_credentials_csv(args.out, result.created, args.broker_url)
    print(f"{len(result.created)} account(s) {'given new passwords' if args.rotate else 'created'}, "
          f"{len(result.kept)} already provisioned and kept (--rotate replaces their passwords)")
    if result.created:
        print(f"credentials: {args.out} (0600, shown nowhere else)")
        print(_applied(args, "a device given a new password was disconnected"))
    return 0
