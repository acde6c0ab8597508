"""`python -m extproc.apisix`: the APISIX ext-plugin runner (settings from GATEZ_* and APISIX_*)."""

from __future__ import annotations

import logging

import uvloop

from extproc.apisix.server import RunnerSettings, serve
from gatez.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    uvloop.run(serve(settings, RunnerSettings.from_env(settings)))


if __name__ == "__main__":
    main()
