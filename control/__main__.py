"""`python -m control`: runs the control service with settings from the environment."""

from __future__ import annotations

import asyncio
import logging

from control.server import serve
from gatez.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # optional speed-up; the standard loop works the same
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
