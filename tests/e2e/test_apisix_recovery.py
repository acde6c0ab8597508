"""APISIX under load while its runner dies or APISIX reloads: every answer is either the right
one or a clear failure (a 503 JSON while the runner restarts, or a stream cut off visibly) —
never a wrong answer — and service comes back by itself. The counts are printed (`-s`)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from gatez.apisix_process import RunningApisix, descendants
from gatez.stack import Stack
from gatez.v1 import policy_pb2
from tests.e2e.conftest import Admin, TenantAccess, provision

CLIENTS = 6


@pytest.fixture
def apisix(request: pytest.FixtureRequest, stack: Stack) -> RunningApisix:
    if request.node.callspec.params["stack"] != "apisix":
        pytest.skip("APISIX's runner and reload; Envoy's data plane restarts in test_control_live")
    assert stack.apisix is not None
    return stack.apisix


@pytest.fixture
def loaded_tenant(admin: Admin) -> TenantAccess:
    # Room for the load: the default tenant limit would answer 429s.
    return provision(admin, rate_limit=policy_pb2.RateLimit(requests_per_minute=100_000))


@dataclass
class Outcomes:
    """What the clients saw, by kind; `wrong` holds the details of any wrong answer."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    wrong: list[str] = field(default_factory=list)
    # When the first and the last 503 came (monotonic seconds).
    unavailable_from: float = 0.0
    unavailable_until: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, detail: str = "") -> None:
        with self.lock:
            self.counts[kind] += 1
            if kind == "wrong":
                self.wrong.append(detail)
            elif kind == "unavailable":
                now = time.monotonic()
                self.unavailable_from = self.unavailable_from or now
                self.unavailable_until = now


def _one_call(client: httpx.Client, url: str, key: str, stream: bool) -> tuple[str, str]:
    """One chat call with a prompt of its own; its outcome and, when wrong, why."""
    word = uuid.uuid4().hex[:12]
    expected = f"Echo: {word}"
    body = {"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": word}]}
    headers = {"authorization": f"Bearer {key}"}
    try:
        with client.stream("POST", url, json=body, headers=headers) as response:
            raw = response.read()
    except (httpx.RemoteProtocolError, httpx.ReadError) as error:
        return "cut", repr(error)
    if response.status_code in (502, 503):
        # 503: the runner is not there (yet); 502: it went away after the provider answered.
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return "wrong", f"{response.status_code} without a JSON error: {raw[:200]!r}"
        if response.headers.get("content-type", "").startswith("application/json") and (
            isinstance(answer, dict) and answer.get("error")
        ):
            return ("unavailable" if response.status_code == 503 else "failed"), ""
        return "wrong", f"{response.status_code} without a JSON error: {raw[:200]!r}"
    if response.status_code != 200:
        return "wrong", f"status {response.status_code}: {raw[:200]!r}"
    if not stream:
        content = orjson.loads(raw)["choices"][0]["message"]["content"]
        return ("ok", "") if content == expected else ("wrong", f"{content!r} for {word}")
    if not raw.endswith(b"data: [DONE]\n\n"):
        return "cut", "stream without [DONE]"
    text = ""
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                text += choice["delta"].get("content") or ""
    return ("ok", "") if text == expected else ("wrong", f"{text!r} for {word}")


class Load:
    """`CLIENTS` threads calling chat (half of them streamed) until stopped."""

    def __init__(self, stack: Stack, key: str) -> None:
        self.outcomes = Outcomes()
        self._url = f"{stack.config.gateway_url}/v1/chat/completions"
        self._key = key
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(index % 2 == 1,), daemon=True)
            for index in range(CLIENTS)
        ]

    def _run(self, stream: bool) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    kind, detail = _one_call(client, self._url, self._key, stream)
                except httpx.HTTPError as error:
                    kind, detail = "wrong", f"transport: {error!r}"
                self.outcomes.add(kind, detail)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def wait_for(self, kind: str, more: int, timeout_s: float = 30.0) -> None:
        """Until `more` further outcomes of `kind` were seen."""
        target = self.outcomes.counts[kind] + more
        deadline = time.monotonic() + timeout_s
        while self.outcomes.counts[kind] < target:
            assert time.monotonic() < deadline, f"no recovery: {dict(self.outcomes.counts)}"
            time.sleep(0.05)


def _runner_pids(apisix: RunningApisix) -> list[int]:
    pids = []
    for pid in descendants(apisix.master_pid):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read()  # noqa: SIM115
        except OSError:
            continue
        if b"extproc.apisix" in command:
            pids.append(pid)
    return pids


def _settled(outcomes: Outcomes, after: str) -> None:
    window = outcomes.unavailable_until - outcomes.unavailable_from
    print(f"\n{after}: {dict(outcomes.counts)}; 503s during {window:.2f} s")
    assert outcomes.wrong == [], outcomes.wrong
    # Only calls in flight when the runner went away fail after admission: one per client, or
    # a second when APISIX reused a pooled connection to the runner that had just closed.
    assert outcomes.counts["failed"] + outcomes.counts["cut"] <= 2 * CLIENTS
    # APISIX starts a new runner 3 s after the old one exited; it serves about a second later.
    assert window < 8


def test_a_runner_killed_under_load_restarts_without_a_wrong_answer(
    stack: Stack, apisix: RunningApisix, loaded_tenant: TenantAccess
) -> None:
    (runner,) = _runner_pids(apisix)
    with Load(stack, loaded_tenant.api_key) as load:
        load.wait_for("ok", 30)
        os.kill(runner, signal.SIGKILL)
        # APISIX starts a new runner 3 s after the old one exited.
        load.wait_for("unavailable", 1, timeout_s=10)
        load.wait_for("ok", 100, timeout_s=30)
    new_runners = _runner_pids(apisix)
    assert new_runners and runner not in new_runners
    _settled(load.outcomes, "runner killed")


def test_apisix_reload_under_load_loses_no_answer(
    stack: Stack, apisix: RunningApisix, loaded_tenant: TenantAccess
) -> None:
    (before,) = _runner_pids(apisix)
    with Load(stack, loaded_tenant.api_key) as load:
        load.wait_for("ok", 30)
        reloaded = subprocess.run(
            [str(apisix.install.cli), "reload"],
            env={**os.environ, "APISIX_WORKER_PROCESSES": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        # The new workers start a new runner; the old one stops once its worker is done. Both
        # ran at once for a while (same socket path, state directory and metrics port).
        deadline = time.monotonic() + 30
        while (runners := _runner_pids(apisix)) in ([], [before]) or before in runners:
            assert time.monotonic() < deadline, f"the runner was not replaced: {runners}"
            time.sleep(0.1)
        load.wait_for("ok", 200, timeout_s=30)
    assert len(_runner_pids(apisix)) == 1
    _settled(load.outcomes, "apisix reload")
