"""The demo seed `make run` applies on every start converges, whatever an earlier run left."""

from __future__ import annotations

from control import ControlServer
from demo.seed import DEMO_MODELS, DEMO_PROVIDER, DEMO_TENANT, AdminClient, seed_demo
from gatez import keys
from gatez.secrets import SecretBox
from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import ADMIN_TOKEN, AUTH, Api
from tests.control.test_admin import current_snapshot


async def test_seed_twice_keeps_one_demo_key_with_the_latest_secret(
    control_server: ControlServer, api: Api, box: SecretBox
) -> None:
    async with AdminClient(f"127.0.0.1:{control_server.port}", ADMIN_TOKEN) as admin:
        await seed_demo(
            admin,
            demo_key="gz-first-demo-key-0123456789",
            upstream_url="http://127.0.0.1:18000/v1",
            upstream_key="up-1",
        )
        await seed_demo(
            admin,
            demo_key="gz-second-demo-key-0123456789",
            upstream_url="http://127.0.0.1:18001/v1",
            upstream_key="up-2",
            mcp_url="http://127.0.0.1:18002/mcp",
        )
        # Seeding again converges: one server, one policy.
        await seed_demo(
            admin,
            demo_key="gz-second-demo-key-0123456789",
            upstream_url="http://127.0.0.1:18001/v1",
            upstream_key="up-2",
            mcp_url="http://127.0.0.1:18002/mcp",
        )

    snapshot = await current_snapshot(api)
    assert [t.id for t in snapshot.tenants] == [DEMO_TENANT]
    assert [k.secret_sha256 for k in snapshot.api_keys] == [
        keys.digest("gz-second-demo-key-0123456789")
    ]
    [provider] = snapshot.providers
    assert (provider.name, provider.base_url) == (DEMO_PROVIDER, "http://127.0.0.1:18001/v1")
    routes = sorted((r.alias, r.upstream_model) for r in snapshot.model_routes)
    assert routes == sorted(DEMO_MODELS.items())
    assert [(c.provider, box.open_credential(c)) for c in snapshot.provider_credentials] == [
        (DEMO_PROVIDER, "up-2")
    ]
    listed = await api.control.ListProviders(api_pb.ListProvidersRequest(), metadata=AUTH)
    assert [p.has_credential for p in listed.providers] == [True]
    assert [(s.tenant_id, s.name, s.url) for s in snapshot.mcp_servers] == [
        (DEMO_TENANT, "workbench", "http://127.0.0.1:18002/mcp")
    ]
    [agent_policy] = snapshot.agent_policies
    rules = {r.tool: r.action for r in agent_policy.tools}
    assert rules["delete_repo"] == policy_pb2.TOOL_ACTION_REQUIRE_APPROVAL
    assert rules["echo"] == policy_pb2.TOOL_ACTION_ALLOW
