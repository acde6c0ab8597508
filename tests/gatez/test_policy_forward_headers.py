"""A provider's `forward_headers`: compiled into its allowlist (defaults included, lower case);
a name that is not a header, or the client's credential, rejects the snapshot."""

from __future__ import annotations

import pytest

from gatez.errors import InvalidPolicy
from gatez.policy import DEFAULT_FORWARD_HEADERS, compile_policy
from gatez.v1 import policy_pb2


def snapshot(*forward_headers: str) -> policy_pb2.PolicySnapshot:
    return policy_pb2.PolicySnapshot(
        providers=[
            policy_pb2.Provider(
                name="openai",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://api.openai.com/v1",
                forward_headers=forward_headers,
            )
        ]
    )


def test_a_provider_gets_the_defaults_and_what_its_policy_adds() -> None:
    compiled = compile_policy(snapshot("OpenAI-Beta", "x-forwarded-for"))
    assert compiled.providers["openai"].forward_headers == DEFAULT_FORWARD_HEADERS | {
        "openai-beta",
        "x-forwarded-for",
    }
    plain = compile_policy(snapshot()).providers["openai"].forward_headers
    assert plain == DEFAULT_FORWARD_HEADERS == {"accept", "content-type", "x-request-id"}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Authorization", "may not list 'authorization'"),
        ("x-api-key", "may not list 'x-api-key'"),
        ("x-gatez-cluster", "may not list 'x-gatez-cluster'"),
        (":authority", "not a name"),
        ("two words", "not a name"),
        ("", "not a name"),
        ("x-a\n", "not a name"),
    ],
)
def test_a_name_that_cannot_be_forwarded_rejects_the_snapshot(name: str, message: str) -> None:
    with pytest.raises(InvalidPolicy, match=message):
        compile_policy(snapshot(name))
