"""The APISIX deployment files: the standalone routes load (APISIX needs the #END line), every
runner conf is one the runner accepts, and the ext-plugin cmd starts our runner."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

APISIX = Path(__file__).resolve().parent.parent / "apisix"


def test_standalone_routes_end_with_the_end_marker() -> None:
    assert (APISIX / "apisix.yaml").read_text().rstrip("\n").endswith("\n#END")


def test_every_runner_conf_is_a_json_object() -> None:
    text = (APISIX / "apisix.yaml").read_text()
    values = re.findall(r"value: '(\{.*\})'", text)
    assert values, "no runner conf found"
    # The route kind comes from Gatez's policy, not from the conf.
    assert all(isinstance(orjson.loads(v), dict) for v in values)
    # The LLM route needs both phases: usage and the AI log come from the response.
    llm = text[text.index("- id: llm") : text.index("- id: rest\n")]
    assert "ext-plugin-pre-req" in llm and "ext-plugin-post-resp" in llm


def test_ext_plugin_cmd_runs_the_runner_with_an_absolute_state_dir() -> None:
    config = (APISIX / "config.yaml").read_text()
    cmd = re.search(r"^  cmd: (\[.*?\])", config, re.M | re.S)
    assert cmd is not None
    argv = orjson.loads(cmd.group(1))
    assert argv[1:3] == ["-m", "extproc.apisix"]
    # APISIX starts the runner in its own directory: a relative state dir would be refused.
    state_dir = argv[argv.index("--state-dir") + 1]
    assert Path(state_dir).is_absolute()
    for plugin in ("ext-plugin-pre-req", "ext-plugin-post-resp", "traffic-split"):
        assert f"  - {plugin}" in config
