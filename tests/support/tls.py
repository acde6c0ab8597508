"""A throwaway certificate authority for TLS tests: a CA, leaf certificates for the names a test
chooses (valid, expired, or naming another host), PEM files in a directory, and the CA bundle a
proxy under test trusts.

The bundle is the system bundle plus the test CA, in one file: APISIX takes exactly one trusted
certificate file (`apisix.ssl.ssl_trusted_certificate`), so Envoy gets the same form and both
proxies still trust the real providers' CAs.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gatez.envoy_config import CA_BUNDLE

SYSTEM_CA_BUNDLE: Final = Path(CA_BUNDLE)
# Clocks of the machines a test runs on may differ a little.
_CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
_VALIDITY: Final = datetime.timedelta(days=2)


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A certificate and its private key, as PEM files (what `ssl.load_cert_chain` takes)."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting this certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


class LocalCertificateAuthority:
    """A CA made for one test run, its key and certificate written to `directory`.

    Keys are ECDSA P-256 (quick to make); certificates carry what public CAs' do (basic
    constraints, key usage, server-auth EKU, subject and authority key ids), so a strict
    verifier accepts them for the right reason.
    """

    def __init__(self, directory: Path, name: str = "Gatez test CA") -> None:
        self.directory = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        public_key = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = directory / "ca.pem"
        self.cert_file.write_bytes(self.certificate_pem())

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        file_stem: str,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> CertificateFiles:
        """A server certificate for these names (subject alternative names; the first name is
        also the common name), valid from `not_before` to `not_after` (default: now, give or
        take, to two days on), written as `<file_stem>.pem` and `<file_stem>-key.pem`."""
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if not names:
            raise ValueError("a server certificate needs at least one DNS name or IP address")
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        common_name = str(names[0].value)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _CLOCK_SKEW)
            .not_valid_after(not_after or now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        files = CertificateFiles(
            cert_file=self.directory / f"{file_stem}.pem",
            key_file=self.directory / f"{file_stem}-key.pem",
        )
        files.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        files.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files.key_file.chmod(0o600)
        return files

    def bundle(self, path: Path | None = None, *, system: Path = SYSTEM_CA_BUNDLE) -> Path:
        """The system's CA bundle with this CA appended, written to `path` (default
        `<directory>/ca-bundle.pem`): the one trusted-certificate file a proxy is given."""
        path = path or self.directory / "ca-bundle.pem"
        system_pem = system.read_bytes()
        separator = b"" if system_pem.endswith(b"\n") or not system_pem else b"\n"
        path.write_bytes(system_pem + separator + self.certificate_pem())
        return path
