"""The agent gateway's pipeline stages for MCP routes, one module per concern."""
