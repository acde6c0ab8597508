"""gatez.secrets: secret files created once with mode 0600, variables before files, keys and
tokens listed newest first; provider credentials sealed with AES-GCM, bound to their provider,
opened by compile_policy or refused with a reason that names keys, never secrets."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from gatez.errors import InvalidPolicy
from gatez.policy import compile_policy
from gatez.secrets import (
    DATAPLANE_TOKEN_PREFIX,
    SecretBox,
    SecretConfigError,
    dataplane_tokens,
    key_id,
    new_secret_key,
    read_secret_file,
    seal_clear_credentials,
    secret_box,
)
from gatez.settings import Settings
from gatez.v1 import policy_pb2

API_KEY = "sk-proj-very-secret-0001"


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"GATEZ_STATE_DIR": str(tmp_path), **env})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_missing_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "secret.key"
    first = read_secret_file(path, generate=lambda: "first")
    assert first == "first\n"
    assert mode(path) == 0o600
    assert read_secret_file(path, generate=lambda: "second") == "first\n"


def test_a_missing_file_without_a_generator_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SecretConfigError, match="does not exist"):
        read_secret_file(tmp_path / "secret.key")


def test_the_control_service_creates_both_secrets_and_a_data_plane_reads_them(
    tmp_path: Path,
) -> None:
    control = settings(tmp_path)
    tokens = dataplane_tokens(control, create=True)
    box = secret_box(control, create=True)
    assert mode(tmp_path / "dataplane.token") == 0o600
    assert mode(tmp_path / "secret.key") == 0o600
    assert len(tokens) == 1 and tokens[0].startswith(DATAPLANE_TOKEN_PREFIX)
    assert len(tokens[0]) >= len(DATAPLANE_TOKEN_PREFIX) + 43  # 256 bits

    data_plane = settings(
        tmp_path / "dataplane",
        GATEZ_DATAPLANE_TOKEN_FILE=str(tmp_path / "dataplane.token"),
        GATEZ_SECRET_KEY_FILE=str(tmp_path / "secret.key"),
    )
    assert dataplane_tokens(data_plane, create=False) == tokens
    assert secret_box(data_plane, create=False).key_id == box.key_id


def test_a_data_plane_never_makes_up_a_secret(tmp_path: Path) -> None:
    data_plane = settings(tmp_path)
    with pytest.raises(SecretConfigError, match="set GATEZ_DATAPLANE_TOKEN or"):
        dataplane_tokens(data_plane, create=False)
    with pytest.raises(SecretConfigError, match="set GATEZ_SECRET_KEY or"):
        secret_box(data_plane, create=False)
    assert list(tmp_path.iterdir()) == []


def test_a_variable_wins_over_its_file(tmp_path: Path) -> None:
    key = new_secret_key()
    chosen = settings(tmp_path, GATEZ_DATAPLANE_TOKEN="gzdp_a,gzdp_b", GATEZ_SECRET_KEY=key)
    assert dataplane_tokens(chosen, create=True) == ("gzdp_a", "gzdp_b")
    assert secret_box(chosen, create=True).key_id == key_id(base64.b64decode(key))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value",
    ["not base64 at all!", base64.b64encode(b"too short").decode(), ""],
    ids=["not-base64", "short", "empty-file"],
)
def test_a_malformed_key_is_refused_without_echoing_it(tmp_path: Path, value: str) -> None:
    (tmp_path / "secret.key").write_text(value)
    with pytest.raises(SecretConfigError) as raised:
        secret_box(settings(tmp_path), create=True)
    if value:
        assert value not in str(raised.value)
        assert "secret key 1 in" in str(raised.value)


def test_seal_and_open() -> None:
    box = SecretBox.generate()
    sealed = box.seal("openai", API_KEY)
    assert sealed.provider == "openai" and sealed.api_key == ""
    assert sealed.key_id == box.key_id
    assert API_KEY.encode() not in sealed.SerializeToString()
    assert box.open_credential(sealed) == API_KEY
    # A fresh nonce each time: the same secret never seals to the same bytes.
    assert box.seal("openai", API_KEY).sealed_api_key != sealed.sealed_api_key


def test_a_sealed_key_cannot_be_moved_to_another_provider() -> None:
    box = SecretBox.generate()
    moved = box.seal("openai", API_KEY)
    moved.provider = "attacker-controlled"
    with pytest.raises(InvalidPolicy, match="sealed for another provider"):
        box.open_credential(moved)


def test_an_altered_ciphertext_does_not_open() -> None:
    box = SecretBox.generate()
    sealed = box.seal("openai", API_KEY)
    altered = bytearray(sealed.sealed_api_key)
    altered[-1] ^= 1
    sealed.sealed_api_key = bytes(altered)
    with pytest.raises(InvalidPolicy, match="altered"):
        box.open_credential(sealed)


def test_another_key_is_named_by_its_id_never_by_its_value() -> None:
    mine, theirs = SecretBox.generate(), SecretBox.generate()
    with pytest.raises(InvalidPolicy) as raised:
        mine.open_credential(theirs.seal("openai", API_KEY))
    message = str(raised.value)
    assert theirs.key_id in message and mine.key_id in message
    assert API_KEY not in message


def test_rotation_opens_with_an_older_key_and_reseals_with_the_newest(tmp_path: Path) -> None:
    old, new = new_secret_key(), new_secret_key()
    before = secret_box(settings(tmp_path, GATEZ_SECRET_KEY=old), create=False)
    sealed = before.seal("openai", API_KEY)
    (tmp_path / "secret.key").write_text(f"{new}\n{old}\n")
    rotated = secret_box(settings(tmp_path), create=False)
    assert rotated.key_ids == {before.key_id, key_id(base64.b64decode(new))}
    assert rotated.open_credential(sealed) == API_KEY
    resealed = rotated.reseal(sealed)
    assert resealed.key_id == rotated.key_id != before.key_id
    assert rotated.open_credential(resealed) == API_KEY


def snapshot(*credentials: policy_pb2.ProviderCredential) -> policy_pb2.PolicySnapshot:
    return policy_pb2.PolicySnapshot(
        version=1,
        providers=[
            policy_pb2.Provider(
                name="openai", kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url="https://x/v1"
            )
        ],
        provider_credentials=list(credentials),
    )


def test_compile_policy_opens_sealed_credentials() -> None:
    box = SecretBox.generate()
    compiled = compile_policy(snapshot(box.seal("openai", API_KEY)), box)
    assert compiled.providers["openai"].api_key == API_KEY


def test_compile_policy_without_a_key_refuses_a_sealed_credential() -> None:
    box = SecretBox.generate()
    with pytest.raises(InvalidPolicy, match="holds no secret key"):
        compile_policy(snapshot(box.seal("openai", API_KEY)))


def test_compile_policy_refuses_a_credential_both_sealed_and_clear() -> None:
    box = SecretBox.generate()
    both = box.seal("openai", API_KEY)
    both.api_key = API_KEY
    with pytest.raises(InvalidPolicy, match="both sealed and clear"):
        compile_policy(snapshot(both), box)


def test_clear_credentials_are_sealed_in_place() -> None:
    box = SecretBox.generate()
    legacy = snapshot(policy_pb2.ProviderCredential(provider="openai", api_key=API_KEY))
    assert seal_clear_credentials(legacy, box) == 1
    assert API_KEY.encode() not in legacy.SerializeToString()
    assert compile_policy(legacy, box).providers["openai"].api_key == API_KEY
    assert seal_clear_credentials(legacy, box) == 0
