"""Fixtures of the agent tests: the real MCP servers (`tests/support/mcp_servers.py`)."""

from tests.support.mcp_servers import mcp_upstreams

__all__ = ["mcp_upstreams"]
