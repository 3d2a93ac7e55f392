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
    // as docs/scada.md advises: the table kept across restarts, machines that never alarmed too
    contextStorage: {{default: {{module: "localfilesystem"}}}},
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
        """The flow's table, from its HTTP endpoint ({} while Node-RED is not serving yet)."""
        url = f"http://127.0.0.1:{self.port}/edge-monitor/machines"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            return {"machines": {}, "monitors": {}, "changes": []}

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


def _changes(alarms: list[tuple[str, str]], before: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The state changes in a sequence of published (machine, state): what the flow must report."""
    state = dict(before or {})
    out = []
    for machine, to in alarms:
        if to != state.get(machine, "normal"):
            out.append((machine, to))
        state[machine] = to
    return out


def _states(table: dict) -> dict:
    """What an operator sees of the table: each machine's state and since, and the changes."""
    return {"machines": {m: (r["state"], r["since"]) for m, r in table["machines"].items()},
            "changes": table["changes"], "monitors": {i: m["state"] for i, m in table["monitors"].items()}}


def test_node_red_shows_every_alarm_and_the_states_survive_restarts(model, tmp_path):
    broker = DeployBroker(tmp_path / "broker", MACHINES, root=ROOT, dashboards=("nodered",), replay=True)
    red = NodeRed(tmp_path / "node-red", broker)
    config = (
        "broker:\n  username: edge-monitor\n"
        f"  password_file: {broker.password_file('edge-monitor')}\n"
        "  output_username: edge-monitor-out\n"
        f"  output_password_file: {broker.password_file('edge-monitor-out')}\n"
        f"state_file: {tmp_path / 'state.json'}\nstatus_interval_s: 1\n"
    )
    daemon = Daemon(tmp_path, broker, model.bundle, ROOT, "edge-1", config)
    watch = None
    try:
        broker.start()
        watch = Collector(broker.settings("scada", "test-watch", tls=True),
                          [f"{ROOT}/+/alarm", f"{ROOT}/+/summary", f"{ROOT}/_monitor/+/status"])
        red.start()
        red.wait(lambda: red.connections() >= 1, why="Node-RED did not connect to the broker over TLS")
        daemon.start().wait_online(watch)
        replay = broker.settings("replay", "test-replay")
        cuts = {case: [c for c in model.archive.cuts if c.case == case] for case in (11, 13)}

        def published() -> list[tuple[str, str, float]]:
            return [(t.split("/")[1], b["state"], b["since"]) for t, b in watch.on("/alarm")]

        def summaries(n: int) -> None:
            if not watch.wait(lambda: len(watch.on("/summary")) >= n, 60):
                daemon.fail(f"got {len(watch.on('/summary'))} of {n} summaries")

        # While Node-RED watches: a healthy tool on mill-01, a new tool's first cut on mill-02
        replay_cuts(replay, ROOT, "mill-01", cuts[11])
        replay_cuts(replay, ROOT, "mill-02", cuts[13][:1], reset_first=True)
        summaries(len(cuts[11]) + 1)
        seen = published()
        # the reset before mill-02's first cut is of a machine the monitor never saw: not confirmed
        assert seen == [], seen
        red.wait(lambda: red.table()["machines"].get("mill-02", {}).get("last_cut") == cuts[13][0].cut_id, 30,
                 why=f"Node-RED's table: {red.table()}")
        assert red.table()["machines"]["mill-02"]["state"] == "normal" and red.table()["changes"] == []

        # Node-RED away (its session kept by the broker): the tool wears out on mill-02
        red.stop()
        replay_cuts(replay, ROOT, "mill-02", cuts[13][1:])
        summaries(len(cuts[11]) + len(cuts[13]))
        raised = published()[len(seen):]
        assert raised and raised[-1][:2] == ("mill-02", "alarm"), raised
        want = _changes([(m, s) for m, s, _ in raised])

        # back: what was queued for its session arrives, then the retained states; each change once
        red.start()
        red.wait(lambda: red.connections() >= 2, why="Node-RED did not connect again")
        red.wait(lambda: [(c["machine"], c["to"]) for c in red.table()["changes"]] == want, 30,
                 why=f"Node-RED's table: {red.table()}; published while it was away: {raised}")
        table = red.table()
        assert not any(c["while_away"] for c in table["changes"])  # queued live changes, not retained ones
        assert table["machines"]["mill-02"]["state"] == "alarm"
        assert table["machines"]["mill-02"]["since"] == raised[-1][2]
        assert table["machines"]["mill-02"]["last_cut"] == cuts[13][-1].cut_id
        assert table["machines"]["mill-01"]["state"] == "normal"  # no alarm message: normal
        assert table["machines"]["mill-01"]["last_cut"] == cuts[11][-1].cut_id
        assert table["monitors"]["edge-1"]["state"] == "online"

        # Node-RED restarts with nothing new: the same table (kept on its disk, and the retained
        # alarms agree with it), no change reported again
        before = red.table()
        red.stop()
        red.start()
        red.wait(lambda: red.connections() >= 3, why="Node-RED did not connect again")
        red.wait(lambda: red.table()["monitors"], 30, why="Node-RED's table did not come back")
        time.sleep(1)  # the retained alarms and status, delivered on subscribing
        assert red.table() == before  # not a field changed

        # The broker restarts (the retained alarms are on its disk); Node-RED and the monitor
        # reconnect, and the monitor announces every state again: a repeat, not a change
        before = red.table()
        announced = len(watch.on("/mill-02/alarm"))
        broker.stop()
        broker.start()
        red.wait(lambda: red.connections() >= 4, 60, why="Node-RED did not reconnect to the restarted broker")
        if not watch.wait(lambda: len(watch.on("/mill-02/alarm")) > announced, 60):
            daemon.fail("the monitor did not announce mill-02's state again after the broker's restart")
        time.sleep(1)  # Node-RED gets the announcement the same moment
        # every machine's state announced, mill-01's normal too (its first alarm message: no change)
        assert _states(red.table()) == _states(before)
        assert red.table()["machines"]["mill-01"]["alarm_seen"] is True
    finally:
        daemon.kill()
        red.stop()
        if watch is not None:
            watch.close()
        broker.kill()


RUN_FUNCTION = """
const flowJson = require(process.argv[1]);
const func = flowJson.find(n => n.type === "function" && n.name === "machine states").func;
const store = {};
const flow = {get: k => store[k], set: (k, v) => { store[k] = v; }};
const node = {warn: m => { throw new Error(m); }};
const run = new Function("msg", "node", "flow", func);
const out = [];
for (const msg of JSON.parse(process.argv[2])) {
    const result = run(msg, node, flow);
    out.push(result && result[1] ? result[1].payload : null);
}
console.log(JSON.stringify({changes: out, machines: store.machines}));
"""


def _run_function(messages: list[dict]) -> dict:
    """The flow's "machine states" function on ``messages``, in Node.js, with an in-memory context
    (Node-RED's default: the table starts empty at every restart)."""
    done = subprocess.run(["node", "-e", RUN_FUNCTION, str(FLOW), json.dumps(messages)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def alarm(machine: str, state: str, since, retain: bool) -> dict:
    return {"topic": f"mill/{machine}/alarm", "retain": retain,
            "payload": {"state": state, "since": since, "cut": "c1", "score": 2.0, "threshold": 1.5, "model": "m"}}


def summary(machine: str) -> dict:
    return {"topic": f"mill/{machine}/summary", "retain": False,
            "payload": {"cut": "c9", "windows": 10, "judged": 1.0, "score_median": 1.0, "level": "alarm"}}


def test_the_flow_tells_changes_from_states_as_they_stand():
    out = _run_function([
        summary("m1"),                      # queued for the session while Node-RED restarted ...
        alarm("m1", "alarm", 100.0, True),  # ... then the state as it stands: not news
        alarm("m1", "alarm", 100.0, False),  # the monitor's announcement after a broker crash: a repeat
        alarm("m2", "warning", 50.0, False),  # live: a change from normal
        alarm("m2", "alarm", 40.0, False),  # older than what the table holds: dropped
        alarm("m2", "normal", None, False),  # a reset's confirmation (since null is allowed): a change
        alarm("m1", "normal", 200.0, True),  # retained, differing from a row with an alarm: changed while away
    ])
    changes = [c and (c["machine"], c["from"], c["to"], c["while_away"]) for c in out["changes"]]
    assert changes == [None, None, None, ("m2", "normal", "warning", False), None, ("m2", "warning", "normal", False),
                       ("m1", "alarm", "normal", True)]
    assert {m: r["state"] for m, r in out["machines"].items()} == {"m1": "normal", "m2": "normal"}
