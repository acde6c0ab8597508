"""`python -m extproc.apisix [--state-dir DIR] [--env-file FILE]`: the APISIX ext-plugin runner.

Settings come from GATEZ_* (and APISIX_*) in the environment; `--env-file` (NAME=value lines)
overrides them and `--state-dir` overrides GATEZ_STATE_DIR. Started by APISIX, the runner
refuses to start without an absolute state directory (see `runner_environment`); the reason goes
to stderr, which APISIX copies into its error.log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvloop

from extproc.apisix.server import RunnerSettings, StartupError, runner_environment, serve
from gatez.apisix_config import RUNNER_REFUSAL
from gatez.settings import Settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.apisix", description="Gatez as APISIX's external-plugin runner."
    )
    parser.add_argument(
        "--state-dir", help="the data plane's state directory (absolute; GATEZ_STATE_DIR)"
    )
    parser.add_argument(
        "--env-file",
        help="a file of GATEZ_*/OTEL_* NAME=value lines, over the environment (absolute)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        environ = runner_environment(os.environ, state_dir=args.state_dir, env_file=args.env_file)
        # The whole process runs with it (OpenTelemetry's SDK reads OTEL_* from os.environ).
        os.environ.update(environ)
        settings = Settings.from_env(environ)
        runner_settings = RunnerSettings.from_env(settings, environ)
    except (StartupError, ValueError) as error:
        sys.exit(f"{RUNNER_REFUSAL} {error}")
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    uvloop.run(serve(settings, runner_settings))


if __name__ == "__main__":
    main()
