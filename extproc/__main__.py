"""`python -m extproc`: run one data-plane process (settings from GATEZ_* variables)."""

from __future__ import annotations

import logging

import uvloop

from extproc.server import serve
from gatez.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
