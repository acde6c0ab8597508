"""The ext-plugin bindings: the committed ones are what `flatc` makes of our schema, and they
lay out the fields in the slots APISIX reads (the wire is the slot order, not the names)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import flatbuffers

from extproc.apisix.fbs.A6 import TextEntry
from extproc.apisix.fbs.A6.HTTPReqCall import Req as ReqCallReq
from extproc.apisix.fbsgen import PACKAGE_DIR, generate


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))


def test_generated_bindings_are_fresh(tmp_path: Path) -> None:
    # Needs flatc: a missing one raises (the set-up installs it), it never skips.
    generate(tmp_path)
    names = _files(tmp_path)
    assert names == _files(PACKAGE_DIR)
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, PACKAGE_DIR, names, shallow=False)
    assert not mismatch and not errors, f"stale bindings {mismatch + errors}: make flatbuffers"


def test_http_req_call_slots_match_apisix() -> None:
    # APISIX's own builder writes conf_token into slot 6 and headers into slot 5.
    builder = flatbuffers.Builder(64)
    name, value = builder.CreateString("x-a"), builder.CreateString("1")
    TextEntry.Start(builder)
    TextEntry.AddName(builder, name)
    TextEntry.AddValue(builder, value)
    entry = TextEntry.End(builder)
    builder.StartVector(4, 1, 4)
    builder.PrependUOffsetTRelative(entry)
    headers = builder.EndVector()
    builder.StartObject(7)
    builder.PrependUOffsetTRelativeSlot(5, headers, 0)
    builder.PrependUint32Slot(6, 233, 0)
    builder.Finish(builder.EndObject())

    req = ReqCallReq.Req.GetRootAs(builder.Output(), 0)
    assert req.ConfToken() == 233
    assert req.HeadersLength() == 1
    header = req.Headers(0)
    assert header is not None and (header.Name(), header.Value()) == (b"x-a", b"1")
