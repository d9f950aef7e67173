"""A small certificate authority for the broker, built with ``cryptography``.

Layout of a PKI folder::

    ca.crt  ca.key            the CA (the key never leaves this folder; 0600)
    server.crt  server.key    the broker's certificate, with the host names / IPs clients dial as SANs
    clients/<name>.crt .key   client certificates (CN = name), for brokers that want them
    ca.crl                    revoked client certificates (:mod:`ioc.provision.revocation`)

Not done here: automatic rotation (see docs/broker-security.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ingest.contract import DEVICE_ID_RE

logger = logging.getLogger(__name__)

CA_DAYS = 3650
CERT_DAYS = 825
#: RSA rather than ECDSA: the oldest camera and BTS TLS stacks in a province's fleet still speak only RSA.
KEY_BITS = 2048
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


class PkiError(RuntimeError):
    """The PKI folder is missing something or a name is unusable."""


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of one PKI folder."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def client_cert(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.key"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "IOC"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load_ca(pki: Pki) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    if not pki.ca_cert.exists() or not pki.ca_key.exists():
        raise PkiError(f"no CA in {pki.root}: run `ioc pki init --dir {pki.root}` first")
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PkiError(f"{pki.ca_key} is not an RSA key")
    return cert, key


def create_ca(pki: Pki, common_name: str = "IOC broker CA", days: int = CA_DAYS) -> None:
    """Write a new self-signed CA (refuses to replace an existing one: every issued certificate hangs on it)."""
    if pki.ca_cert.exists() or pki.ca_key.exists():
        raise PkiError(f"a CA already exists in {pki.root}")
    key = _new_key()
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(pki.ca_key, key)
    _write_cert(pki.ca_cert, cert)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c in host for c in " /:@") or len(host) > 253:
                raise PkiError(f"not a host name or IP address: {host!r}") from None
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _issue(pki: Pki, common_name: str, key: rsa.RSAPrivateKey, days: int, server_hosts: list[str] | None
           ) -> x509.Certificate:
    ca_cert, ca_key = _load_ca(pki)
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts is not None else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server_hosts is not None:
        builder = builder.add_extension(_san(server_hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def issue_server(pki: Pki, hosts: list[str], days: int = CERT_DAYS) -> None:
    """(Re)issue the broker's certificate for ``hosts`` (DNS names and IP addresses clients connect to)."""
    if not hosts:
        raise PkiError("the server certificate needs at least one host name or IP address")
    _san(hosts)  # refuse a bad name before generating anything
    key = _new_key()
    cert = _issue(pki, hosts[0], key, days, hosts)
    _write_key(pki.server_key, key)
    _write_cert(pki.server_cert, cert)


def issue_client(pki: Pki, name: str, days: int = CERT_DAYS) -> tuple[Path, Path]:
    """Issue a client certificate with CN ``name`` (a device id or a service account); returns (cert, key)."""
    if not DEVICE_ID_RE.fullmatch(name):
        raise PkiError(f"client name must match {DEVICE_ID_RE.pattern}: {name!r}")
    key = _new_key()
    cert = _issue(pki, name, key, days, None)
    _write_key(pki.client_key(name), key)
    _write_cert(pki.client_cert(name), cert)
    return pki.client_cert(name), pki.client_key(name)


def issue_clients(pki: Pki, names: Iterable[str], days: int = CERT_DAYS, reissue: bool = False,
                  progress: bool = False) -> tuple[list[str], list[str]]:
    """Issue one client certificate per name (checked beforehand); returns (issued, kept: had one, not reissued)."""
    from tqdm import tqdm

    names = list(names)
    for name in names:
        if not DEVICE_ID_RE.fullmatch(name):
            raise PkiError(f"client name must match {DEVICE_ID_RE.pattern}: {name!r}")
    issued, kept = [], []
    for name in tqdm(names, disable=not progress, unit="cert", desc="client certificates"):
        if not reissue and pki.client_cert(name).exists():
            kept.append(name)
            continue
        issue_client(pki, name, days)
        issued.append(name)
    return issued, kept


def init_pki(root: Path, hosts: list[str] | None = None, days: int = CERT_DAYS,
             reissue_server: bool = True) -> tuple[Pki, bool]:
    """Create the CA if missing and (re)issue the server certificate; returns (pki, whether the CA is new).

    Args:
        root: the PKI folder (created, 0700).
        hosts: names / IPs clients use to reach the broker (default localhost and 127.0.0.1).
        days: server certificate validity.
        reissue_server: False keeps an existing server certificate (the demo's "ensure" mode).
    """
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    pki = Pki(root)
    new_ca = not pki.ca_cert.exists()
    if new_ca:
        create_ca(pki)
        logger.info("new CA in %s", root)
    if reissue_server or new_ca or not pki.server_cert.exists():
        issue_server(pki, list(hosts or DEFAULT_HOSTS), days)
    return pki, new_ca


def describe(path: Path) -> str:
    """Subject, SANs and expiry of a certificate file, one line (for the CLI)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    cn = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(v) for v in ext.get_values_for_type(x509.DNSName)] + \
               [str(v) for v in ext.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    alt = f" for {', '.join(sans)}" if sans else ""
    return f"{path}: CN={cn[0] if cn else '?'}{alt}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"
