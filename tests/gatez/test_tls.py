"""The gateway's local certificate: what it certifies, when it is reused and when made again, and
the settings that replace it with an operator's files."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gatez.tls import (
    LOCAL_NAMES,
    RENEW_BEFORE,
    SERVER_VALIDITY,
    CertificateAuthority,
    TlsListenerSettings,
    local_server_tls,
)


def read(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_local_certificate_names_the_local_addresses_and_serves_only_as_a_server(
    tmp_path: Path,
) -> None:
    tls = local_server_tls(tmp_path / "tls")
    assert tls.ca_file is not None
    server, authority = read(tls.cert_file), read(tls.ca_file)

    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    usage = server.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    )
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert authority.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(authority)
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert SERVER_VALIDITY <= lifetime <= SERVER_VALIDITY + datetime.timedelta(minutes=10)
    now = datetime.datetime.now(datetime.UTC)
    assert server.not_valid_before_utc <= now <= server.not_valid_after_utc
    for key in (tls.key_file, tmp_path / "tls" / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

    # A standard client that trusts the CA accepts the certificate for each local name, and
    # only for those.
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(tls.cert_file, tls.key_file)
    client = ssl.create_default_context(cafile=tls.ca_file)
    for name in LOCAL_NAMES:
        handshake(client, server_side, name)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(client, server_side, "gateway.example.com")


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str) -> None:
    """One TLS handshake over a socket pair (the server side in a thread)."""
    left, right = socket.socketpair()
    with left, right:
        accepting = threading.Thread(target=_serve_one, args=(server, right), daemon=True)
        accepting.start()
        try:
            with client.wrap_socket(left, server_hostname=server_hostname):
                pass
        finally:
            left.close()
            accepting.join(timeout=5)


def _serve_one(server: ssl.SSLContext, sock: socket.socket) -> None:
    with contextlib.suppress(OSError), server.wrap_socket(sock, server_side=True):
        pass


def test_the_local_certificate_is_reused_while_it_fits(tmp_path: Path) -> None:
    first = local_server_tls(tmp_path)
    files = (first.cert_file, first.key_file, tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    before = [path.read_bytes() for path in files]

    again = local_server_tls(tmp_path)

    assert again == first
    assert [path.read_bytes() for path in files] == before


@pytest.mark.parametrize(
    ("case", "ca_kept"),
    [
        ("server expires soon", True),
        ("server misses a name", True),
        ("server file missing", True),
        ("server key of another certificate", True),
        ("CA missing", False),
        ("CA expires soon", False),
    ],
)
def test_the_local_certificate_is_made_again_when_it_no_longer_fits(
    tmp_path: Path, case: str, ca_kept: bool
) -> None:
    first = local_server_tls(tmp_path)
    assert first.ca_file is not None
    ca_before = first.ca_file.read_bytes()
    server_before = first.cert_file.read_bytes()
    now = None
    names: tuple[str, ...] = LOCAL_NAMES
    if case == "server expires soon":
        now = read(first.cert_file).not_valid_after_utc - RENEW_BEFORE
    elif case == "server misses a name":
        names = (*LOCAL_NAMES, "gateway.internal")
    elif case == "server file missing":
        first.cert_file.unlink()
    elif case == "server key of another certificate":
        first.key_file.write_bytes((tmp_path / "ca-key.pem").read_bytes())
    elif case == "CA missing":
        first.ca_file.unlink()
    elif case == "CA expires soon":
        now = read(first.ca_file).not_valid_after_utc - datetime.timedelta(days=1)

    again = local_server_tls(tmp_path, names, now=now)

    assert again.ca_file is not None
    assert (again.ca_file.read_bytes() == ca_before) is ca_kept
    assert again.cert_file.read_bytes() != server_before
    server = read(again.cert_file)
    server.verify_directly_issued_by(read(again.ca_file))
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v) for v in sans.get_values_for_type(x509.DNSName)} >= {
        n for n in names if not n[0].isdigit() and ":" not in n
    }


def test_settings_take_the_operators_certificate_and_check_it(tmp_path: Path) -> None:
    authority = CertificateAuthority.create("Operator CA")
    authority.issue(dns_names=["gateway.example.com"]).write(
        tmp_path / "gw.pem", tmp_path / "gw-key.pem"
    )
    settings = TlsListenerSettings.from_env(
        {
            "GATEZ_TLS_PORT": "8443",
            "GATEZ_TLS_CERT_FILE": str(tmp_path / "gw.pem"),
            "GATEZ_TLS_KEY_FILE": str(tmp_path / "gw-key.pem"),
        }
    )
    assert settings.port == 8443
    tls = settings.server_tls(tmp_path / "unused")
    assert (tls.cert_file, tls.key_file, tls.ca_file) == (
        tmp_path / "gw.pem",
        tmp_path / "gw-key.pem",
        None,
    )
    assert not (tmp_path / "unused").exists()

    # An RSA certificate (most public CAs' kind) is taken too.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.example.com")])
    rsa_certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime.now(datetime.UTC))
        .not_valid_after(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    (tmp_path / "rsa.pem").write_bytes(rsa_certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "rsa-key.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    rsa_settings = TlsListenerSettings(8443, tmp_path / "rsa.pem", tmp_path / "rsa-key.pem")
    assert rsa_settings.server_tls(tmp_path / "unused").cert_file == tmp_path / "rsa.pem"

    # The key of another certificate stops the start, naming the file.
    authority.write(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    wrong = TlsListenerSettings(8443, tmp_path / "gw.pem", tmp_path / "ca-key.pem")
    with pytest.raises(ValueError, match=r"ca-key\.pem is not the key of"):
        wrong.server_tls(tmp_path / "unused")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEZ_TLS_PORT": "https"}, "GATEZ_TLS_PORT is a port number"),
        ({"GATEZ_TLS_PORT": "70000"}, "GATEZ_TLS_PORT is a port number"),
        ({"GATEZ_TLS_CERT_FILE": "/x.pem"}, "set both GATEZ_TLS_CERT_FILE and GATEZ_TLS_KEY_FILE"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TlsListenerSettings.from_env(env)


def test_settings_default_to_a_local_certificate_on_9443() -> None:
    assert TlsListenerSettings.from_env({}) == TlsListenerSettings(9443, None, None)
    assert TlsListenerSettings.from_env({"GATEZ_TLS_PORT": "0"}).port == 0
