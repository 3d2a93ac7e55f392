"""The layering rules of the code base, checked on the source itself (docs/architecture.md).

Each folder of ``edge_monitor`` is a layer and may import only the layers below it:

    core  <  model  <  service  <  archive  <  bench  <  (the entry point: edge_monitor/__main__.py)

and ``training`` sits on top of all of them. Each layer also has a fixed set of third-party
packages it may use, so that the core stays pure (no TensorFlow, no network, no files, no clock)
and the edge box never needs scikit-learn or matplotlib.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edge_monitor"
LAYERS = ("core", "model", "service", "archive", "bench")  # bottom to top
STDLIB = set(sys.stdlib_module_names)

# Third-party packages each layer may import (the standard library is always allowed, except
# what FORBIDDEN_STDLIB takes away).
THIRD_PARTY: dict[str, set[str]] = {
    "core": {"numpy", "orjson"},  # orjson: a pure parser (no I/O), for the inputs
    "model": {"numpy", "tensorflow", "keras", "tcn", "onnxruntime"},
    "service": {"numpy", "paho", "yaml", "structlog", "orjson", "prometheus_client"},
    "archive": {"numpy", "scipy", "paho"},
    # the benchmark drives the daemon and TensorFlow only through the layers below
    "bench": {"numpy", "paho", "yaml"},
    "entry": set(),
}
# The core is a functional core: no files, sockets, threads, processes or clock of its own.
FORBIDDEN_STDLIB: dict[str, set[str]] = {
    "core": {"os", "pathlib", "io", "socket", "ssl", "select", "selectors", "threading", "subprocess",
             "signal", "time", "tempfile", "shutil", "queue", "asyncio", "datetime", "random"},
}


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in ``path``, relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from edge_monitor import core" imports edge_monitor.core: count the names too
            out.append((module, node.lineno))
            out += [(f"{module}.{alias.name}", node.lineno) for alias in node.names
                    if (ROOT / Path(*module.split("."), alias.name)).is_dir()]
    return out


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else "entry"


def rank(layer: str) -> int:
    return len(LAYERS) if layer == "entry" else LAYERS.index(layer)


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_layer_folder():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert loose == [], "modules directly under edge_monitor/: put each into the folder of its layer"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(LAYERS)


def layer_problems(path: Path) -> list[str]:
    """Every import of ``path`` that breaks its layer's rules, as readable lines."""
    mine = layer_of(path)
    problems = []
    for module, line in imports_of(path):
        top = module.split(".")[0]
        if top == "training":
            problems.append(f"line {line}: {module} (training sits on top of edge_monitor)")
        elif top == "edge_monitor":
            parts = module.split(".")
            if len(parts) == 1:
                continue  # edge_monitor/__init__.py: the version only
            target = parts[1] if parts[1] in LAYERS else "entry"
            if target != mine and rank(target) > rank(mine):
                problems.append(f"line {line}: {module} ({mine} may not import {target})")
        elif top in STDLIB:
            if top in FORBIDDEN_STDLIB.get(mine, set()):
                problems.append(f"line {line}: {module} (the {mine} layer does no I/O and keeps no clock)")
        elif top not in THIRD_PARTY[mine]:
            problems.append(f"line {line}: {module} (not among the {mine} layer's packages)")
    return problems


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_layer_imports_only_the_layers_below_it(path):
    assert layer_problems(path) == []


def test_training_is_imported_by_nothing_under_edge_monitor():
    # covered module by module above; this names the rule the guide states outright
    heavy = {"sklearn", "matplotlib", "training"}
    offenders = {str(p.relative_to(ROOT)): sorted({m.split(".")[0] for m, _ in imports_of(p)} & heavy)
                 for p in source_files()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checker itself: an upward import and a forbidden package are both reported."""
    fake = tmp_path / "edge_monitor" / "core"
    fake.mkdir(parents=True)
    bad = fake / "bad.py"
    bad.write_text("import time\nimport tensorflow\nfrom ..service.mqtt import connect\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "edge_monitor")
    problems = layer_problems(bad)
    assert len(problems) == 3
    assert "time" in problems[0] and "tensorflow" in problems[1] and "core may not import service" in problems[2]
