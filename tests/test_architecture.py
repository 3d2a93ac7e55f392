"""The layering rules of the code base, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = {"sklearn", "matplotlib", "training"}
# The functional core: pure modules that must stay free of TensorFlow and of the network.
PURE = {"channels", "archive", "cut_quality", "wear", "synthetic", "stable_region", "windowing",
        "scaling", "scores", "calibration", "protocol", "frames", "alarm", "machine", "batching"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_edge_monitor_never_imports_training_dependencies():
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & TRAINING_ONLY)
        for p in (ROOT / "edge_monitor").rglob("*.py")
        if imported_roots(p) & TRAINING_ONLY
    }
    assert offenders == {}


def test_pure_core_imports_no_tensorflow_nor_network():
    heavy = {"tensorflow", "keras", "tcn", "paho", "socket"}
    offenders = {
        name: sorted(imported_roots(ROOT / "edge_monitor" / f"{name}.py") & heavy)
        for name in PURE
        if imported_roots(ROOT / "edge_monitor" / f"{name}.py") & heavy
    }
    assert offenders == {}
