"""The gateway's own TLS certificate: a local CA and a server certificate made on first start
(what `make run` serves HTTPS with), or the operator's certificate files (production).

Keys are ECDSA P-256 (quick to make, accepted by every TLS stack the proxies run on);
certificates carry what public CAs' do (basic constraints, key usage, the server-auth EKU,
subject and authority key ids), so a strict verifier accepts them for the right reason.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gatez.processes import write_private

# The names a local client reaches the gateway by.
LOCAL_NAMES: Final = ("localhost", "127.0.0.1", "::1")
DEFAULT_TLS_PORT: Final = 9443
# Clocks of the machines involved may differ a little.
CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
AUTHORITY_VALIDITY: Final = datetime.timedelta(days=3650)
# Within what public CAs may issue (398 days).
SERVER_VALIDITY: Final = datetime.timedelta(days=397)
# A certificate this close to its end is made again rather than served.
RENEW_BEFORE: Final = datetime.timedelta(days=7)

CERT_FILE_ENV: Final = "GATEZ_TLS_CERT_FILE"
KEY_FILE_ENV: Final = "GATEZ_TLS_KEY_FILE"
PORT_ENV: Final = "GATEZ_TLS_PORT"

_SERVER_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_AUTHORITY_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate and its private key."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, cert_file: Path, key_file: Path) -> None:
        """The certificate to `cert_file`, the key to `key_file` (mode 0600)."""
        write_private(key_file, self.key_pem().decode())
        cert_file.parent.mkdir(parents=True, exist_ok=True)
        cert_file.write_bytes(self.certificate_pem())


@dataclass(frozen=True, slots=True)
class CertificateAuthority(IssuedCertificate):
    """A self-signed CA that issues server certificates."""

    @classmethod
    def create(
        cls,
        name: str,
        *,
        validity: datetime.timedelta = AUTHORITY_VALIDITY,
        now: datetime.datetime | None = None,
    ) -> CertificateAuthority:
        """A new CA named `name`, valid from now (give or take the clock skew) for `validity`."""
        now = now or datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_AUTHORITY_KEY_USAGE, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        """A CA from its PEM files (ValueError when they are not an ECDSA CA and its key)."""
        issued = load_certificate(cert_file, key_file)
        constraints = issued.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        if not constraints.value.ca:
            raise ValueError(f"{cert_file} is not a CA certificate")
        return cls(issued.key, issued.certificate)

    def issue(
        self,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCertificate:
        """A server certificate for these names (subject alternative names; the first is also
        the common name), valid from `not_before` to `not_after` (default: now, give or take
        the clock skew, for `SERVER_VALIDITY`, and never past the CA's own end)."""
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if not names:
            raise ValueError("a server certificate needs at least one DNS name or IP address")
        now = datetime.datetime.now(datetime.UTC)
        not_after = not_after or min(now + SERVER_VALIDITY, self.certificate.not_valid_after_utc)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(names[0].value))]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_SERVER_KEY_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCertificate(key, certificate)


def load_certificate(cert_file: Path, key_file: Path) -> IssuedCertificate:
    """A certificate Gatez made (ECDSA) from its PEM files; ValueError saying which file is
    wrong otherwise."""
    certificate, key = check_certificate_files(cert_file, key_file)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file} is not an ECDSA key")
    return IssuedCertificate(key, certificate)


def check_certificate_files(
    cert_file: Path, key_file: Path
) -> tuple[x509.Certificate, PrivateKeyTypes]:
    """A PEM certificate (the first of its file's chain) and its unencrypted private key (RSA,
    ECDSA…), checked to belong together; ValueError saying which file is wrong otherwise."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError as error:
        raise ValueError(f"{cert_file} holds no PEM certificate: {error}") from None
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{key_file} holds no unencrypted PEM private key: {error}") from None
    if key.public_key() != certificate.public_key():
        raise ValueError(f"{key_file} is not the key of {cert_file}")
    return certificate, key


@dataclass(frozen=True, slots=True)
class ServerTls:
    """What a proxy's TLS listener is given: its certificate chain and key (PEM files), and the
    CA file clients trust it by when Gatez made the certificate (None for an operator's)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class TlsListenerSettings:
    """The gateway's TLS listener, from $GATEZ_TLS_PORT (0: none), $GATEZ_TLS_CERT_FILE and
    $GATEZ_TLS_KEY_FILE (both or neither; neither: a local certificate is made)."""

    port: int = DEFAULT_TLS_PORT
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TlsListenerSettings:
        env = os.environ if environ is None else environ
        raw_port = env.get(PORT_ENV, "").strip() or str(DEFAULT_TLS_PORT)
        if not raw_port.isdigit() or int(raw_port) > 65535:
            raise ValueError(f"{PORT_ENV} is a port number (0: no TLS listener), not {raw_port!r}")
        cert, key = env.get(CERT_FILE_ENV, "").strip(), env.get(KEY_FILE_ENV, "").strip()
        if bool(cert) != bool(key):
            raise ValueError(f"set both {CERT_FILE_ENV} and {KEY_FILE_ENV}, or neither")
        return cls(
            port=int(raw_port),
            cert_file=Path(cert).resolve() if cert else None,
            key_file=Path(key).resolve() if key else None,
        )

    def server_tls(self, local_directory: Path) -> ServerTls:
        """The operator's files (checked now, so a wrong one stops the start with the reason),
        or the local certificate kept in `local_directory`."""
        if self.cert_file is None or self.key_file is None:
            return local_server_tls(local_directory)
        check_certificate_files(self.cert_file, self.key_file)
        return ServerTls(self.cert_file, self.key_file)


def local_server_tls(
    directory: Path,
    names: Sequence[str] = LOCAL_NAMES,
    *,
    now: datetime.datetime | None = None,
) -> ServerTls:
    """The local CA (`ca.pem`) and a server certificate it issued for `names` (`server.pem`,
    `server-key.pem`) in `directory`, made on the first call and reused by later ones; each is
    made again when missing, unreadable or near its end, and the server certificate also when
    it lacks one of `names` or another CA issued it. Keys are mode 0600."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tls = ServerTls(
        cert_file=directory / "server.pem",
        key_file=directory / "server-key.pem",
        ca_file=directory / "ca.pem",
    )
    assert tls.ca_file is not None
    ca_key_file = directory / "ca-key.pem"
    try:
        authority = CertificateAuthority.load(tls.ca_file, ca_key_file)
        if _near_end(authority.certificate, now):
            raise ValueError("the local CA is near its end")
    except (OSError, ValueError):
        authority = CertificateAuthority.create("Gatez local CA", now=now)
        authority.write(tls.ca_file, ca_key_file)
    try:
        server = load_certificate(tls.cert_file, tls.key_file)
        reason = server_certificate_problem(server.certificate, authority, names, now)
    except (OSError, ValueError) as error:
        reason = str(error)
    if reason is not None:
        dns_names = [name for name in names if not _is_ip(name)]
        ip_addresses = [name for name in names if _is_ip(name)]
        authority.issue(dns_names=dns_names, ip_addresses=ip_addresses).write(
            tls.cert_file, tls.key_file
        )
    return tls


def server_certificate_problem(
    certificate: x509.Certificate,
    authority: CertificateAuthority,
    names: Sequence[str],
    now: datetime.datetime,
) -> str | None:
    """Why `certificate` cannot serve `names` as `authority`'s server certificate now, or None."""
    if certificate.issuer != authority.certificate.subject:
        return "issued by another CA"
    try:
        certificate.verify_directly_issued_by(authority.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the local CA"
    if _near_end(certificate, now) or certificate.not_valid_before_utc > now:
        return "outside its validity"
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    present = {name.lower() for name in sans.get_values_for_type(x509.DNSName)}
    present |= {str(address) for address in sans.get_values_for_type(x509.IPAddress)}
    missing = [name for name in names if _normal(name) not in present]
    return f"missing names {missing}" if missing else None


def _near_end(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    return certificate.not_valid_after_utc - RENEW_BEFORE <= now


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _normal(name: str) -> str:
    return str(ipaddress.ip_address(name)) if _is_ip(name) else name.lower()
