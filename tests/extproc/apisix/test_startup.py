"""How the runner gets its settings however APISIX starts it: `--state-dir` and `--env-file` from
`ext-plugin.cmd` over the environment, and a clear refusal (on stderr, which APISIX copies into
its error.log) when started by APISIX without an absolute state directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from extproc.apisix.server import RunnerSettings, StartupError, read_env_file, runner_environment
from gatez.apisix_config import RUNNER_REFUSAL
from gatez.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
BY_APISIX = {"APISIX_LISTEN_ADDRESS": "unix:/prefix/apisix/conf/apisix-1.sock"}


def test_the_state_dir_and_the_env_file_win_over_the_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "runner.env"
    env_file.write_text(
        "# written by the deployment\n"
        "\n"
        "GATEZ_CONTROL_ADDRESS=10.0.0.5:4001\n"
        "GATEZ_STATE_DIR=/from/the/file\n"
        "OTEL_SERVICE_NAME=gatez-runner=a\n"  # the value runs to the end of the line
    )
    environ = {
        **BY_APISIX,
        "GATEZ_CONTROL_ADDRESS": "127.0.0.1:4001",
        "GATEZ_NODE_ID": "edge-1",
        "GATEZ_STATE_DIR": "/from/the/environment",
    }
    env = runner_environment(environ, state_dir=str(tmp_path / "state"), env_file=str(env_file))
    assert env["GATEZ_CONTROL_ADDRESS"] == "10.0.0.5:4001"
    assert env["OTEL_SERVICE_NAME"] == "gatez-runner=a"
    assert env["GATEZ_NODE_ID"] == "edge-1"  # what the file does not set stays
    assert env["GATEZ_STATE_DIR"] == str(tmp_path / "state")  # the command line wins over both
    settings = Settings.from_env(env)
    assert settings.state_dir == tmp_path / "state"
    assert settings.secret_key_file == tmp_path / "state" / "secret.key"
    assert RunnerSettings.from_env(settings, env).socket_path == Path(
        "/prefix/apisix/conf/apisix-1.sock"
    )


@pytest.mark.parametrize(
    ("environ", "state_dir", "missing"),
    [
        ({}, None, "GATEZ_STATE_DIR=''"),
        ({"GATEZ_STATE_DIR": ".gatez"}, None, "GATEZ_STATE_DIR='.gatez'"),
        ({"GATEZ_STATE_DIR": "/abs"}, "relative/state", "GATEZ_STATE_DIR='relative/state'"),
    ],
)
def test_started_by_apisix_without_an_absolute_state_dir_it_refuses(
    environ: dict[str, str], state_dir: str | None, missing: str
) -> None:
    with pytest.raises(StartupError, match="started by APISIX") as refused:
        runner_environment({**BY_APISIX, **environ}, state_dir=state_dir)
    assert missing in str(refused.value)
    assert "--state-dir /absolute/path" in str(refused.value)


def test_started_by_apisix_relative_secret_files_and_env_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="GATEZ_SECRET_KEY_FILE must be an absolute path"):
        runner_environment(
            {**BY_APISIX, "GATEZ_SECRET_KEY_FILE": "secret.key"}, state_dir=str(tmp_path)
        )
    with pytest.raises(StartupError, match="--env-file must be an absolute path"):
        runner_environment(BY_APISIX, state_dir=str(tmp_path), env_file="runner.env")


def test_started_by_hand_the_defaults_stay() -> None:
    # Without APISIX the working directory is the operator's: a relative state dir is theirs.
    assert runner_environment({"GATEZ_STATE_DIR": ".gatez"}) == {"GATEZ_STATE_DIR": ".gatez"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("GATEZ_SECRET_KEY", "line 2: expected NAME=value"),
        ("=value", "line 2: expected NAME=value"),
        ("LD_PRELOAD=/tmp/x.so", "line 2: 'LD_PRELOAD' is not a setting of the runner"),
    ],
)
def test_a_bad_env_file_line_is_refused_by_number_without_its_value(
    tmp_path: Path, line: str, message: str
) -> None:
    env_file = tmp_path / "runner.env"
    env_file.write_text(f"GATEZ_NODE_ID=edge-1\n{line}\n")
    with pytest.raises(StartupError, match=message) as refused:
        read_env_file(env_file)
    assert "/tmp/x.so" not in str(refused.value)


def test_a_missing_env_file_is_refused() -> None:
    with pytest.raises(StartupError) as refused:
        read_env_file(Path("/nonexistent/runner.env"))
    assert str(refused.value) == (
        "cannot read the settings file /nonexistent/runner.env: No such file or directory"
    )


def test_the_runner_process_refuses_on_stderr_and_exits() -> None:
    """As APISIX starts it (its own working directory, APISIX_LISTEN_ADDRESS set) with a
    config.yaml that forgot --state-dir: it exits at once, saying why, on stderr."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **BY_APISIX}
    done = subprocess.run(
        [sys.executable, "-m", "extproc.apisix"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"{RUNNER_REFUSAL} started by APISIX"), done.stderr
    assert "--state-dir" in done.stderr
