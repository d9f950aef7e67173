"""``ioc pki revoke|check`` and ``ioc pki client --csv``: the CRL, expiry warnings, bulk issuance."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509

from ioc.cli import main
from ioc.provision import dynsec, pki, revocation

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path) -> pki.Pki:
    return pki.init_pki(tmp_path / "certs")[0]


def serial(store: pki.Pki, name: str) -> int:
    return x509.load_pem_x509_certificate(store.client_cert(name).read_bytes()).serial_number


def test_revoke_by_name_and_serial_keeps_earlier_entries(store: pki.Pki) -> None:
    for name in ("CAM-1", "CAM-2"):
        pki.issue_client(store, name)
    assert revocation.revoked_serials(store) == set()
    revocation.revoke(store, ["CAM-1"])
    first = revocation.load_crl(store)
    revocation.revoke(store, [f"{serial(store, 'CAM-2'):X}"])  # as openssl prints it
    crl = revocation.load_crl(store)
    assert first is not None and crl is not None
    assert revocation.revoked_serials(store) == {serial(store, "CAM-1"), serial(store, "CAM-2")}
    ca = x509.load_pem_x509_certificate(store.ca_cert.read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.subject
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=revocation.CRL_DAYS - 1)


def test_revoking_an_unknown_name_writes_nothing(store: pki.Pki) -> None:
    pki.issue_client(store, "CAM-1")
    with pytest.raises(pki.PkiError, match="not a serial"):
        revocation.revoke(store, ["CAM-1", "CAM-9"])
    assert not revocation.crl_path(store).exists()
    assert main(["pki", "revoke", "CAM-9", "--dir", str(store.root)]) == 2


def test_a_crl_of_another_ca_is_not_extended(store: pki.Pki, tmp_path: Path) -> None:
    other = pki.init_pki(tmp_path / "other")[0]
    revocation.ensure_crl(other)
    revocation.crl_path(store).write_bytes(revocation.crl_path(other).read_bytes())
    with pytest.raises(pki.PkiError, match="not signed"):
        revocation.write_crl(store, {1234: dt.datetime.now(dt.UTC)})


def test_init_writes_an_empty_crl_and_keeps_it(store: pki.Pki) -> None:
    assert main(["pki", "init", "--dir", str(store.root)]) == 0
    assert revocation.revoked_serials(store) == set()
    pki.issue_client(store, "CAM-1")
    revocation.revoke(store, ["CAM-1"])
    assert main(["pki", "init", "--dir", str(store.root)]) == 0
    assert revocation.revoked_serials(store) == {serial(store, "CAM-1")}


def test_check_lists_what_ends_soon_except_revoked(store: pki.Pki, capsys: pytest.CaptureFixture[str]) -> None:
    pki.issue_client(store, "CAM-SHORT", days=5)
    pki.issue_client(store, "CAM-GONE", days=5)
    pki.issue_client(store, "CAM-LONG")
    revocation.revoke(store, ["CAM-GONE"])
    assert [e.name for e in revocation.expiring(store, 30)] == ["CAM-SHORT"]
    assert main(["pki", "check", "--dir", str(store.root)]) == 1
    assert "CAM-SHORT" in capsys.readouterr().out
    assert main(["pki", "check", "--days", "3", "--dir", str(store.root)]) == 0
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=pki.CERT_DAYS)
    names = {e.name for e in revocation.expiring(store, 1, now=later)}
    assert {"localhost", "CAM-LONG", "CRL (next update)"} <= names  # server certificate (CN = first host), CRL
    assert "IOC broker CA" not in names  # the CA lasts 10 years


def test_bulk_issuance_from_csv(store: pki.Pki, tmp_path: Path) -> None:
    devices = tmp_path / "devices.csv"
    devices.write_text("kind,device_id,site\ncamera,HP-CAM-1,a\n\nbts,HP-BTS-2,b\n")
    args = ["pki", "client", "--csv", str(devices), "--dir", str(store.root), "--quiet"]
    assert main(args) == 0
    for name in ("HP-CAM-1", "HP-BTS-2"):
        cert = x509.load_pem_x509_certificate(store.client_cert(name).read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == name
        assert store.client_key(name).stat().st_mode & 0o777 == 0o600
    before = serial(store, "HP-CAM-1")
    assert main(args) == 0
    assert serial(store, "HP-CAM-1") == before  # kept
    assert main([*args, "--reissue"]) == 0
    assert serial(store, "HP-CAM-1") != before


@pytest.mark.parametrize("row", ["camera,bad id", "camera,ioc-admin", "drone,HP-X-1", "camera,HP-CAM-1"])
def test_bulk_issuance_refuses_bad_rows_before_issuing(store: pki.Pki, tmp_path: Path, row: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    devices = tmp_path / "devices.csv"
    devices.write_text(f"kind,device_id\ncamera,HP-CAM-1\n{row}\n")
    assert main(["pki", "client", "--csv", str(devices), "--dir", str(store.root), "--quiet"]) == 2
    assert "line 3" in capsys.readouterr().err
    assert not (store.root / "clients").exists()


def test_client_needs_a_name_or_a_csv(store: pki.Pki) -> None:
    assert main(["pki", "client", "--dir", str(store.root)]) == 2


def test_cert_accounts_have_no_password(tmp_path: Path) -> None:
    """``ioc devices provision --cert``: a client and its role in the plugin's file, no password (the listener takes
    the certificate's CN as the account); no credentials file; no rotation."""
    dyn = tmp_path / "dynamic-security.json"
    dynsec.init_file(dyn)
    base = ["devices", "provision", "camera", "HP-CAM-1", "--dynsec", str(dyn)]
    assert main([*base, "--cert"]) == 0
    client = next(c for c in json.loads(dyn.read_text())["clients"] if c["username"] == "HP-CAM-1")
    assert client["roles"] == [{"rolename": "HP-CAM-1"}] and "password" not in client
    assert dynsec.file_devices(json.loads(dyn.read_text())) == {"HP-CAM-1": "camera"}
    assert main([*base, "--cert", "--rotate"]) == 2
    assert main(base) == 2  # a password account still needs --out
