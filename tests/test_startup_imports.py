"""What a data plane imports before it serves: the heavy libraries only some tenants' policies
need (Presidio, qdrant-client) are imported when first needed, so a restarted APISIX runner
serves again within its window (tests/e2e/test_apisix_recovery.py)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("presidio_analyzer", "spacy", "qdrant_client", "wordllama")


def test_a_data_plane_and_the_control_service_start_without_the_heavy_libraries() -> None:
    probe = (
        "import sys, extproc.apisix.server, extproc.server, control.server\n"
        "from gatez.policy import EMPTY_POLICY\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


def test_a_policy_with_pii_rules_loads_presidio_when_it_compiles() -> None:
    probe = (
        "import sys\n"
        "from gatez.policy import compile_policy\n"
        "from gatez.v1 import policy_pb2\n"
        "assert 'presidio_analyzer' not in sys.modules\n"
        "policy = compile_policy(policy_pb2.PolicySnapshot(\n"
        "    tenants=[policy_pb2.Tenant(id='acme')],\n"
        "    pii_policies=[policy_pb2.PiiPolicy(tenant_id='acme')]))\n"
        "rules = policy.guardrails.pii['acme']\n"
        "print(rules.scanner.redact('mail bob@example.com', rules.actions, salt=b'').text)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "mail <EMAIL_ADDRESS>"
