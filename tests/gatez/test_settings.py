"""Settings from the environment: defaults, and a refused value named with what is allowed."""

from __future__ import annotations

import pytest

from gatez.settings import Settings


def test_the_lean_ext_proc_server_is_the_default_and_grpcio_can_be_chosen() -> None:
    assert Settings.from_env({}).extproc_server == "h2"
    assert Settings.from_env({"GATEZ_EXTPROC_SERVER": "grpcio"}).extproc_server == "grpcio"


def test_an_unknown_ext_proc_server_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="GATEZ_EXTPROC_SERVER must be one of h2, grpcio"):
        Settings.from_env({"GATEZ_EXTPROC_SERVER": "grpc"})
