"""`python -m demo.mcp_server --port N`: the demo MCP server `make run` registers for the demo
tenant — the tests' workbench server (`tests/support/mcp_servers.py`, built with the official
`mcp` SDK) at http://127.0.0.1:N/mcp. Its tools touch nothing: `fetch_url` and `read_file` only
say what they were given, `delete_repo` deletes nothing."""

from __future__ import annotations

import argparse

import uvicorn

from tests.support.mcp_servers import MCP_PATH, workbench_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    app = workbench_server().streamable_http_app(streamable_http_path=MCP_PATH, host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
