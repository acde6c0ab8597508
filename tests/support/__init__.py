"""Test helpers that ship with Gatez: real processes (redis-server, Envoy) and fake peers
for what a test cannot reach (LLM providers, an OIDC issuer)."""
