"""The shipped APISIX deployment files: the standalone routes load (APISIX needs the #END line),
every runner conf is one the runner accepts, LLM routes go through the gatez plugin (never
ext-plugin-post-resp, which the runner refuses), and the ext-plugin cmd starts our runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

APISIX = Path(__file__).resolve().parent.parent / "apisix"


def _routes() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((APISIX / "apisix.yaml").read_text())
    return {route["id"]: route for route in document["routes"]}


def test_standalone_routes_end_with_the_end_marker() -> None:
    assert (APISIX / "apisix.yaml").read_text().rstrip("\n").endswith("\n#END")


def test_every_runner_conf_is_a_json_object() -> None:
    confs = [
        entry["value"]
        for route in _routes().values()
        for entry in route["plugins"].get("ext-plugin-pre-req", {}).get("conf", [])
    ]
    assert confs, "no runner conf found"
    # The route kind comes from Gatez's policy, not from the conf.
    assert all(isinstance(orjson.loads(value), dict) for value in confs)


def test_llm_routes_use_the_gatez_plugin_and_have_no_upstream_of_their_own() -> None:
    llm = _routes()["llm"]
    assert set(llm["plugins"]) == {"ext-plugin-pre-req", "gatez"}
    assert llm["plugins"]["ext-plugin-pre-req"]["allow_degradation"] is False
    # Without the plugin APISIX has nowhere to send the request, so no credential leaves.
    assert "upstream" not in llm and "upstream_id" not in llm
    assert all("ext-plugin-post-resp" not in route["plugins"] for route in _routes().values())


def test_ext_plugin_cmd_runs_the_runner_and_the_plugin_is_loaded() -> None:
    config = yaml.safe_load((APISIX / "config.yaml").read_text())
    argv = config["ext-plugin"]["cmd"]
    assert argv[1:3] == ["-m", "extproc.apisix"]
    # APISIX starts the runner in its own directory: a relative state dir would be refused.
    assert Path(argv[argv.index("--state-dir") + 1]).is_absolute()
    assert {"ext-plugin-pre-req", "gatez"} <= set(config["plugins"])
    assert "ext-plugin-post-resp" not in config["plugins"]
    assert config["apisix"]["extra_lua_path"].endswith("/?.lua")
