"""The Prometheus / OpenMetrics endpoint against a real Mosquitto and the real model on the CPU:
scraped over HTTP while two machines stream and after, its figures checked against the status
message's counters; switched off, nothing listens; a port in use stops the start with a line
naming the key. And the Grafana dashboard in deploy/ (and the alert examples in docs/metrics.md)
name only metrics the monitor exports."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, fields

import pytest
from daemon_support import CASES, REPO, Collector, Daemon, machine_of, model_fixture
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from edge_monitor import __version__
from edge_monitor.bench.broker import free_port
from edge_monitor.core.channels import CHANNELS
from edge_monitor.service.config import MetricsEndpoint
from edge_monitor.service.logging import get_logger
from edge_monitor.service.metrics import REJECT_STAGES, Buckets, Metrics, MetricsError
from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client
from edge_monitor.service.status import Counters

ROOT = "t-metrics"
INSTANCE = "m1"
DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
SPEED = "25"  # real time x 25: mill-02's 4 cuts of 18 s stream for ~3 s


@dataclass
class Scrape:
    families: dict[str, object]  # name -> prometheus_client Metric
    samples: dict[tuple[str, tuple], float]  # (sample name, sorted labels) -> value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def by(self, name: str, label: str) -> dict[str, float]:
        return {dict(key)[label]: v for (n, key), v in self.samples.items() if n == name}

    @property
    def names(self) -> set[str]:
        return {n for n, _ in self.samples}


def scrape(url: str, openmetrics: bool = False) -> Scrape:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
        text = response.read().decode()
        kind = response.headers["Content-Type"]
    assert kind.startswith("application/openmetrics-text" if openmetrics else "text/plain"), kind
    parsed = list((openmetrics_families if openmetrics else text_string_to_metric_families)(text))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parsed for s in f.samples}
    return Scrape({f.name: f for f in parsed}, samples)


def counters_of(s: Scrape) -> dict[str, float]:
    """The status message's counters as the endpoint has them."""
    out = {f.name: s.value(f"edge_monitor_{f.name}_total") for f in fields(Counters) if f.name != "rejected"}
    out["rejected"] = sum(s.by("edge_monitor_rejected_total", "reason").values())
    return out


def publish(broker, messages: list[tuple[str, bytes]]) -> None:
    client = make_client(BrokerSettings(host=broker.host, port=broker.port, client_id="metrics-bad-inputs"),
                         clean_start=True)
    connect(client)
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        disconnect(client)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


@pytest.fixture(scope="module")
def run(module_broker, model, tmp_path_factory):
    """The daemon (metrics on any free port) while the replay streams, scraped every 0.2 s."""
    workdir = tmp_path_factory.mktemp("metrics")
    collector = Collector(module_broker, [f"{ROOT}/#"], "collector-metrics")
    # no metrics section: the helper runs it with --metrics 127.0.0.1:0 (any free port)
    daemon = Daemon(workdir, module_broker, model.bundle, ROOT, INSTANCE,
                    'machines: "mill-*"\nstate_file: state.json\nstatus_interval_s: 1\n').start()
    try:
        daemon.wait_online(collector)
        (endpoint,) = daemon.events("metrics_endpoint")
        url = endpoint["url"]
        assert endpoint["address"] == "127.0.0.1" and url == f"http://127.0.0.1:{endpoint['port']}/metrics"
        replay = subprocess.Popen(
            [sys.executable, "-m", "edge_monitor", "replay", "--archive", str(model.archive_path), "--broker",
             module_broker.address, "--machines", "2", "--cases", ",".join(map(str, CASES)), "--speed", SPEED,
             "--root", ROOT], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        during = []
        while replay.poll() is None:
            during.append(scrape(url))
            time.sleep(0.2)
        out, err = replay.communicate()
        assert replay.returncode == 0, err
        n_cuts = len(model.archive.cuts)
        if not collector.wait(lambda: len(collector.on("/summary")) >= n_cuts, 60):
            daemon.fail(f"expected {n_cuts} summaries, got {len(collector.on('/summary'))}")
        yield collector, daemon, url, during, out
    finally:
        daemon.kill()
        collector.close()


def settled(collector: Collector, url: str, timeout: float = 15.0) -> tuple[dict, Scrape]:
    """The latest status message and a scrape taken after it whose counters are the same: the
    monitor has nothing left to do, and the two agree."""
    topic = f"{ROOT}/_monitor/{INSTANCE}/status"
    deadline = time.monotonic() + timeout
    while True:
        statuses = [b for _, b in collector.on(topic) if isinstance(b, dict) and b.get("counters")]
        s = scrape(url)
        if statuses and counters_of(s) == statuses[-1]["counters"]:
            return statuses[-1], s
        if time.monotonic() > deadline:
            pytest.fail(f"the scrape's counters {counters_of(s)} never matched the status's "
                        f"{statuses[-1]['counters'] if statuses else None}")
        time.sleep(0.3)


def test_scraped_while_machines_stream(run):
    _, _, _, during, replay_out = run
    assert len(during) >= 5, "the replay ended before the endpoint was scraped a few times"
    published = int(re.search(r"(\d+) messages in", replay_out).group(1))
    seen = [s.value("edge_monitor_messages_in_total") for s in during]
    assert seen == sorted(seen), "a counter went down between scrapes"
    assert any(0 < n < published for n in seen), f"no scrape while inputs came in: {seen} of {published}"
    windows = [s.value("edge_monitor_score_latency_seconds_count") for s in during]
    assert windows == sorted(windows) and windows[-1] > 0
    for s in during:
        assert s.by("edge_monitor_broker_connected", "connection") == {"inputs": 1.0, "outputs": 1.0}
        for gauge in ("lag_seconds", "queued_inputs", "unacknowledged_inputs", "pending_windows",
                      "checkpoint_age_seconds", "machines_tracked"):
            assert s.value(f"edge_monitor_{gauge}") >= 0


def test_figures_match_the_status_counters(run, module_broker, model):
    collector, _, url, _, _ = run
    old_cut = model.cuts_by_case[11][0]  # mill-01's only cut, ended
    end = json.dumps({"event": "end", "cut": old_cut, "ts": 1.0, "samples": 10}).encode()
    # one input refused at each stage
    publish(module_broker, [
        (f"{ROOT}/mill-01/signal", b"{}"),  # topic: a signal topic names its channel
        (f"{ROOT}/lathe-01/cut", end),  # unwatched_machine: machines is "mill-*"
        (f"{ROOT}/mill-01/cmd", b"not json"),  # payload
        (f"{ROOT}/mill-09/cut", end.replace(old_cut.encode(), b"c-never")),  # untracked_machine: no cut yet
        (f"{ROOT}/mill-01/cut", end.replace(old_cut.encode(), b"c-never")),  # pipeline: never started
        (f"{ROOT}/mill-01/signal/{CHANNELS[0]}",  # stale: its cut ended (and not a redelivery)
         json.dumps({"cut": old_cut, "offset": 0, "samples": [0.0] * 8}).encode()),
    ])
    assert collector.wait(lambda: len(collector.on("/errors")) >= 6, 10)
    status, s = settled(collector, url)
    counters = status["counters"]
    assert counters_of(s) == counters  # every counter, exactly

    rejected = s.by("edge_monitor_rejected_total", "reason")
    assert rejected == {stage: 1.0 for stage in REJECT_STAGES}  # every stage labelled, each hit once
    assert sum(rejected.values()) == counters["rejected"] == 6

    # by the parsed message's type; refused before parsing, by the topic's kind (unparsed: the topic)
    inputs = s.by("edge_monitor_inputs_total", "kind")
    assert set(inputs) == {"signal", "frame", "cut_start", "cut_end", "command", "cut", "unparsed"}
    assert inputs["frame"] == 0  # this replay sends chunks
    assert sum(inputs.values()) == counters["messages_in"]
    assert (inputs["unparsed"], inputs["cut"]) == (1, 1)  # the bad topic; the unwatched machine's cut event
    n_cuts = len(model.archive.cuts)
    assert inputs["cut_start"] == n_cuts and inputs["cut_end"] == n_cuts + 2  # + the two refused in the pipeline
    before_parse = sum(rejected[r] for r in ("topic", "unwatched_machine", "payload"))
    parsed = sum(inputs[k] for k in ("signal", "cut_start", "cut_end", "command")) - 1  # less the bad command
    assert parsed == counters["messages_in"] - before_parse

    windows, batches = counters["windows_scored"], counters["batches"]
    assert windows == len(model.offline)
    assert s.value("edge_monitor_score_latency_seconds_count") == windows
    assert s.value("edge_monitor_score_latency_seconds_bucket", le="+Inf") == windows
    assert s.value("edge_monitor_batch_windows_count") == batches == s.value("edge_monitor_inference_seconds_count")
    assert s.value("edge_monitor_batch_windows_sum") == windows
    assert 0 < s.value("edge_monitor_inference_seconds_sum") < 60
    latency = sorted((float(dict(k)["le"]), v) for (n, k), v in s.samples.items()
                     if n == "edge_monitor_score_latency_seconds_bucket")
    assert [v for _, v in latency] == sorted(v for _, v in latency)  # cumulative

    scores = s.by("edge_monitor_scores_total", "level")
    assert sum(scores.values()) == windows == len(collector.on("/score"))
    assert scores["alarm"] > 0 and scores["normal"] > 0 and scores["sensor_fault"] == 0

    assert s.value("edge_monitor_machines_tracked") == 2  # mill-01, mill-02 (mill-09 was refused)
    assert s.value("edge_monitor_pending_windows") == s.value("edge_monitor_queued_inputs") == 0
    assert s.value("edge_monitor_unacknowledged_inputs") == status["backlog"]["unacknowledged"] == 0
    assert s.value("edge_monitor_checkpoint_age_seconds") < 30
    assert s.value("edge_monitor_model_info", model_id=status["model"], device="cpu", runtime="onnxruntime",
                   version=__version__) == 1
    assert status["model"] == run[1].events("bundle")[0]["model"]


def test_alarm_level_per_machine_matches_the_retained_alarm(run, module_broker):
    collector, _, url, _, _ = run
    late = Collector(module_broker, [f"{ROOT}/+/alarm"], "metrics-late-dashboard")
    try:
        late.wait(lambda: late.messages, 3)
        retained = {machine_of(t, ROOT): b["state"] for t, b, r in late.messages if r}
    finally:
        late.close()
    assert retained == {"mill-02": "alarm"}  # mill-01 never left normal: nothing retained
    time.sleep(1.2)  # a checkpoint turn after the last input hands over the levels
    s = scrape(url)
    levels = s.by("edge_monitor_alarm_level", "machine")
    assert levels == {"mill-01": 0.0, "mill-02": 2.0}
    assert s.by("edge_monitor_sensor_fault", "machine") == {"mill-01": 0.0, "mill-02": 0.0}


def test_openmetrics_and_process_figures(run):
    _, _, url, _, _ = run
    om = scrape(url, openmetrics=True)
    assert om.families["edge_monitor_model"].type == "info"
    assert om.families["edge_monitor_messages_in"].type == "counter"
    assert om.families["edge_monitor_score_latency_seconds"].type == "histogram"
    plain = scrape(url)
    assert plain.value("process_resident_memory_bytes") > 0 and "python_info" in plain.names
    assert "python_gc_collections_total" in plain.names
    # each working thread's CPU time, and the threads together within the process's
    threads = {role: plain.value("edge_monitor_thread_cpu_seconds_total", thread=role)
               for role in ("main", "inputs", "outputs", "checkpoint")}
    assert all(v >= 0 for v in threads.values()) and threads["main"] > 0, threads
    assert sum(threads.values()) <= plain.value("process_cpu_seconds_total") + 0.05


# ------------------------------------------------------------------------- the dashboard

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana variable query) selects."""
    values = re.fullmatch(r"\s*label_values\(\s*([^,{)\s]+).*", expr, re.S)
    if values:
        return {values.group(1)}
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\$\{?\w+(?::\w+)?\}?", "", e)  # Grafana variables ($__rate_interval, ${instance})
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    e = re.sub(r"\boffset\s+\w+", " ", e)
    e = re.sub(r"(?<![\w:])\d[\w.]*(?:[eE][+-]?\d+)?", " ", e)  # numbers (and durations)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", e):
        if m.group().lower() in PROMQL_WORDS or e[m.end():].lstrip().startswith("("):  # a keyword, a function
            continue
        names.add(m.group())
    return names


def dashboard_queries(node) -> list[str]:
    """Every PromQL expression in a Grafana dashboard: panels' targets (also in rows) and variables."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                out.append(value)
            elif key == "query" and isinstance(value, (str, dict)) and node.get("type") == "query":
                out.append(value if isinstance(value, str) else value.get("query", ""))
            else:
                out += dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            out += dashboard_queries(item)
    return [q for q in out if q.strip()]


def exported_names(s: Scrape) -> set[str]:
    """The series names the endpoint serves: its samples' names (histograms' _bucket, _sum and
    _count, counters' _total), and what families without samples yet would serve."""
    names = set(s.names)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
    for name, family in s.families.items():
        names.update(name + x for x in suffixes.get(family.type, [""]))
    return names


def unknown_metrics(dashboard: dict, exported: set[str]) -> dict[str, set[str]]:
    return {q: metric_names(q) - exported for q in dashboard_queries(dashboard) if metric_names(q) - exported}


def test_metric_names_are_read_from_promql():
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(edge_monitor_x_bucket{job="a"}'
                        '[$__rate_interval])))') == {"edge_monitor_x_bucket"}
    assert metric_names("sum without (instance) (a_total) / on(job) group_left(model_id) b_info offset 5m") == {
        "a_total", "b_info"}
    assert metric_names("time() - max(c) > 1e3 and d") == {"c", "d"}
    assert metric_names("label_values(edge_monitor_model_info, instance)") == {"edge_monitor_model_info"}


def test_dashboard_names_only_exported_metrics(run):
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names(scrape(run[2]))
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 12
    assert unknown_metrics(dashboard, exported) == {}
    # the check bites: a panel naming a metric that does not exist fails it
    broken = json.loads(json.dumps(dashboard))
    broken["panels"][-1]["targets"][0]["expr"] = "rate(edge_monitor_windows_scord_total[5m])"
    assert unknown_metrics(broken, exported) == {"rate(edge_monitor_windows_scord_total[5m])": {
        "edge_monitor_windows_scord_total"}}
    # what the issue asks the dashboard to show
    used = set().union(*map(metric_names, queries))
    for name in ("inputs_total", "rejected_total", "scores_total", "score_latency_seconds_bucket",
                 "inference_seconds_bucket", "lag_seconds", "queued_inputs", "alarm_level", "broker_connected",
                 "checkpoint_age_seconds", "model_info"):
        assert f"edge_monitor_{name}" in used, name


def test_alert_examples_name_only_exported_metrics(run):
    exprs = re.findall(r"^\s*expr: (.+)$", (REPO / "docs" / "metrics.md").read_text(), re.M)
    assert len(exprs) >= 5
    exported = exported_names(scrape(run[2])) | {"up"}  # up: Prometheus's own, per target
    assert {e: metric_names(e) - exported for e in exprs if metric_names(e) - exported} == {}


def test_dashboard_is_importable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30

    def datasources(node):
        if isinstance(node, dict):
            if "datasource" in node:
                yield node["datasource"]
            for v in node.values():
                yield from datasources(v)
        elif isinstance(node, list):
            for v in node:
                yield from datasources(v)

    assert {json.dumps(d, sort_keys=True) for d in datasources(dashboard["panels"])} == {
        json.dumps({"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, sort_keys=True)}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------- off, and a port in use


def test_disabled_listens_nowhere_and_a_port_in_use_stops_the_start(run, module_broker, model, tmp_path):
    """Two more daemons, started together: one with metrics off on a free port (nothing listens
    there), one on the port the running daemon serves (exit 2 with a line naming metrics.port)."""
    _, _, url, _, _ = run
    taken = int(url.rsplit(":", 1)[1].split("/")[0])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "c.yaml").write_text(f"metrics:\n  port: {taken}\n")
    busy = subprocess.Popen(
        [sys.executable, "-m", "edge_monitor", "run", "--config", str(tmp_path / "busy" / "c.yaml"), "--bundle",
         str(model.bundle), "--broker", module_broker.address, "--root", "t-metrics-busy", "--instance", "busy"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    port = free_port()
    (tmp_path / "off").mkdir()
    collector = Collector(module_broker, ["t-metrics-off/#"], "collector-metrics-off")
    off = Daemon(tmp_path / "off", module_broker, model.bundle, "t-metrics-off", "off",
                 f"metrics:\n  enabled: false\n  port: {port}\n").start()
    try:
        off.wait_online(collector)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert off.events("metrics_endpoint") == []
        assert off.terminate() == 0
        _, err = busy.communicate(timeout=60)
    finally:
        off.kill()
        busy.kill()
        collector.close()
    assert busy.returncode == 2 and "Traceback" not in err, err
    assert f"metrics.port: {taken} is in use on 127.0.0.1" in err, err


@pytest.mark.parametrize("address, port, message", [
    ("no-such-host.invalid", 0, "metrics.address: cannot listen on 'no-such-host.invalid'"),
    ("192.0.2.1", 0, "metrics.address: 192.0.2.1 is not an address of this machine"),  # TEST-NET-1
])
def test_a_bad_address_names_the_key(address, port, message):
    class Monitor:
        log = get_logger()

    metrics = Metrics(MetricsEndpoint(address=address, port=port), Monitor())
    with pytest.raises(MetricsError, match=re.escape(message)):
        metrics.start()


def test_port_zero_takes_a_free_port_and_stop_frees_it():
    class Monitor:
        log = get_logger()

    metrics = Metrics(MetricsEndpoint(port=0), Monitor())
    metrics.start()
    port = metrics.port
    assert port and port != 0
    metrics.stop()
    assert metrics.port is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again


def test_buckets_are_cumulative_with_le_semantics():
    b = Buckets((0.1, 1.0))
    b.observe(0.1)  # on a bound: that bucket (le)
    b.observe(0.5, 3)
    b.observe(7.0)
    family = b.family("x", "x")
    got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert got[("x_bucket", "0.1")] == 1 and got[("x_bucket", "1.0")] == 4 and got[("x_bucket", "+Inf")] == 5
    assert got[("x_count", None)] == 5 and got[("x_sum", None)] == pytest.approx(0.1 + 1.5 + 7.0)
