"""`make demo`'s own dashboard (deploy/demo.py): a user of its own, so that `scada` stays free for a
dashboard you connect to the demo's broker yourself; and when another client logs in as the
demo's user anyway, the demo says so instead of blaming the monitor."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from edge_monitor.service.mqtt import connect, disconnect, make_client

REPO = Path(__file__).resolve().parents[1]


def _demo_module():
    spec = importlib.util.spec_from_file_location("edge_monitor_demo", REPO / "deploy" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_demo_dashboard_has_its_own_user_and_says_when_another_client_takes_it(tmp_path):
    demo = _demo_module()
    broker = demo.local_broker(tmp_path / "broker", ["mill-01"])
    other = board = None
    try:
        broker.start()
        assert demo.DASHBOARD_USER == "scada-demo"
        assert broker.password_file("scada").exists()  # free for your own dashboard (docs/scada.md)
        board = demo.Dashboard(broker.settings(demo.DASHBOARD_USER, "demo-scada", tls=True), ["mill-01"],
                               demo.CompletionClock(64, 64, 3), broker.log)
        board.start()
        assert board.problem() is None
        other = make_client(broker.settings(demo.DASHBOARD_USER, "someone-else", tls=True), clean_start=True)
        connect(other)
        deadline = time.monotonic() + 10
        while board.problem() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert board.problem() == (
            "another client logged in as scada-demo, the demo dashboard's user, and took its connection (the broker "
            "allows one connection per user): give that client a user of its own, `make-users.sh --dashboard NAME` "
            "(docs/scada.md, \"Connecting\")")
        assert f"WARNING: {board.problem()}" in board.table()
    finally:
        if other is not None:
            disconnect(other)
        if board is not None:
            board.stop()
        broker.kill()
        sys.modules.pop("edge_monitor_demo", None)
