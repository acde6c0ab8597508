# Gatez: the two commands are `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PROTOS := $(wildcard proto/gatez/v1/*.proto)

.PHONY: run test setup system-deps proto flatbuffers lint bench clean

run: setup
	$(PY) -m demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

bench: setup
	@command -v wrk >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(PY) -m bench.chat
	$(PY) -m bench.chat --connections 1 --tracing
	$(PY) -m bench.dataplane

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
