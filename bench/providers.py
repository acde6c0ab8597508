"""`python -m bench.providers`: µs per `extproc.providers.provider_request` call, per kind.

Everything but Bedrock with SigV4 joins strings; SigV4 adds a SHA-256 of the body and the
signature's HMACs (botocore `SigV4Auth`; printed alone too, without the path building).
"""

from __future__ import annotations

import argparse
import timeit

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from extproc.providers import provider_request
from gatez.policy import ProviderTarget, compile_policy
from gatez.v1 import policy_pb2 as pb

BEDROCK = "https://bedrock-runtime.us-east-1.amazonaws.com"
KEY_PAIR = orjson.dumps(
    {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "secret", "session_token": "token"}
).decode()
PROVIDERS = [
    (
        pb.Provider(
            name="openai", kind=pb.PROVIDER_KIND_OPENAI, base_url="https://api.openai.com/v1"
        ),
        "k",
    ),
    (
        pb.Provider(
            name="azure",
            kind=pb.PROVIDER_KIND_AZURE_OPENAI,
            base_url="https://a.openai.azure.com",
            azure_api_version="2024-10-21",
        ),
        "k",
    ),
    (
        pb.Provider(
            name="anthropic", kind=pb.PROVIDER_KIND_ANTHROPIC, base_url="https://api.anthropic.com"
        ),
        "k",
    ),
    (
        pb.Provider(
            name="gemini",
            kind=pb.PROVIDER_KIND_GEMINI,
            base_url="https://generativelanguage.googleapis.com",
        ),
        "k",
    ),
    (
        pb.Provider(name="ollama", kind=pb.PROVIDER_KIND_OLLAMA, base_url="http://localhost:11434"),
        "k",
    ),
    (
        pb.Provider(
            name="bedrock-api-key",
            kind=pb.PROVIDER_KIND_BEDROCK,
            base_url=BEDROCK,
            auth=pb.PROVIDER_AUTH_API_KEY,
        ),
        "k",
    ),
    (pb.Provider(name="bedrock-sigv4", kind=pb.PROVIDER_KIND_BEDROCK, base_url=BEDROCK), KEY_PAIR),
]
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--body-bytes", type=int, default=2_000)
    args = parser.parse_args()
    snapshot = pb.PolicySnapshot(providers=[provider for provider, _ in PROVIDERS])
    for provider, credential in PROVIDERS:
        snapshot.provider_credentials.add(provider=provider.name, api_key=credential)
    policy = compile_policy(snapshot)
    body = b'{"messages":[{"role":"user","content":"' + b"x" * args.body_bytes + b'"}]}'
    print(f"µs per call ({args.calls} calls, {len(body)}-byte body), best of 5:")
    for name, target in policy.providers.items():
        print(f"  {name:16} {_best(lambda t=target: _call(t, body), args.calls):7.2f}")
    sigv4 = policy.providers["bedrock-sigv4"]
    print(f"  {'SigV4Auth alone':16} {_best(lambda: _stock(sigv4, body), args.calls):7.2f}")


def _call(target: ProviderTarget, body: bytes) -> object:
    return provider_request(target, model=MODEL, stream=True, body=body)


def _stock(target: ProviderTarget, body: bytes) -> None:
    assert target.aws_credentials is not None
    request = AWSRequest(
        method="POST",
        url=f"https://{target.authority}/model/x/converse",
        data=body,
        headers={"host": target.authority},
    )
    SigV4Auth(target.aws_credentials, "bedrock", target.aws_region).add_auth(request)


def _best(call: object, calls: int) -> float:
    assert callable(call)
    return min(timeit.repeat(call, number=calls, repeat=5)) / calls * 1e6


if __name__ == "__main__":
    main()
