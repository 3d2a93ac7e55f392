"""The daemon's configuration: the shipped config.yaml, defaults, errors that name the key, and
command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_monitor.core.alarm import AlarmPolicy
from edge_monitor.core.inbound import Limits
from edge_monitor.service.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    return str(info.value)


def test_shipped_config_is_a_working_default_for_a_local_broker():
    config = load_config(REPO / "config.yaml")
    assert (config.broker.host, config.broker.port) == ("localhost", 1883)
    assert config.broker.client_id == "edge-monitor-edge-1"
    assert config.broker.session_expiry > 0 and config.broker.tls is None
    assert config.bundle == REPO / "runs/demo/bundle"  # what `make demo` trains
    assert config.topic_root == "mill" and config.machines == ("*",)
    assert config.alarm == AlarmPolicy() and config.limits == Limits()
    assert (config.batching.max_batch, config.batching.max_wait_ms) == (256, 50.0)
    assert (config.qos.score, config.qos.alarm, config.qos.summary, config.qos.status) == (1, 1, 1, 0)
    assert config.state_file == REPO / "runs/monitor/alarm-state.json"
    assert config.logging.format in ("auto", "json", "console")
    assert (config.metrics.enabled, config.metrics.address, config.metrics.port) == (True, "127.0.0.1", 8469)


def test_shipped_config_spells_out_every_default():
    """config.yaml documents the defaults; it must not drift from them."""
    shipped = load_config(REPO / "config.yaml")
    defaults = load_config(None)
    for name in Config.__dataclass_fields__:
        if name in ("bundle", "state_file"):  # paths: relative to the file vs the working directory
            continue
        assert getattr(shipped, name) == getattr(defaults, name), name


def test_empty_file_gives_defaults_and_relative_paths_follow_the_file(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config == Config(bundle=tmp_path / "runs/demo/bundle", broker=config.broker)
    assert config.broker.client_id == "edge-monitor-edge-1"
    config = load_config(write(tmp_path, "bundle: models/b1\nstate_file: /var/lib/em/state.json\n"))
    assert config.bundle == tmp_path / "models/b1"
    assert config.state_file == Path("/var/lib/em/state.json")


@pytest.mark.parametrize(
    "text, message",
    [
        ("broker:\n  port: abc\n", "config.yaml: broker.port: must be an integer 1-65535, got 'abc'"),
        ("broker:\n  port: 70000\n", "broker.port: must be an integer 1-65535, got 70000"),
        ("broker:\n  port: true\n", "broker.port: must be an integer"),
        ("broker:\n  prot: 1883\n", "broker.prot: unknown key (did you mean 'port'?)"),
        ("topic_rot: mill\n", "topic_rot: unknown key (did you mean 'topic_root'?)"),
        ("colour: blue\n", "colour: unknown key; known keys: broker, topic_root"),
        ("alarm:\n  persist_cut: 3\n", "alarm.persist_cut: unknown key (did you mean 'persist_cuts'?)"),
        ("alarm:\n  persist_cuts: 0\n", "alarm.persist_cuts: must be an integer 1-100, got 0"),
        ("alarm:\n  kk: 3\n", "alarm.kk: unknown key; known keys: persist_cuts, reference_cuts, min_windows, auto_clear"),
        ("alarm:\n  k: 3\n", "alarm.k: is no longer a setting: alarms are decided per cut now; use persist_cuts"),
        ("alarm:\n  clear_windows: 50\n", "alarm.clear_windows: is no longer a setting: auto_clear counts cuts now"),
        ("alarm:\n  auto_clear: sometimes\n", "alarm.auto_clear: must be true or false"),
        ("device: tpu\n", "device: must be one of auto | cpu | gpu, got 'tpu'"),
        ("batching:\n  max_batch: 0\n", "batching.max_batch: must be an integer 1-65536, got 0"),
        ("batching:\n  max_wait_ms: -5\n", "batching.max_wait_ms: must be a number 0-60000, got -5"),
        ("qos:\n  score: 3\n", "qos.score: must be an integer 0-2, got 3"),
        ("qos:\n  errors: 1\n", "qos.errors: unknown key"),
        ("outputs:\n  scores: all\n", "outputs.scores: must be one of window | batch | off, got 'all'"),
        ("limits:\n  max_chunk: 0\n", "limits.max_chunk: must be an integer"),
        ("limits:\n  max_lead_seconds: 0\n", "limits.max_lead_seconds: must be a number at least 0.1"),
        ("limits:\n  max_machines: 100001\n", "limits.max_machines: must be an integer 1-100000, got 100001"),
        ("broker:\n  reconnect_max_delay: 2\n", "broker.reconnect_max_delay: unknown key"),  # set in Python only
        ("logging:\n  format: xml\n", "logging.format: must be one of auto | json | console, got 'xml'"),
        ("logging:\n  level: loud\n", "logging.level: must be one of debug | info | warning | error"),
        ("topic_root: mill/#\n", "topic_root: topic root 'mill/#' must not contain"),
        ("instance: 'edge 1'\n", "instance: must be 1-64 characters of A-Z a-z 0-9 _ -, got 'edge 1'"),
        ("machines: []\n", "machines: must be a machine id, a pattern"),
        ("machines: [mill-01, 'bad id']\n", "machines[1]: 'bad id' is not 1-64 characters"),
        ("machines: *\n", "not valid YAML"),  # an unquoted * is a YAML alias
        ("broker: [a, b]\n", "broker: must be a mapping of keys, got a list"),
        ("- a\n- b\n", "the top level: must be a mapping of keys, got a list"),
        ("broker:\n  host: ''\n", "broker.host: must be a host name or address"),
        ("broker:\n  session_expiry: 0\n", "broker.session_expiry: must be an integer 1-4294967295"),
        ("broker:\n  password_file: pw.txt\n", "broker.password_file: is set but broker.username is not"),
        ("broker:\n  username: u\n  password_file: missing.txt\n", "broker.password_file: no such file"),
        ("broker:\n  tls:\n    ca: nowhere.crt\n", "broker.tls.ca: no such file"),
        ("broker:\n  tls:\n    crt: a.crt\n", "broker.tls.crt: unknown key (did you mean 'cert'?)"),
        ("status_interval_s: 0\n", "status_interval_s: must be a number at least 1"),
        ("errors:\n  max_per_second: 0\n", "errors.max_per_second: must be a number"),
        ("metrics:\n  port: 70000\n", "metrics.port: must be an integer 0-65535, got 70000"),
        ("metrics:\n  port: -1\n", "metrics.port: must be an integer 0-65535, got -1"),
        ("metrics:\n  address: ''\n", "metrics.address: must be a host name or address"),
        ("metrics:\n  enabled: yes please\n", "metrics.enabled: must be true or false"),
        ("metrics:\n  adress: 0.0.0.0\n", "metrics.adress: unknown key (did you mean 'address'?)"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, text, message):
    error = error_of(tmp_path, text)
    assert error.startswith(str(tmp_path / "config.yaml") + ": "), error
    assert message in error, error


def test_yaml_syntax_error_gives_the_line(tmp_path):
    assert "at line 2 column 9" in error_of(tmp_path, "broker:\n  port: : 1883\n")


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read the configuration"):
        load_config(tmp_path / "nope.yaml")


def test_credentials_and_tls_files(tmp_path):
    (tmp_path / "pw.txt").write_text("secret\n")
    for name in ("ca.crt", "c.crt", "c.key"):
        (tmp_path / name).write_text("x")
    config = load_config(write(tmp_path, (
        "broker:\n  username: monitor\n  password_file: pw.txt\n"
        "  tls: {ca: ca.crt, cert: c.crt, key: c.key}\n  client_id: em-7\n"
    )))
    b = config.broker
    assert (b.username, b.password_file, b.client_id) == ("monitor", tmp_path / "pw.txt", "em-7")
    assert (b.tls.ca, b.tls.cert, b.tls.key) == (tmp_path / "ca.crt", tmp_path / "c.crt", tmp_path / "c.key")
    assert load_config(write(tmp_path, "broker:\n  tls: {}\n")).broker.tls.ca is None  # system CAs
    assert "broker.tls.key: is set but broker.tls.cert is not" in error_of(tmp_path, "broker:\n  tls: {key: c.key}\n")


def test_overrides_replace_the_file_and_are_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "broker:\n  host: broker.lan\n  port: 8883\ninstance: a\ntopic_root: x\n")
    config = load_config(path, {"broker": "10.0.0.5:1884", "bundle": "other/b", "root": "plant1/mill",
                                "instance": "edge-7"})
    assert (config.broker.host, config.broker.port) == ("10.0.0.5", 1884)
    assert config.bundle == tmp_path / "other/b"  # relative to the working directory
    assert config.topic_root == "plant1/mill" and config.instance == "edge-7"
    assert config.broker.client_id == "edge-monitor-edge-7"  # follows the instance ...
    config = load_config(write(tmp_path, "broker:\n  client_id: fixed\n", "fixed.yaml"), {"instance": "edge-7"})
    assert config.broker.client_id == "fixed"  # ... unless set explicitly
    assert load_config(path, {"broker": "only-host"}).broker.port == 8883
    assert load_config(path, {"broker": "[::1]:1999"}).broker.host == "::1"
    assert load_config(path, {"broker": None}).broker.host == "broker.lan"  # None: not given

    for overrides, message in [
        ({"broker": "host:port"}, "--broker: expected HOST:PORT, got 'host:port'"),
        ({"broker": "h:0"}, "--broker: port must be 1-65535, got 0"),
        ({"root": "a//b"}, "--root: topic root 'a//b' must not start or end"),
        ({"instance": "x/y"}, "--instance: must be 1-64 characters"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(path, overrides)
        assert str(info.value).startswith(message), info.value
    with pytest.raises(ValueError, match="unknown override"):
        load_config(path, {"brokr": "h:1"})


def test_limits_are_one_section(tmp_path):
    config = load_config(write(tmp_path, "limits:\n  max_lead_seconds: 5\n  max_machines: 3\n"))
    assert config.limits == Limits(max_lead_seconds=5.0, max_machines=3)


def test_machine_selection(tmp_path):
    assert load_config(None).monitors("anything")
    config = load_config(write(tmp_path, "machines: mill-*\n"))
    assert config.machines == ("mill-*",)
    assert config.monitors("mill-01") and not config.monitors("lathe-01")
    config = load_config(write(tmp_path, "machines: [m1, 'lathe-?']\n"))
    assert config.monitors("m1") and config.monitors("lathe-2")
    assert not config.monitors("m10") and not config.monitors("lathe-22")


def test_metrics_endpoint_section_and_override(tmp_path):
    config = load_config(write(tmp_path, "metrics:\n  address: 0.0.0.0\n  port: 0\n"))
    assert (config.metrics.enabled, config.metrics.address, config.metrics.port) == (True, "0.0.0.0", 0)
    path = write(tmp_path, "metrics:\n  enabled: false\n  address: 0.0.0.0\n")
    assert not load_config(path).metrics.enabled
    for given, expected in [("127.0.0.1:0", (True, "127.0.0.1", 0)), ("9999", (True, "0.0.0.0", 9999)),
                            ("[::1]:8470", (True, "::1", 8470)), ("off", (False, "0.0.0.0", 8469))]:
        m = load_config(path, {"metrics": given}).metrics
        assert (m.enabled, m.address, m.port) == expected, given
    for given, message in [("h:70000", "--metrics: must be an integer 0-65535, got 70000"),
                           ("nothing", "--metrics: expected ADDRESS:PORT, PORT or off, got 'nothing'")]:
        with pytest.raises(ConfigError) as info:
            load_config(path, {"metrics": given})
        assert str(info.value) == message
