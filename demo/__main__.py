"""`make run`: the whole stack on 127.0.0.1 in the foreground, with an offline demo upstream (the
tests' fake OpenAI provider) and a demo tenant seeded. Not part of the shipped package."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from demo.seed import AdminClient, seed_demo
from gatez.processes import wait_for_port
from gatez.settings import DEV_ADMIN_TOKEN, DEV_DEMO_KEY
from gatez.stack import Stack, StackConfig
from gatez.tls import TlsListenerSettings

QUICKSTART = """
Gatez is up.

  Gateway ({proxy:<6}) {gateway}     point OpenAI SDKs at {gateway}/v1
{https}  Control (gRPC)   {control}   admin token: $GATEZ_ADMIN_TOKEN ({token_note})
  Demo tenant key  {key_note}
  Demo upstream    {upstream}   an offline OpenAI-compatible echo model
  Demo MCP server  {gateway}/mcp/demo/workbench   (the official mcp SDK's server, at {mcp})
  Logs             {logs}/

Try it:

  .venv/bin/python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{gateway}/v1", api_key="{key}")
  reply = client.chat.completions.create(
      model="gpt-4o-mini", messages=[{{"role": "user", "content": "hello gateway"}}])
  print(reply.choices[0].message.content, reply.usage)
  PY

  .venv/bin/python - <<'PY'
  import asyncio, httpx2
  from mcp.client.client import Client
  from mcp.client.streamable_http import streamable_http_client
  async def main():
      http = httpx2.AsyncClient(headers={{"Authorization": "Bearer {key}"}})
      url = "{gateway}/mcp/demo/workbench"
      async with Client(streamable_http_client(url, http_client=http)) as mcp:
          print([t.name for t in (await mcp.list_tools()).tools])
          print(await mcp.call_tool("echo", {{"text": "hello agent"}}))
  asyncio.run(main())
  PY

  grpcurl -plaintext -H "authorization: Bearer {token}" {control} list
  grpcurl -plaintext -H "authorization: Bearer {token}" \\
      -d '{{"tenant_id": "demo"}}' {control} gatez.v1.ControlService/ListAiLogs

Ctrl-C stops everything.
"""


def main() -> None:
    """`make run`: the whole stack on 127.0.0.1 in the foreground, with the demo seeded."""
    state_dir = Path(os.environ.get("GATEZ_STATE_DIR", ".gatez")).resolve()
    config = StackConfig(state_dir=state_dir)
    # `make run PROXY=apisix`: a real APISIX (from `make apisix`) in front instead of Envoy.
    config.proxy = os.environ.get("GATEZ_PROXY", "envoy")
    if config.proxy not in ("envoy", "apisix"):
        raise SystemExit(f"GATEZ_PROXY is envoy or apisix, not {config.proxy!r}")
    config.admin_token = os.environ.get("GATEZ_ADMIN_TOKEN", DEV_ADMIN_TOKEN)
    # HTTPS on $GATEZ_TLS_PORT (default 9443, 0: none), with the operator's certificate or one
    # made in .gatez/tls/ on the first start.
    try:
        config.tls = TlsListenerSettings.from_env()
    except ValueError as error:
        raise SystemExit(str(error)) from None
    demo_key = os.environ.get("GATEZ_DEMO_KEY", DEV_DEMO_KEY)
    upstream_port = int(os.environ.get("GATEZ_DEMO_UPSTREAM_PORT", "18000"))
    upstream_key = "demo-upstream-key"
    mcp_port = int(os.environ.get("GATEZ_DEMO_MCP_PORT", "18001"))
    # Under APISIX, REST routes go to the APISIX route's upstream: the demo upstream here.
    config.apisix_rest_upstream_url = f"http://127.0.0.1:{upstream_port}"
    stack = Stack(config)
    # Ctrl-C reaches every child (one process group); SIGTERM to the launcher stops them too.
    # SIGINT is set explicitly: a shell starting us in the background would have it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        stack.start()
        stack.spawn(
            "upstream",
            [
                sys.executable, "-m", "tests.fakes.openai_upstream",
                "--host", "127.0.0.1", "--port", str(upstream_port), "--api-key", upstream_key,
            ],
        )  # fmt: skip
        wait_for_port(upstream_port)
        stack.spawn(
            "mcp-server", [sys.executable, "-m", "demo.mcp_server", "--port", str(mcp_port)]
        )
        wait_for_port(mcp_port)
        mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"

        async def seed() -> None:
            async with AdminClient(config.control_address, config.admin_token) as admin:
                await seed_demo(
                    admin,
                    demo_key=demo_key,
                    upstream_url=f"http://127.0.0.1:{upstream_port}/v1",
                    upstream_key=upstream_key,
                    mcp_url=mcp_url,
                )

        asyncio.run(seed())
        print(
            QUICKSTART.format(
                proxy="APISIX" if config.proxy == "apisix" else "Envoy",
                gateway=config.gateway_url,
                control=config.control_address,
                token=config.admin_token,
                token_note="the dev default" if "GATEZ_ADMIN_TOKEN" not in os.environ else "set",
                key=demo_key,
                key_note=f"$GATEZ_DEMO_KEY = {demo_key}",
                upstream=f"http://127.0.0.1:{upstream_port}/v1",
                mcp=mcp_url,
                logs=stack.logs,
                https=https_lines(stack),
            ),
            flush=True,
        )
        while True:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited with {process.returncode}; see {stack.logs}")
            if stack.apisix is not None and not stack.apisix.alive():
                raise SystemExit(f"APISIX exited; see {stack.logs}/apisix.log")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
    finally:
        stack.stop()


def https_lines(stack: Stack) -> str:
    """The quick-start lines of the HTTPS listener: its URL and, with the local certificate,
    the CA file clients trust it by."""
    tls = stack.tls
    if tls is None:
        return ""
    url = stack.config.gateway_tls_url
    if tls.ca_file is None:
        return f"  Gateway (HTTPS)  {url}    certificate {tls.cert_file}\n"
    return (
        f"  Gateway (HTTPS)  {url}    certificate from a local CA; trust it with\n"
        f"                   SSL_CERT_FILE={tls.ca_file}\n"
        f"                   (REQUESTS_CA_BUNDLE= for requests, AWS_CA_BUNDLE= for boto3, or\n"
        f"                   httpx.Client(verify=ssl.create_default_context(cafile=...)))\n"
    )


if __name__ == "__main__":
    main()
