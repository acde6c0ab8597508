"""Imports run downward only: the shared bottom (`gatez`, the pipeline core included) imports no
layer above it, the data plane and the control service do not import each other, and nothing
shipped imports test harnesses, fakes, the demo kit or benchmarks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNSHIPPED = {"tests", "demo", "bench"}
# What each shipped package may not import.
FORBIDDEN = {
    "gatez": {"extproc", "control", "agent", *UNSHIPPED},
    "extproc": {"control", *UNSHIPPED},
    "control": {"extproc", "agent", *UNSHIPPED},
    "agent": {"control", *UNSHIPPED},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports, wherever in the module the import stands."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.partition(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_downward(package: str) -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if "/v1/" not in str(path) and "/fbs/" not in str(path)
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_the_pipeline_core_knows_no_proxy() -> None:
    for path in (ROOT / "gatez" / "pipeline").rglob("*.py"):
        assert not imported_packages(path) & {"envoy", "flatbuffers", "grpc"}, path
