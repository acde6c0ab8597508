"""The API contracts: `buf lint` passes and the committed stubs match the .proto files."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

from gatez.processes import require_binary
from gatez.protogen import ROOT, generate


def test_buf_lint_passes() -> None:
    result = subprocess.run(
        [require_binary("buf"), "lint"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = tmp_path / "gatez" / "v1"
    committed = ROOT / "gatez" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert names == sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
    assert not mismatch and not errors, f"stale stubs {mismatch + errors}: run `make proto`"
