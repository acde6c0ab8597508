"""Settings from the environment: defaults, and a refused value named with what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatez.settings import Settings


def test_the_lean_ext_proc_server_is_the_default_and_grpcio_can_be_chosen() -> None:
    assert Settings.from_env({}).extproc_server == "h2"
    assert Settings.from_env({"GATEZ_EXTPROC_SERVER": "grpcio"}).extproc_server == "grpcio"


def test_an_unknown_ext_proc_server_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="GATEZ_EXTPROC_SERVER must be one of h2, grpcio"):
        Settings.from_env({"GATEZ_EXTPROC_SERVER": "grpc"})


def test_secret_files_default_to_the_state_dir_and_follow_their_variables(tmp_path: Path) -> None:
    defaults = Settings.from_env({"GATEZ_STATE_DIR": str(tmp_path)})
    assert defaults.dataplane_token_file == tmp_path / "dataplane.token"
    assert defaults.secret_key_file == tmp_path / "secret.key"
    chosen = Settings.from_env(
        {
            "GATEZ_STATE_DIR": str(tmp_path),
            "GATEZ_DATAPLANE_TOKEN_FILE": str(tmp_path / "elsewhere" / "token"),
            "GATEZ_SECRET_KEY_FILE": str(tmp_path / "elsewhere" / "key"),
        }
    )
    assert chosen.dataplane_token_file == tmp_path / "elsewhere" / "token"
    assert chosen.secret_key_file == tmp_path / "elsewhere" / "key"


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings.from_env(
        {
            "GATEZ_ADMIN_TOKEN": "admin-secret-value",
            "GATEZ_DATAPLANE_TOKEN": "gzdp_secret-value",
            "GATEZ_SECRET_KEY": "a2V5LXNlY3JldC12YWx1ZQ==",
        }
    )
    text = repr(settings)
    assert "secret-value" not in text and "a2V5" not in text


def test_the_semantic_cache_uses_local_qdrant_unless_a_server_is_named(tmp_path: Path) -> None:
    local = Settings.from_env({"GATEZ_STATE_DIR": str(tmp_path)})
    assert local.qdrant_url == ""
    assert local.qdrant_path == str(tmp_path / "qdrant")
    shared = Settings.from_env({"GATEZ_QDRANT_URL": "http://qdrant.internal:6333"})
    assert shared.qdrant_url == "http://qdrant.internal:6333"
