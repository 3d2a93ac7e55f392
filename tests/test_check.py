"""``edge-monitor check`` against a real Mosquitto with the deployed configuration (users, password
files, ACL and TLS from ``deploy/mosquitto/``, see ``tests/deploy_broker.py``): it passes there, and
each broken piece fails with its own line; a listener that lets clients choose their ids is a
warning; a running monitor is left alone, and a stopped one's persistent session is left as found."""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from deploy_broker import DeployBroker

from edge_monitor.__main__ import main
from edge_monitor.core.channels import CHANNELS
from edge_monitor.service.broker_conf import read_broker_conf
from edge_monitor.service.check import daemon_config, on_this_host, running_monitors
from edge_monitor.service.mqtt import connect, disconnect, make_client

REPO = Path(__file__).resolve().parents[1]
ROOT = "mill"
PROBE = "edge-monitor.check"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A small valid bundle (an untrained model: the check does not score)."""
    import numpy as np

    from edge_monitor.core.alarm import Thresholds
    from edge_monitor.core.calibration import GLOBAL, Reference, ScoreCalibration
    from edge_monitor.core.stable_region import StableRegionSpec
    from edge_monitor.core.windowing import WindowSpec
    from edge_monitor.model.bundle import save_bundle
    from edge_monitor.model.scaling import MinMaxScaler
    from edge_monitor.model.vae import VAEHyperParams, build_beta_vae

    hp = VAEHyperParams(beta=2.0, codings=4, tcn_layers=1, filters=8, kernel_size=2, dilations=(1, 2))
    path = tmp_path_factory.mktemp("check-bundle") / "bundle"
    save_bundle(path, build_beta_vae(hp, 16, len(CHANNELS), seed=1), channels=CHANNELS, window=WindowSpec(16, 16),
                stable_region=StableRegionSpec(),
                scaler=MinMaxScaler.fit(np.random.default_rng(0).normal(size=(4, 16, len(CHANNELS)))),
                calibration=ScoreCalibration({GLOBAL: Reference(0.01, 2.0, (0.01,) * len(CHANNELS), 10)}),
                hyperparams=hp, thresholds=Thresholds(1.5, 3.0, score="recon", rule="test"), metrics={},
                training={}, archive_sha256="ab" * 32,
                parity_windows=np.random.default_rng(1).random((64, 16, len(CHANNELS)), dtype=np.float32))
    return path


def start_broker(workdir: Path, acl_edit=None, conf_d: dict[str, str] | None = None) -> DeployBroker:
    broker = DeployBroker(workdir, ("mill-01",), conf_d=conf_d)
    if acl_edit is not None:
        acl = broker.etc / "acl"
        acl.write_text(acl_edit(acl.read_text()))
    return broker.start()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = start_broker(tmp_path_factory.mktemp("check-broker"))
    try:
        yield b
    finally:
        b.kill()


def write_config(where: Path, broker: DeployBroker, bundle: Path, *, tls: bool = False, state_file: Path | None = None,
                 output_user: bool = True, port: int | None = None, password_file: dict | None = None,
                 sparkplug: dict | None = None, extra: dict | None = None) -> Path:
    """The configuration install.sh writes, pointing at ``broker``; ``password_file`` replaces a
    user's password file."""
    files = {u: broker.password_file(u) for u in ("edge-monitor", "edge-monitor-out")} | (password_file or {})
    data = {
        "broker": {
            "host": "127.0.0.1", "port": port or (broker.tls_port if tls else broker.port),
            "username": "edge-monitor", "password_file": str(files["edge-monitor"]), "session_expiry": 300,
            **({"output_username": "edge-monitor-out", "output_password_file": str(files["edge-monitor-out"])}
               if output_user else {}),
            **({"tls": {"ca": str(broker.certs / "ca.crt")}} if tls else {}),
        },
        "topic_root": ROOT, "instance": "edge-1", "bundle": str(bundle), "device": "cpu",
        "state_file": str(state_file or where / "state" / "alarm-state.json"),
        **({"sparkplug": sparkplug} if sparkplug is not None else {}),
        **(extra or {}),
    }
    where.mkdir(parents=True, exist_ok=True)
    (where / "state").mkdir(exist_ok=True)
    path = where / "config.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def check(config: Path, *args: str, capsys) -> tuple[int, list[str]]:
    code = main(["check", "--config", str(config), *args])
    out = capsys.readouterr().out
    print(out)  # shown when a test fails
    return code, out.splitlines()


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


# ------------------------------------------------------------------------------------ passing


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_passes_on_the_deployed_broker(broker, bundle, tmp_path, tls, capsys):
    config = write_config(tmp_path, broker, bundle, tls=tls)
    # the full check (the model loads) once; over TLS the quick one the unit runs before each start
    code, lines = check(config, "--broker-conf", str(broker.conf), *(["--no-model"] if tls else []), capsys=capsys)
    assert code == 0 and failures(lines) == []
    where = f"127.0.0.1:{broker.tls_port} over TLS" if tls else f"127.0.0.1:{broker.port}"
    assert lines[0] == f"ok    config {config}"
    assert any(re.fullmatch(rf"ok    bundle {bundle} \(model [0-9a-f]{{16}}: .*\)", line) for line in lines)
    assert ("skip  model not loaded (--no-model)" in lines) == tls
    served = "ok    model scoring.onnx scores a window with onnxruntime on cpu (windows of 16 x 6"
    assert any(line.startswith(served) for line in lines) != tls
    assert f"ok    state {tmp_path / 'state'}: user " in "\n".join(lines)
    assert (f"ok    broker listeners in {broker.conf}: listener {broker.port} 127.0.0.1, listener {broker.tls_port} take "
            "client ids from user names (use_username_as_clientid true)") in lines
    assert any(line.startswith(f"ok    broker login as edge-monitor at {where} (the monitor's client id "
                               "edge-monitor-edge-1; ") for line in lines)
    assert f"ok    broker login as edge-monitor-out at {where} (the monitor's client id edge-monitor-edge-1-out)" in lines
    expected = [
        f"ok    ACL edge-monitor subscribes to {ROOT}/+/cut/#, {ROOT}/+/signal/#, {ROOT}/+/frame/#, {ROOT}/+/cmd/#, "
        f"{ROOT}/_monitor/edge-1/ping",
        f"ok    ACL edge-monitor-out publishes {ROOT}/{PROBE}/score",
        f"ok    ACL edge-monitor-out publishes {ROOT}/{PROBE}/alarm, edge-monitor-out reads it",
        f"ok    ACL edge-monitor-out publishes {ROOT}/_monitor/{PROBE}/status",
        f"ok    ACL edge-monitor-out publishes {ROOT}/_monitor/edge-1/ping, edge-monitor reads it",
        f"ok    ACL edge-monitor may not publish {ROOT}/{PROBE}/signal/{CHANNELS[0]} (Not authorized)",
        f"ok    ACL edge-monitor may not publish {ROOT}/{PROBE}/alarm (Not authorized)",
        f"ok    ACL edge-monitor-out may not publish {ROOT}/{PROBE}/cmd (Not authorized)",
    ]
    assert [line for line in expected if line not in lines] == []
    assert re.fullmatch(r"check passed: \d+ ok, [01] skipped", lines[-1])
    assert not list((tmp_path / "state").iterdir())  # the probe file is gone


# ------------------------------------------------------------------------------------ failing


@pytest.mark.parametrize("user", ["edge-monitor", "edge-monitor-out"])
def test_a_wrong_password_fails_that_login(broker, bundle, tmp_path, user, capsys):
    wrong = tmp_path / f"{user}.password"
    wrong.write_text("not-the-password\n")
    config = write_config(tmp_path, broker, bundle, password_file={user: wrong})
    code, lines = check(config, "--no-model", capsys=capsys)
    assert code == 1
    assert failures(lines) == [
        f"FAIL  broker login as {user} at 127.0.0.1:{broker.port}: refused (Not authorized): is the password "
        f"in {wrong} the broker's for {user}? (make-users.sh writes both)"
    ]
    assert lines[-1].startswith("check FAILED: 1 failed, ")


def test_acl_lines_missing_or_too_broad_fail_their_probes(bundle, tmp_path, capsys):
    def edit(acl: str) -> str:
        assert f"topic write {ROOT}/+/score\n" in acl and f"topic read {ROOT}/_monitor/#\n" in acl
        acl = acl.replace(f"topic write {ROOT}/+/score\n", "", 1)  # the monitor's outputs user
        acl = acl.replace(f"topic read {ROOT}/_monitor/#\n", "", 1)  # its inputs user: its ping
        # the outputs user may send commands, which it must not
        return acl.replace("user edge-monitor-out\n", f"user edge-monitor-out\ntopic write {ROOT}/+/cmd\n", 1)

    broker = start_broker(tmp_path / "broker", edit)
    try:
        code, lines = check(write_config(tmp_path, broker, bundle), "--no-model", capsys=capsys)
    finally:
        broker.kill()
    assert code == 1
    assert failures(lines) == [
        f"FAIL  ACL edge-monitor-out publishes {ROOT}/{PROBE}/score: refused (Not authorized); the broker's ACL "
        f"needs `topic write {ROOT}/+/score` for user edge-monitor-out",
        f"FAIL  ACL edge-monitor-out publishes {ROOT}/_monitor/edge-1/ping, edge-monitor reads it: accepted, but "
        f"never delivered within 5 s; the broker's ACL needs `topic readwrite {ROOT}/_monitor/# (and for "
        f"edge-monitor: topic read {ROOT}/_monitor/#)`",
        f"FAIL  ACL edge-monitor-out may not publish {ROOT}/{PROBE}/cmd: the broker accepted it; the broker's ACL "
        "gives user edge-monitor-out a right it must not have (deploy/mosquitto/acl)",
    ]
    assert lines[-1].startswith("check FAILED: 3 failed, ")


def test_the_scores_are_probed_where_the_configuration_publishes_them(bundle, tmp_path, capsys):
    """outputs.scores: batch publishes on R/+/scores, which an ACL from before it lacks; off on neither."""
    broker = start_broker(tmp_path / "broker", lambda acl: acl.replace(f"topic write {ROOT}/+/scores\n", "", 1))
    try:
        code, lines = check(write_config(tmp_path / "batch", broker, bundle, extra={"outputs": {"scores": "batch"}}),
                            "--no-model", capsys=capsys)
        assert code == 1 and failures(lines) == [
            f"FAIL  ACL edge-monitor-out publishes {ROOT}/{PROBE}/scores: refused (Not authorized); the broker's ACL "
            f"needs `topic write {ROOT}/+/scores` for user edge-monitor-out"]
        capsys.readouterr()  # what check() printed again of the first run
        code, lines = check(write_config(tmp_path / "off", broker, bundle, extra={"outputs": {"scores": "off"}}),
                            "--no-model", capsys=capsys)
        assert code == 0 and not any("/score" in line for line in lines if "ACL edge-monitor-out publishes" in line)
    finally:
        broker.kill()


def test_one_user_for_both_connections_fails_where_user_names_are_client_ids(broker, bundle, tmp_path, capsys):
    code, lines = check(write_config(tmp_path, broker, bundle, output_user=False), "--no-model", capsys=capsys)
    assert code == 1
    assert [re.sub(r" \(.*?\):", " (...):", line, count=1) for line in failures(lines)] == [
        "FAIL  broker login as edge-monitor for the outputs closed the inputs connection (...): on a broker that "
        "takes client ids from user names (the deployed one), broker.output_username must name a user of its own"]


def test_the_sparkplug_connection_is_checked_with_its_own_user(broker, bundle, tmp_path, capsys):
    own = {"enabled": True, "group_id": "plant", "username": "edge-monitor-sparkplug",
           "password_file": str(broker.password_file("edge-monitor-sparkplug"))}
    code, lines = check(write_config(tmp_path / "own", broker, bundle, sparkplug=own), "--no-model", capsys=capsys)
    assert code == 0 and failures(lines) == []
    assert (f"ok    broker login as edge-monitor-sparkplug at 127.0.0.1:{broker.port} (the monitor's client id "
            "edge-monitor-edge-1-sparkplug)") in lines
    assert f"ok    ACL edge-monitor-sparkplug publishes spBv1.0/plant/NDEATH/{PROBE} (Sparkplug)" in lines

    shared = {"enabled": True, "group_id": "plant"}  # the inputs' user: a takeover on this broker
    code, lines = check(write_config(tmp_path / "shared", broker, bundle, sparkplug=shared), "--no-model", capsys=capsys)
    assert code == 1
    assert failures(lines)[0].startswith(
        "FAIL  broker login as edge-monitor for Sparkplug closed the edge-monitor connection: on a broker that takes "
        "client ids from user names (the deployed one), sparkplug.username must name a user of its own")


def test_a_sparkplug_user_without_its_acl_fails_naming_the_block(tmp_path, bundle, capsys):
    def without_sparkplug(acl: str) -> str:
        return "\n".join(line for line in acl.splitlines() if not line.startswith("topic write spBv1.0/+/N"))

    broker = start_broker(tmp_path / "broker", acl_edit=without_sparkplug)
    try:
        own = {"enabled": True, "username": "edge-monitor-sparkplug",
               "password_file": str(broker.password_file("edge-monitor-sparkplug"))}
        code, lines = check(write_config(tmp_path, broker, bundle, sparkplug=own), "--no-model", capsys=capsys)
        assert code == 1
        assert failures(lines) == [
            f"FAIL  ACL edge-monitor-sparkplug publishes spBv1.0/edge-monitor/NDEATH/{PROBE}: refused (Not authorized); "
            "the broker's ACL needs `topic write spBv1.0/+/NDEATH/+` and the rest of the edge-monitor-sparkplug block "
            "(deploy/mosquitto/acl) for user edge-monitor-sparkplug"]
    finally:
        broker.kill()


def test_an_unwritable_state_directory_fails(broker, bundle, tmp_path, capsys):
    occupied = tmp_path / "not-a-directory"
    occupied.write_text("a regular file where the state directory should be\n")  # fails for root too
    state_file = occupied / "alarm-state.json"
    code, lines = check(write_config(tmp_path, broker, bundle, state_file=state_file), "--no-model", capsys=capsys)
    assert code == 1
    assert failures(lines) == [f"FAIL  state {state_file}: {occupied} is not a directory"]


@pytest.mark.parametrize("lock", ["read-only", "immutable"])
def test_a_state_directory_that_takes_no_file_fails(broker, bundle, tmp_path, lock, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    if lock == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes whatever the permission bits say")
        locked.chmod(0o500)
    elif subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (which stops root too) does not work here")
    try:
        code, lines = check(write_config(tmp_path, broker, bundle, state_file=locked / "alarm-state.json"),
                            "--no-model", capsys=capsys)
    finally:
        if lock == "immutable":
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o700)
    why = "Permission denied" if lock == "read-only" else "Operation not permitted"
    user = getpass.getuser()
    assert code == 1
    assert failures(lines) == [f"FAIL  state {locked}/alarm-state.json: user {user} cannot write a file in {locked} ({why})"]


def test_a_modified_bundle_fails_without_tensorflow(broker, bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["thresholds"]["alarm"] = 9.0
    (copy / "bundle.json").write_text(json.dumps(meta))
    code, lines = check(write_config(tmp_path, broker, copy), "--no-model", capsys=capsys)
    assert code == 1
    [line] = failures(lines)
    assert re.fullmatch(rf"FAIL  bundle {copy}: model_id '{meta['model_id']}' in bundle\.json does not match the "
                        r"content of model\.keras, scoring\.onnx and bundle\.json \(hash '[0-9a-f]{16}'\); the bundle was modified "
                        r"after saving: restore the saved files or train a new bundle", line), line


def test_the_quick_form_loads_no_tensorflow_and_a_broker_down_is_skipped_only_when_allowed(broker, bundle, tmp_path,
                                                                                           capsys):
    from broker import free_port

    port = free_port()  # nothing listens there
    config = write_config(tmp_path, broker, bundle, port=port)
    script = ("import sys; from edge_monitor.__main__ import main; code = main(sys.argv[1:]); "
              "print('tensorflow' in sys.modules, 'keras' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, "check", "--config", str(config), "--no-model",
                           "--broker-may-be-down"], capture_output=True, text=True, timeout=60, cwd=REPO)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines[-1] == "False False"  # neither TensorFlow nor Keras was imported
    assert re.fullmatch(rf"skip  broker 127\.0\.0\.1:{port} not reachable \(connection refused.*\): no login nor "
                        r"ACL checked; the monitor connects once it is up", lines[-3]), lines
    code, lines = check(config, "--no-model", capsys=capsys)
    assert code == 1 and failures(lines) == [
        f"FAIL  broker 127.0.0.1:{port} not reachable (connection refused (is the broker running and listening on "
        "that port?))"]


# ------------------------------------------------------------------------------------ the broker's listeners


def test_a_listener_without_use_username_as_clientid_warns_and_is_a_real_hole(bundle, tmp_path, capsys):
    """A drop-in adds a listener without the setting: the check says so (a warning, not a failure),
    naming the file, the listener and the fix; and on that listener a dashboard's user does take
    over the monitor's session."""
    from broker import free_port

    port = free_port()
    extra = f"# an integrator's extra listener\nlistener {port} 127.0.0.1\nprotocol mqtt\n"
    broker = start_broker(tmp_path / "broker", conf_d={"zz-extra.conf": extra})
    try:
        code, lines = check(write_config(tmp_path, broker, bundle), "--no-model", "--broker-conf", str(broker.conf),
                            capsys=capsys)
        assert code == 0 and failures(lines) == []
        assert [line for line in lines if line.startswith("WARN")] == [
            f"WARN  broker listener {port} 127.0.0.1 ({broker.conf_d}/zz-extra.conf:2) lets a client choose its client "
            "id: any client that signs in there can take over another one's session, the monitor's and the inputs "
            "queued for it included; add `use_username_as_clientid true` below that line, in that file (a listener "
            "setting belongs to the last `listener` line above it in the same file), then restart mosquitto"]
        assert (f"ok    broker listeners in {broker.conf}: listener {broker.port} 127.0.0.1, listener {broker.tls_port} "
                "take client ids from user names (use_username_as_clientid true)") in lines
        assert re.fullmatch(r"check passed: \d+ ok, 1 skipped, 1 warning", lines[-1])  # skipped: --no-model

        # the hole: the monitor's input connection (client id = its user name), then user scada on
        # the extra listener asking for that id
        dropped = threading.Event()
        monitor = make_client(broker.settings("edge-monitor", "ignored", session_expiry=300), clean_start=False)
        monitor.on_disconnect = lambda c, u, f, reason, p: dropped.set()
        connect(monitor)
        intruder = make_client(dataclasses.replace(broker.settings("scada", "edge-monitor"), port=port,
                                                   reconnect_max_delay=3600), clean_start=False)
        try:
            connect(intruder)
            assert dropped.wait(5), "the monitor's connection was not taken over"
            assert re.search(rf"New client connected from 127\.0\.0\.1:\d+ as edge-monitor \(.*u'scada'\)",
                             broker.log.read_text())
        finally:
            disconnect(intruder)
            disconnect(monitor)
    finally:
        broker.kill()


def test_a_listener_setting_before_a_files_first_listener_goes_to_the_default_listener(broker, bundle, tmp_path,
                                                                                       capsys):
    """Read as Mosquitto 2.0 reads it (not started: the default listener would open port 1883 on
    every interface): a drop-in that sets use_username_as_clientid before its `listener` line
    protects the default listener it opens, not its own."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "edge-monitor.conf").write_text((broker.conf_d / "edge-monitor.conf").read_text())
    (conf_d / "extra.conf").write_text("use_username_as_clientid true\nlistener 18884 127.0.0.1\n")
    main = tmp_path / "mosquitto.conf"
    main.write_text(broker.conf.read_text().replace(f"include_dir {broker.conf_d}", f"include_dir {conf_d}"))
    code, lines = check(write_config(tmp_path, broker, bundle), "--no-model", "--broker-conf", str(main), capsys=capsys)
    assert code == 0
    assert [line[:80] for line in lines if line.startswith("WARN")] == [
        f"WARN  broker listener 18884 127.0.0.1 ({conf_d}/extra.conf:2) lets a client choose its client id: an"[:80]]
    assert (f"ok    broker listeners in {main}: Mosquitto's default listener (port 1883, every interface), listener "
            f"{broker.port} 127.0.0.1, listener {broker.tls_port} take client ids from user names "
            "(use_username_as_clientid true)") in lines


def test_listeners_are_read_as_mosquitto_reads_them(tmp_path):
    """include_dir in the main file only, in Mosquitto's order; each file's settings go to its own
    last listener; per_listener_settings moves the security settings, not use_username_as_clientid."""
    inc = tmp_path / "conf.d"
    inc.mkdir()
    for name, text in {"b.conf": "listener 4 127.0.0.1\nuse_username_as_clientid true\n",
                       "A.conf": "listener 2\n", "a.conf": "listener 3\nuse_username_as_clientid false\n",
                       "00.conf": f"listener 1\nuse_username_as_clientid true\ninclude_dir {tmp_path}/never\n",
                       "README": "listener 9\n", ".conf": "listener 9\n"}.items():
        (inc / name).write_text(text)
    main = tmp_path / "main.conf"
    main.write_text(f"# Debian's\npid_file /run/mosquitto/mosquitto.pid\ninclude_dir {inc}\n")
    conf = read_broker_conf(main)
    assert [(lst.name, lst.username_as_clientid) for lst in conf.listeners] == [
        ("listener 1", True), ("listener 2", False), ("listener 3", False), ("listener 4 127.0.0.1", True)]
    assert conf.unread == []

    # per_listener_settings true: a password_file before any listener makes the default listener
    for per_listener, default in (("false", False), ("true", True)):
        main.write_text(f"per_listener_settings {per_listener}\npassword_file /x\nlistener 5\n"
                        "use_username_as_clientid true\n")
        listeners = read_broker_conf(main).listeners
        assert [lst.default for lst in listeners] == ([True, False] if default else [False])
        assert listeners[-1].name == "listener 5" and listeners[-1].username_as_clientid
        if default:
            assert listeners[0].made_by == "password_file /x" and not listeners[0].username_as_clientid

    # nothing configured: Mosquitto's local-only listener, without the setting
    main.write_text("persistence true\n")
    [local] = read_broker_conf(main).listeners
    assert local.local_only and not local.username_as_clientid

    # a file the check may not read is named, not guessed at
    (inc / "b.conf").chmod(0)
    try:
        if os.geteuid() != 0:
            main.write_text(f"include_dir {inc}\n")
            assert read_broker_conf(main).unread == [(inc / "b.conf", "Permission denied")]
    finally:
        (inc / "b.conf").chmod(0o644)


def test_a_broker_configuration_that_cannot_be_read_is_skipped(broker, bundle, tmp_path, capsys):
    missing = tmp_path / "no-such" / "mosquitto.conf"
    code, lines = check(write_config(tmp_path, broker, bundle), "--no-model", "--broker-conf", str(missing),
                        capsys=capsys)
    assert code == 0
    assert (f"skip  broker listeners: cannot read {missing} (No such file or directory): not checked (a broker "
            "installed otherwise than by Debian's package: --broker-conf PATH names its main configuration)") in lines
    assert on_this_host("127.0.0.1") and on_this_host("::1") and on_this_host("localhost")
    assert not on_this_host("edge-01.plant.example") and not on_this_host("192.0.2.7")


# ------------------------------------------------------------------------------------ the monitor's session


STAND_IN = textwrap.dedent("""\
    # Holds the monitor's two connections as the daemon makes them, for as long as stdin is open.
    import sys
    from edge_monitor.service.config import load_config
    from edge_monitor.service.mqtt import connect, make_client
    config = load_config(sys.argv[sys.argv.index("--config") + 1])
    out = make_client(config.broker.for_outputs(), clean_start=True, will=("mill/_monitor/edge-1/status", b"offline", 1, True))
    ins = make_client(config.broker, clean_start=False, manual_ack=True, receive_maximum=100)
    for client in (out, ins):
        client.on_disconnect = lambda c, u, f, reason, p: print("dropped", reason, flush=True)
        connect(client)
    print("connected", flush=True)
    sys.stdin.read()
""")


def test_a_running_monitor_is_left_alone(broker, bundle, tmp_path, capsys):
    config = write_config(tmp_path, broker, bundle)
    # The installed daemon's command line: /opt/edge-monitor/bin/python /opt/edge-monitor/bin/edge-monitor run ...
    program = tmp_path / "bin" / "edge-monitor"
    program.parent.mkdir()
    program.write_text(STAND_IN)
    seen = len(broker.log.read_text())
    monitor = subprocess.Popen([sys.executable, str(program), "run", "--config", str(config)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert monitor.stdout.readline().strip() == "connected"
        assert running_monitors(config) == [monitor.pid]
        code, lines = check(config, "--no-model", capsys=capsys)
        assert code == 0
        assert lines[-2] == (
            "skip  broker login and ACL as edge-monitor and edge-monitor-out: the monitor runs with this "
            f"configuration (pid {monitor.pid}); logging in as its users would take over its connections (the "
            "broker takes client ids from user names): stop it to check them")
        time.sleep(0.5)
    finally:
        monitor.stdin.close()
        rest = monitor.stdout.read()
        monitor.wait(10)
    assert "dropped" not in rest  # the stand-in's connections were never taken over
    assert "already connected" not in broker.log.read_text()[seen:]


def test_a_stopped_monitors_session_is_left_as_found(broker, bundle, tmp_path, capsys):
    """Its subscriptions stay and what was queued for it is still delivered to it, after a check."""
    config = write_config(tmp_path, broker, bundle)
    settings = broker.settings("edge-monitor", "edge-monitor-edge-1", session_expiry=300)
    got, lock = [], threading.Lock()

    def monitor_session(on_message=None):
        client = make_client(settings, clean_start=False, manual_ack=True, receive_maximum=100)

        def receive(c, u, message):
            with lock:
                got.append(message.payload)
            c.ack(message.mid, message.qos)

        client.on_message = receive
        connect(client)
        return client

    first = monitor_session()
    first.subscribe(f"{ROOT}/+/cut/#", qos=1)
    time.sleep(0.3)
    disconnect(first)
    daq = make_client(broker.settings("daq-mill-01", "daq"), clean_start=True)
    connect(daq)
    for i in range(5):
        daq.publish(f"{ROOT}/mill-01/cut", b"queued %d" % i, qos=1).wait_for_publish(5)
    code, lines = check(config, "--no-model", capsys=capsys)
    assert code == 0
    assert any("its persistent session resumed, left as found" in line for line in lines)
    daq.publish(f"{ROOT}/mill-01/cut", b"after the check", qos=1).wait_for_publish(5)
    disconnect(daq)
    again = monitor_session()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(set(got)) < 6:
        time.sleep(0.05)
    disconnect(again)
    assert sorted(set(got)) == sorted([b"queued %d" % i for i in range(5)] + [b"after the check"])


# ------------------------------------------------------------------------------------ command lines


@pytest.mark.parametrize("argv, config", [
    (["/opt/edge-monitor/bin/python", "/opt/edge-monitor/bin/edge-monitor", "run", "--config", "/etc/c.yaml"],
     "/etc/c.yaml"),
    (["python3", "-m", "edge_monitor", "run", "--config=rel.yaml", "--broker", "h:1"], "rel.yaml"),
    (["edge-monitor", "run"], "config.yaml"),
    (["edge-monitor", "check", "--config", "/etc/c.yaml"], None),
    (["python3", "-m", "edge_monitor", "replay", "--machines", "2"], None),
    (["vim", "run", "--config", "/etc/c.yaml"], None),
])
def test_the_daemons_command_lines_are_recognised(argv, config):
    assert daemon_config(argv) == config
