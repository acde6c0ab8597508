# Gatez: the two commands are `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PROTOS := $(wildcard proto/gatez/v1/*.proto)
# A real APISIX for the end-to-end suite's "apisix" cases, installed from the APISIX runtime
# folder (relative paths are the checkout's) into APISIX_PREFIX; the tests find it there
# through GATEZ_APISIX_PREFIX.
# The runtime beside the checkout (../shared/apisix-runtime), else beside the repository a local
# clone was made from (a clean clone in /tmp for CI, say).
APISIX_RUNTIME ?= $(firstword $(wildcard ../shared/apisix-runtime \
	$(shell git config --get remote.origin.url 2>/dev/null)/../shared/apisix-runtime) \
	../shared/apisix-runtime)
APISIX_PREFIX ?= $(CURDIR)/.apisix
APISIX_VERSION := 3.18.0

.PHONY: run test setup system-deps apisix proto flatbuffers lint bench bench-translate bench-mcp bench-guardrails clean

# PROXY=apisix: a real APISIX 3.18 (installed by `make apisix`) in front instead of Envoy.
PROXY ?= envoy

run: setup $(if $(filter apisix,$(PROXY)),apisix)
	GATEZ_PROXY=$(PROXY) GATEZ_APISIX_PREFIX=$(APISIX_PREFIX) $(PY) -m demo

test: setup apisix
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	GATEZ_APISIX_PREFIX=$(APISIX_PREFIX) $(VENV)/bin/pytest

bench: setup apisix
	@command -v wrk >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(PY) -m bench.chat
	$(PY) -m bench.chat --connections 1 --tracing
	$(PY) -m bench.dataplane
	GATEZ_APISIX_PREFIX=$(APISIX_PREFIX) $(PY) -m bench.apisix_path
	$(PY) -m bench.translate
	GATEZ_APISIX_PREFIX=$(APISIX_PREFIX) $(PY) -m bench.mcp
	$(PY) -m bench.guardrails

# An MCP tools/call through Gatez (Envoy and APISIX) vs straight to the MCP server, JSON and SSE.
bench-mcp: setup apisix
	GATEZ_APISIX_PREFIX=$(APISIX_PREFIX) $(PY) -m bench.mcp --modes json sse

# What the guardrails cost (PII redaction, streamed output redaction, budgets, the answer cache),
# against plain Envoy and Gatez's plain chat path in the same run.
bench-guardrails: setup
	$(PY) -m bench.guardrails

# What schema translation costs (OpenAI client to an Anthropic provider), plain and streamed.
bench-translate: setup
	@command -v wrk >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(PY) -m bench.translate --rounds 3

setup: system-deps $(STAMP)

# Debian packages the stack and the tests run: redis-server (and flatc for the APISIX runner).
system-deps:
	@if ! command -v redis-server >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; \
	fi
	@command -v redis-server >/dev/null || { echo "redis-server is missing and could not be installed" >&2; exit 1; }
	@if ! command -v flatc >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq flatbuffers-compiler >/dev/null; \
	fi
	@command -v flatc >/dev/null || { echo "flatc is missing and could not be installed" >&2; exit 1; }

# APISIX 3.18 under APISIX_PREFIX, installed when `apisix version` there does not print it.
# install.sh takes Debian packages with apt-get (as root: sudo when not root; the prefix is then
# handed back to this user) and builds the rest from the runtime folder, offline.
apisix:
	@if [ "$$('$(APISIX_PREFIX)/bin/apisix' version 2>/dev/null)" != "$(APISIX_VERSION)" ]; then \
		if [ ! -f '$(APISIX_RUNTIME)/install.sh' ]; then \
			echo "APISIX $(APISIX_VERSION) is not installed in $(APISIX_PREFIX), and there is no" \
				"$(APISIX_RUNTIME)/install.sh to install it: set APISIX_RUNTIME to the" \
				"apisix-runtime folder (make APISIX_RUNTIME=/path/to/apisix-runtime test)" >&2; \
			exit 1; \
		fi; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO bash '$(APISIX_RUNTIME)/install.sh' '$(APISIX_PREFIX)' || exit 1; \
		[ -z "$$SUDO" ] || sudo chown -R "$$(id -u):$$(id -g)" '$(APISIX_PREFIX)'; \
	fi
	@[ "$$('$(APISIX_PREFIX)/bin/apisix' version 2>/dev/null)" = "$(APISIX_VERSION)" ] || \
		{ echo "APISIX $(APISIX_VERSION) did not install in $(APISIX_PREFIX)" >&2; exit 1; }

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required" >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# xds-protos ships an old copy of opentelemetry-proto's modules at the same paths (no
	@# InstrumentationScope); whichever wheel pip unpacks last wins, so opentelemetry-proto's
	@# own files go in again, last.
	$(PY) -m pip install -q --force-reinstall --no-deps "opentelemetry-proto==$$($(PY) -c \
		'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	@rm -f $(VENV)/.installed-*
	@touch $@

# Regenerate the Python stubs from proto/ (committed; tests/test_proto.py fails when stale).
proto: setup
	$(PY) -m gatez.protogen

# Regenerate the APISIX ext-plugin bindings from extproc/apisix/ext_plugin.fbs (committed;
# tests/extproc/apisix/test_fbs.py fails when stale).
flatbuffers: setup
	$(PY) -m extproc.apisix.fbsgen

lint: setup
	$(VENV)/bin/buf lint

clean:
	rm -rf $(VENV) .gatez .pytest_cache .mypy_cache .ruff_cache
