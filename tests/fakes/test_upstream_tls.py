"""The fake provider over HTTPS, and the test CA's certificates: each bad certificate fails a
real verifier (Python's OpenSSL) for exactly the reason its end-to-end case claims."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import UpstreamServer
from tests.support.tls import SYSTEM_CA_BUNDLE, CertificateFiles, LocalCertificateAuthority

API_KEY = "sk-fake-tls-key"
HELLO: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "hello over tls"}
]


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> LocalCertificateAuthority:
    return LocalCertificateAuthority(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def bundle(authority: LocalCertificateAuthority) -> Path:
    return authority.bundle()


def client_context(bundle: Path, *, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(bundle))
    context.check_hostname = check_hostname
    return context


@pytest.fixture(scope="module")
def localhost_upstream(authority: LocalCertificateAuthority) -> Iterator[UpstreamServer]:
    files = authority.issue("localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    with UpstreamServer(api_key=API_KEY, certfile=files.cert_file, keyfile=files.key_file) as up:
        yield up


def test_bundle_is_the_system_bundle_plus_the_test_ca(
    authority: LocalCertificateAuthority, bundle: Path
) -> None:
    system = SYSTEM_CA_BUNDLE.read_bytes()
    content = bundle.read_bytes()
    assert content.startswith(system)
    assert content.rstrip().endswith(authority.certificate_pem().rstrip())
    # Every certificate in it loads: the system CAs and ours.
    context = client_context(bundle)
    assert context.cert_store_stats()["x509_ca"] == system.count(b"BEGIN CERTIFICATE") + 1


def test_https_upstream_serves_the_sdk_and_records_sni(
    localhost_upstream: UpstreamServer, bundle: Path
) -> None:
    localhost_upstream.clear()
    assert localhost_upstream.base_url.startswith("https://127.0.0.1:")
    base_url = f"https://localhost:{localhost_upstream.port}/v1"
    with (
        openai.DefaultHttpxClient(verify=client_context(bundle)) as http,
        openai.OpenAI(api_key=API_KEY, base_url=base_url, http_client=http, max_retries=0) as sdk,
    ):
        reply = sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in sdk.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True
            )
            if chunk.choices
        )
    assert reply.choices[0].message.content == streamed == "Echo: hello over tls"
    assert localhost_upstream.server_names[0] == "localhost"
    assert set(localhost_upstream.server_names) == {"localhost"}
    assert len(localhost_upstream.requests) == 2


def test_https_upstream_records_a_hello_without_sni(
    localhost_upstream: UpstreamServer, bundle: Path
) -> None:
    """An IP address is never sent as SNI (RFC 6066): the fake records None."""
    localhost_upstream.clear()
    with httpx.Client(verify=client_context(bundle)) as http:
        response = http.get(
            f"https://127.0.0.1:{localhost_upstream.port}/v1/models",
            headers={"authorization": f"Bearer {API_KEY}"},
        )
    assert response.status_code == 200
    assert localhost_upstream.server_names == [None]


def test_a_refused_certificate_leaves_a_hello_and_no_request(
    authority: LocalCertificateAuthority, bundle: Path
) -> None:
    files = authority.issue("other", dns_names=["other.example"])
    with UpstreamServer(api_key=API_KEY, certfile=files.cert_file, keyfile=files.key_file) as up:
        base_url = f"https://localhost:{up.port}/v1"
        with (
            openai.DefaultHttpxClient(verify=client_context(bundle)) as http,
            openai.OpenAI(
                api_key=API_KEY, base_url=base_url, http_client=http, max_retries=0
            ) as sdk,
            pytest.raises(openai.APIConnectionError),
        ):
            sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert up.server_names == ["localhost"]
        assert up.requests == []


def test_https_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        UpstreamServer(certfile=tmp_path / "cert.pem")


def _handshake(files: CertificateFiles, context: ssl.SSLContext, server_name: str) -> None:
    """A TLS handshake between `context` and a server presenting `files`, over memory BIOs."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = files.server_context().wrap_bio(server_in, server_out, server_side=True)
    client = context.wrap_bio(client_in, client_out, server_hostname=server_name)
    for _ in range(10):
        finished = True
        for endpoint in (client, server):
            try:
                endpoint.do_handshake()
            except ssl.SSLWantReadError:
                finished = False
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if finished:
            return
    raise AssertionError("the handshake did not finish")


def test_a_good_certificate_passes_the_same_handshake(
    authority: LocalCertificateAuthority, bundle: Path
) -> None:
    files = authority.issue("good", dns_names=["localhost"])
    _handshake(files, client_context(bundle), "localhost")


def test_the_other_host_certificate_fails_on_its_name_only(
    authority: LocalCertificateAuthority, bundle: Path
) -> None:
    """Its chain is good: the end-to-end case tests the host-name check, nothing else."""
    files = authority.issue("other", dns_names=["other.example"])
    _handshake(files, client_context(bundle, check_hostname=False), "localhost")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other-host", "Hostname mismatch"),
        ("untrusted-ca", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
    ],
)
def test_each_bad_certificate_fails_for_its_own_reason(
    tmp_path: Path, authority: LocalCertificateAuthority, bundle: Path, case: str, reason: str
) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    files = {
        "other-host": lambda: authority.issue("other", dns_names=["other.example"]),
        "untrusted-ca": lambda: LocalCertificateAuthority(tmp_path, "Untrusted CA").issue(
            "localhost", dns_names=["localhost"]
        ),
        "expired": lambda: authority.issue(
            "expired",
            dns_names=["localhost"],
            not_before=past,
            not_after=past + datetime.timedelta(days=1),
        ),
    }[case]()
    with pytest.raises(ssl.SSLCertVerificationError, match=reason):
        _handshake(files, client_context(bundle), "localhost")
