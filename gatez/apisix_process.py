"""A real APISIX from an install prefix (`../shared/apisix-runtime/install.sh PREFIX`), started
and stopped with its own CLI: `PREFIX/bin/apisix start` daemonises nginx, whose worker spawns
the ext-plugin runner from `ext-plugin.cmd`; `apisix stop` ends both.

Only one APISIX may run per prefix (its pid file, config and runner socket live there), so
starting refuses while one from the same prefix is alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

VERSION: Final = "3.18.0"
# Where APISIX's runner socket is: conf/apisix-<master pid>.sock under APISIX's home.
RUNNER_SOCKET: Final = "apisix-{pid}.sock"


class ApisixError(RuntimeError):
    """APISIX is missing, already running from the prefix, or did not start."""


@dataclass(frozen=True, slots=True)
class ApisixInstall:
    """An APISIX install prefix: `bin/apisix` (the CLI) and `apisix/` (APISIX's home)."""

    prefix: Path

    @property
    def cli(self) -> Path:
        return self.prefix / "bin" / "apisix"

    @property
    def home(self) -> Path:
        return self.prefix / "apisix"

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def pid_file(self) -> Path:
        return self.home / "logs" / "nginx.pid"

    def runner_socket(self, master_pid: int) -> Path:
        return self.conf_dir / RUNNER_SOCKET.format(pid=master_pid)

    def version(self) -> str | None:
        """What `apisix version` prints, or None when the CLI is missing or fails."""
        if not os.access(self.cli, os.X_OK):
            return None
        try:
            done = subprocess.run(
                [str(self.cli), "version"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    def require(self) -> None:
        """Raises with what to do when this prefix holds no APISIX VERSION."""
        found = self.version()
        if found != VERSION:
            what = "is not installed" if found is None else f"is {found}, not {VERSION},"
            raise ApisixError(
                f"APISIX {what} in {self.prefix}: run `make apisix` (or `make test`), which "
                "installs it there, or set GATEZ_APISIX_PREFIX to a prefix that has it"
            )

    def require_stopped(self) -> None:
        """Raises when an APISIX from this prefix runs (its config and socket are the prefix's)."""
        running = self.running_master()
        if running is not None:
            raise ApisixError(
                f"an APISIX from {self.prefix} is already running (nginx master pid {running}); "
                f"only one may run per prefix: stop it with `{self.cli} stop`"
            )

    def running_master(self) -> int | None:
        """The pid of the nginx master started from this prefix, if one is alive."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_nginx(pid) else None

    def start(
        self,
        env: Mapping[str, str],
        *,
        listen_port: int,
        timeout_s: float = 60.0,
        failed: Callable[[], str | None] = lambda: None,
    ) -> RunningApisix:
        """`apisix start` with the config already in `conf_dir`, then waits until the listen
        port and the runner's socket accept connections. `failed` is polled meanwhile: a
        message from it (say, the runner refusing to start) ends the wait at once."""
        self.require()
        self.require_stopped()
        done = subprocess.run(
            [str(self.cli), "start"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        # nginx's first process returns as soon as it has forked the master, which writes the
        # pid file a moment later.
        master = self.running_master()
        deadline = time.monotonic() + 10
        while done.returncode == 0 and master is None and time.monotonic() < deadline:
            time.sleep(0.02)
            master = self.running_master()
        if done.returncode != 0 or master is None:
            if master is not None:
                RunningApisix(self, master).stop()
            raise ApisixError(
                f"`{self.cli} start` failed (exit {done.returncode}):\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
        started = RunningApisix(self, master)
        try:
            deadline = time.monotonic() + timeout_s
            for address in (("127.0.0.1", listen_port), str(self.runner_socket(master))):
                _wait_until_accepting(address, deadline, started, failed)
        except BaseException:
            started.stop()
            raise
        return started


@dataclass(frozen=True, slots=True)
class RunningApisix:
    """An APISIX this process started: its nginx master, and through it the runner."""

    install: ApisixInstall
    master_pid: int

    @property
    def runner_socket(self) -> Path:
        return self.install.runner_socket(self.master_pid)

    def alive(self) -> bool:
        return _is_nginx(self.master_pid)

    def stop(self, timeout_s: float = 15.0) -> None:
        """`apisix stop`, then waits until the master, its workers and the runner (which the
        worker sends SIGTERM) are gone; whatever is left after `timeout_s` is killed."""
        family = [self.master_pid, *descendants(self.master_pid)]
        if self.alive():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    [str(self.install.cli), "stop"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=timeout_s,
                )
            # `apisix stop` refuses when the pid file is gone; the master still takes SIGTERM.
            with contextlib.suppress(ProcessLookupError):
                if self.alive():
                    os.kill(self.master_pid, signal.SIGTERM)
        if not wait_gone(family, timeout_s):
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_gone(family, 5.0)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, …), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        parent = _parent_pid(int(entry.name))
        if parent is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children.get(child, []))
    return found


def wait_gone(pids: Iterable[int], timeout_s: float) -> bool:
    """Waits until none of `pids` runs (zombies count as gone); False on timeout."""
    pids = list(pids)
    deadline = time.monotonic() + timeout_s
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces): state, ppid, …"""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _running(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _is_nginx(pid: int) -> bool:
    if not _running(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"nginx" in command


def _wait_until_accepting(
    address: tuple[str, int] | str,
    deadline: float,
    apisix: RunningApisix,
    failed: Callable[[], str | None],
) -> None:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    while True:
        with socket.socket(family) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(address)
                return
            except OSError:
                pass
        if not apisix.alive():
            raise ApisixError(f"APISIX (nginx master {apisix.master_pid}) exited while starting")
        reason = failed()
        if reason is not None:
            raise ApisixError(reason)
        if time.monotonic() > deadline:
            raise ApisixError(f"APISIX: nothing accepts on {address} (waited for it to start)")
        time.sleep(0.05)
