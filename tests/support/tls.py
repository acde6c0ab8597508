"""A throwaway certificate authority for TLS tests: a CA, leaf certificates for the names a test
chooses (valid, expired, or naming another host), PEM files in a directory, and the CA bundle a
proxy under test trusts.

The bundle is the system bundle plus the test CA, in one file: APISIX takes exactly one trusted
certificate file (`apisix.ssl.ssl_trusted_certificate`), so Envoy gets the same form and both
proxies still trust the real providers' CAs.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gatez.envoy_config import CA_BUNDLE
from gatez.tls import CertificateAuthority

SYSTEM_CA_BUNDLE: Final = Path(CA_BUNDLE)
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
    """A CA made for one test run (the shipped generator, `gatez.tls`), its certificate written
    to `directory` as `ca.pem`, valid for two days."""

    def __init__(self, directory: Path, name: str = "Gatez test CA") -> None:
        self.directory = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self.authority = CertificateAuthority.create(name, validity=_VALIDITY)
        self.certificate = self.authority.certificate
        self.cert_file = directory / "ca.pem"
        self.cert_file.write_bytes(self.certificate_pem())

    def certificate_pem(self) -> bytes:
        return self.authority.certificate_pem()

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
        issued = self.authority.issue(
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            not_before=not_before,
            not_after=not_after or datetime.datetime.now(datetime.UTC) + _VALIDITY,
        )
        files = CertificateFiles(
            cert_file=self.directory / f"{file_stem}.pem",
            key_file=self.directory / f"{file_stem}-key.pem",
        )
        issued.write(files.cert_file, files.key_file)
        return files

    def bundle(self, path: Path | None = None, *, system: Path = SYSTEM_CA_BUNDLE) -> Path:
        """The system's CA bundle with this CA appended, written to `path` (default
        `<directory>/ca-bundle.pem`): the one trusted-certificate file a proxy is given."""
        path = path or self.directory / "ca-bundle.pem"
        system_pem = system.read_bytes()
        separator = b"" if system_pem.endswith(b"\n") or not system_pem else b"\n"
        path.write_bytes(system_pem + separator + self.certificate_pem())
        return path
