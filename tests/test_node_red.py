"""The shipped Node-RED flow (deploy/node-red/edge-monitor-flow.json) in a real Node-RED, headless
on loopback, against the deployed broker set-up over TLS with its own dashboard user: every alarm
change the monitor publishes reaches its table and its list of changes, and the table is right
again after Node-RED restarts and after the broker restarts, without a change reported twice.

Node-RED 4.1 (the last line for Node 20) comes from npm with `make install`
(tests/node_red/package-lock.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from broker import free_port
from daemon_support import Collector, Daemon, model_fixture
from deploy_broker import DeployBroker

from edge_monitor.archive.replay import replay_cuts

REPO = Path(__file__).resolve().parents[1]
FLOW = REPO / "deploy" / "node-red" / "edge-monitor-flow.json"
NODE_RED = REPO / "tests" / "node_red" / "node_modules" / "node-red" / "red.js"
ROOT = "mill"
MACHINES = ("mill-01", "mill-02")
USER = "scada-nodered"  # make-users.sh --dashboard nodered, as docs/scada.md says

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not NODE_RED.exists(),
    reason="Node-RED needs Node.js and `make install` (npm ci in tests/node_red)" if shutil.which("node")
    else "no Node.js on this machine (Debian: apt install nodejs npm; then make install)",
)

SETTINGS = """module.exports = {{
    uiHost: "127.0.0.1",
    uiPort: {port},
    flowFile: "flows.json",
    credentialSecret: false,  // the test's flows_cred.json is plain JSON in its own folder
    httpAdminRoot: false,     // no editor: headless
    logging: {{console: {{level: "info", metrics: false, audit: false}}}},
}};
"""


class NodeRed:
    """Node-RED with the shipped flow, pointed at ``broker`` as docs/scada.md says to: the
    broker's host and TLS port, its CA file, and the dashboard user's password."""

    def __init__(self, workdir: Path, broker: DeployBroker) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.dir / "node-red.log"
        flow = json.loads(FLOW.read_text())
        for node in flow:
            if node["type"] == "mqtt-broker":
                node["broker"], node["port"] = "localhost", str(broker.tls_port)  # the name the certificate has
                broker_id = node["id"]
            elif node["type"] == "tls-config":
                node["ca"] = str(broker.certs / "ca.crt")
        (self.dir / "flows.json").write_text(json.dumps(flow))
        password = broker.password_file(USER).read_text().splitlines()[0]
        (self.dir / "flows_cred.json").write_text(json.dumps({broker_id: {"user": USER, "password": password}}))
        (self.dir / "settings.js").write_text(SETTINGS.format(port=self.port))
        self.process: subprocess.Popen | None = None

    def start(self) -> "NodeRed":
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            ["node", str(NODE_RED), "--userDir", str(self.dir), "--settings", str(self.dir / "settings.js")],
            cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NODE_RED_ENABLE_PROJECTS": "false"})
        log.close()
        return self

    def connections(self) -> int:
        return self.log_path.read_text().count("Connected to broker")

    def wait(self, what, timeout: float = 60.0, why: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.fail(f"Node-RED exited ({self.process.returncode})")
            if what():
                return
            time.sleep(0.2)
        self.fail(f"timed out after {timeout} s: {why}")

    def table(self) -> dict:
        url = f"http://127.0.0.1:{self.port}/edge-monitor/machines"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def fail(self, why: str) -> None:
        tail = "\n".join(self.log_path.read_text().splitlines()[-30:])
        pytest.fail(f"{why}\n-- Node-RED log --\n{tail}", pytrace=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def test_node_red_shows_every_alarm_and_the_states_survive_restarts(model, tmp_path):
    broker = DeployBroker(tmp_path / "broker", MACHINES, root=ROOT, dashboards=("nodered",), replay=True).start()
    red = NodeRed(tmp_path / "node-red", broker)
    watch = Collector(broker.settings("scada", "test-watch", tls=True), [f"{ROOT}/+/alarm", f"{ROOT}/+/summary",
                                                                          f"{ROOT}/_monitor/+/status"])
    config = (
        "broker:\n  username: edge-monitor\n"
        f"  password_file: {broker.password_file('edge-monitor')}\n"
        "  output_username: edge-monitor-out\n"
        f"  output_password_file: {broker.password_file('edge-monitor-out')}\n"
        f"state_file: {tmp_path / 'state.json'}\nstatus_interval_s: 1\n"
    )
    daemon = Daemon(tmp_path, broker, model.bundle, ROOT, "edge-1", config)
    try:
        red.start()
        red.wait(lambda: red.connections() >= 1, why="Node-RED did not connect to the broker over TLS")
        daemon.start().wait_online(watch)
        cuts = {case: [c for c in model.archive.cuts if c.case == case] for case in (11, 13)}
        replay_cuts(broker.settings("replay", "test-replay"), ROOT, "mill-01", cuts[11])
        replay_cuts(broker.settings("replay", "test-replay"), ROOT, "mill-02", cuts[13], reset_first=True)
        n_cuts = len(cuts[11]) + len(cuts[13])
        if not watch.wait(lambda: len(watch.on("/summary")) >= n_cuts, 60):
            daemon.fail(f"got {len(watch.on('/summary'))} of {n_cuts} summaries")
        published = [(t.split("/")[1], b["state"], b["since"]) for t, b in watch.on("/alarm")]
        assert published and published[-1][:2] == ("mill-02", "alarm"), published
        # the reset of the new tool on mill-02 confirmed `normal`, then its wear raised the rest
        raised = [(m, s) for m, s, _ in published]

        def shows_everything() -> bool:
            t = red.table()
            return [(c["machine"], c["to"]) for c in t["changes"]] == [x for x in raised if x != ("mill-02", "normal")] \
                and len(t["machines"]) == 2 and t["monitors"].get("edge-1", {}).get("state") == "online"

        red.wait(shows_everything, 30, why=f"Node-RED's table: {red.table()}; published: {published}")
        table = red.table()
        assert table["machines"]["mill-02"]["state"] == "alarm"
        assert table["machines"]["mill-02"]["since"] == published[-1][2]
        assert table["machines"]["mill-01"]["state"] == "normal"  # no alarm message: normal
        assert table["machines"]["mill-01"]["last_cut"] == cuts[11][-1].cut_id
        assert not any(c["while_away"] for c in table["changes"])

        # Node-RED restarts: the retained alarms give the same table, and no change is reported
        red.stop()
        red.start()
        red.wait(lambda: red.connections() >= 2, why="Node-RED did not connect again")
        red.wait(lambda: red.table()["machines"].get("mill-02", {}).get("state") == "alarm", 30,
                 why=f"after Node-RED's restart: {red.table()}")
        assert red.table()["changes"] == []

        # The broker restarts (persistence: the retained alarms are on its disk); Node-RED and the
        # monitor reconnect, the monitor announces every state again: a repeat, not a change
        before = red.table()
        broker.stop()
        broker.start()
        red.wait(lambda: red.connections() >= 3, 60, why="Node-RED did not reconnect to the restarted broker")
        daemon.wait_online(watch)
        time.sleep(2)  # the monitor's announcements after its reconnection
        after = red.table()
        assert after["machines"]["mill-02"] == before["machines"]["mill-02"]
        assert after["changes"] == []
    finally:
        daemon.kill()
        red.stop()
        watch.close()
        broker.kill()
