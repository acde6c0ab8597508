"""The L3 agent gateway: MCP understood inline, on the same pipeline and adapters as LLM traffic."""
