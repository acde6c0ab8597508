"""Running a fake's aiohttp app: on a bound socket until told to stop (`serve`), or on a loopback
port in a background thread with its own event loop (`BackgroundServer`), over HTTP or HTTPS.
The fakes (`openai_upstream.UpstreamServer`, `replay.ReplayServer`) differ only in their app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web


def bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(
    app: web.Application,
    sock: socket.socket,
    stop: asyncio.Event,
    *,
    on_started: Callable[[], None],
    access_log: logging.Logger | None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve `app` on the bound `sock` until `stop` is set, then shut down cleanly."""
    # A short shutdown timeout: a stream still open at stop is cut rather than awaited.
    runner = web.AppRunner(app, access_log=access_log, shutdown_timeout=0.25)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock, ssl_context=ssl_context)
        await site.start()
        on_started()
        await stop.wait()
    finally:
        await runner.cleanup()


class BackgroundServer:
    """An app on `host:port` (0: a free port, known once `start()` returns) in a background
    thread with its own event loop; HTTPS (HTTP/1.1) with `certfile` and `keyfile` (PEM, as
    `ssl.SSLContext.load_cert_chain` takes them). Use as a context manager, or call `start()`
    and `stop()`. Subclasses give the app (`create_app`) and may adjust TLS (`configure_tls`)."""

    # Names the server in its thread and its errors.
    kind = "server"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | Path | None = None,
        keyfile: str | Path | None = None,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("HTTPS needs both a certfile and a keyfile")
        self.host = host
        self._tls_files = None if certfile is None or keyfile is None else (certfile, keyfile)
        self._requested_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def create_app(self) -> web.Application:
        raise NotImplementedError

    def configure_tls(self, context: ssl.SSLContext) -> None:
        """Called with the server's TLS context before it serves (e.g. to record SNI)."""

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"the {self.kind} is not started")
        return self._port

    @property
    def scheme(self) -> str:
        return "http" if self._tls_files is None else "https"

    def start(self, timeout_s: float = 10.0) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"the {self.kind} is already started")
        sock = bound_socket(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failures: list[BaseException] = []
        app = self.create_app()
        ssl_context = self._ssl_context()

        async def run_app() -> None:
            self._stop = asyncio.Event()
            await serve(
                app,
                sock,
                self._stop,
                on_started=started.set,
                access_log=None,
                ssl_context=ssl_context,
            )

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(run_app())
            except BaseException as error:  # reported to start(), which re-raises it
                failures.append(error)
            finally:
                started.set()
                sock.close()
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"{self.kind}-{self._port}", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s) or failures:
            self.stop()
            if failures:
                raise RuntimeError(f"the {self.kind} failed to start") from failures[0]
            raise TimeoutError(f"the {self.kind} did not start within {timeout_s}s")
        return self

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self._tls_files is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self._tls_files)
        # aiohttp serves HTTP/1.1 only: a client offering h2 must not get it.
        context.set_alpn_protocols(["http/1.1"])
        self.configure_tls(context)
        return context

    def stop(self, timeout_s: float = 10.0) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None:
            return
        if stop is not None and thread.is_alive():
            # The loop closes when serve() returns, so a late stop() can find it closed already.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        self._thread = self._loop = self._stop = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
