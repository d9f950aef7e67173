"""Revoking client certificates (a CRL signed by the CA) and finding certificates about to expire.

The CRL is ``<pki>/ca.crl`` (PEM), what the device listener's ``crlfile`` names. It is the only record of what was
revoked: each revocation reads it, adds the serial and signs a new one (CRL number + 1). Mosquitto 2.0.11 reads it
at start and on SIGHUP (new connections are then checked against it; open ones are kept: docs/broker-security.md);
a SIGHUP that cannot read it leaves the broker checking no CRL at all, hence the atomic replace below.
OpenSSL refuses every client certificate when the CRL is past its next update, so it is valid as long as a
certificate and ``ioc pki check`` warns before it lapses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ioc.provision.pki import CERT_DAYS, Pki, PkiError, _load_ca, _now

#: A CRL past its next update makes OpenSSL refuse every client: keep it valid as long as a client certificate.
CRL_DAYS = CERT_DAYS


def crl_path(pki: Pki) -> Path:
    return pki.root / "ca.crl"


def load_crl(pki: Pki) -> x509.CertificateRevocationList | None:
    path = crl_path(pki)
    return x509.load_pem_x509_crl(path.read_bytes()) if path.exists() else None


def revoked_serials(pki: Pki) -> set[int]:
    crl = load_crl(pki)
    return {r.serial_number for r in crl} if crl is not None else set()


def write_crl(pki: Pki, add: dict[int, dt.datetime] | None = None, days: int = CRL_DAYS) -> Path:
    """Sign a new CRL holding the current one's entries plus ``add`` (serial -> revocation time)."""
    ca_cert, ca_key = _load_ca(pki)
    old = load_crl(pki)
    if old is not None and not old.is_signature_valid(ca_key.public_key()):
        raise PkiError(f"{crl_path(pki)} was not signed by this CA's key")
    entries = {r.serial_number: r.revocation_date_utc for r in old} if old is not None else {}
    for serial, when in (add or {}).items():
        entries.setdefault(serial, when)
    number = 1
    if old is not None:
        with contextlib.suppress(x509.ExtensionNotFound):
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    now = _now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=days))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    for serial, when in sorted(entries.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    path = crl_path(pki)
    tmp = path.with_suffix(".crl.tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)  # the broker never reads half a file
    return path


def ensure_crl(pki: Pki) -> Path:
    """An empty CRL when there is none (Mosquitto refuses to start when its ``crlfile`` is missing)."""
    return crl_path(pki) if crl_path(pki).exists() else write_crl(pki)


def _serial(text: str) -> int | None:
    """A serial given as hex (as ``openssl x509 -serial`` prints it, colons allowed, 0x optional) or decimal."""
    raw = text.strip().lower().removeprefix("0x").replace(":", "")
    if len(raw) >= 16 and all(c in "0123456789abcdef" for c in raw):
        return int(raw, 16)  # x509.random_serial_number() is 159 bits: no device id is that long and all hex
    return int(raw) if raw.isdigit() and len(raw) >= 16 else None


def revoke(pki: Pki, targets: list[str]) -> list[tuple[str, int]]:
    """Revoke client certificates by name (``clients/<name>.crt``) or serial; returns (what, serial) revoked.

    A name whose certificate file is missing raises (nothing is written); a serial need not have a file here
    (a certificate issued on another machine by the same CA).
    """
    found: list[tuple[str, int]] = []
    for target in targets:
        cert_file = pki.client_cert(target)
        if "/" not in target and cert_file.exists():
            found.append((target, x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number))
        elif (serial := _serial(target)) is not None:
            found.append((target, serial))
        else:
            raise PkiError(f"no certificate {cert_file} and {target!r} is not a serial number")
    now = _now()
    write_crl(pki, {serial: now for _, serial in found})
    return found


@dataclass(frozen=True, slots=True)
class Expiry:
    """One certificate (or the CRL) and when it stops being valid."""

    path: Path
    name: str
    until: dt.datetime


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "?"


def expiring(pki: Pki, days: int, now: dt.datetime | None = None) -> list[Expiry]:
    """The CA, server and unrevoked client certificates (and the CRL's next update) that end within ``days``."""
    limit = (now or _now()) + dt.timedelta(days=days)
    revoked = revoked_serials(pki)
    out: list[Expiry] = []
    files = [pki.ca_cert, pki.server_cert, *sorted((pki.root / "clients").glob("*.crt"))]
    for path in files:
        if not path.exists():
            continue
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.serial_number not in revoked and cert.not_valid_after_utc <= limit:
            out.append(Expiry(path, _cn(cert), cert.not_valid_after_utc))
    crl = load_crl(pki)
    if crl is not None and crl.next_update_utc is not None and crl.next_update_utc <= limit:
        out.append(Expiry(crl_path(pki), "CRL (next update)", crl.next_update_utc))
    return sorted(out, key=lambda e: e.until)
