"""``deploy/install.sh``: a dry run changes nothing; ``--prefix`` installs a tree (reusing this venv)
whose unit ``systemd-analyze verify`` accepts, whose security exposure is at most the score
recorded in docs/deploy.md, which a second run leaves untouched, and which actually runs: the
installed broker configuration and credentials, the installed configuration and the installed
daemon, READY=1 included."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from broker import Broker, free_port
from daemon_support import REPO, model_fixture

from edge_monitor.service.config import load_config

INSTALL = REPO / "deploy" / "install.sh"
UNIT = "etc/systemd/system/edge-monitor.service"
SAVER_UNIT = "etc/systemd/system/edge-monitor-broker-save.service"
TEMPLATE_UNIT = "etc/systemd/system/edge-monitor@.service"
VENV = Path(sys.prefix)  # the project's venv, running these tests
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
NEEDS_ANALYZE = pytest.mark.skipif(
    not Path(ANALYZE).exists(), reason="systemd-analyze is missing: `make install` installs the Debian package systemd"
)


def install(prefix: Path | None, bundle: Path, *args: str, venv: bool = True, check: bool = True
            ) -> subprocess.CompletedProcess:
    argv = ["bash", str(INSTALL), "--bundle", str(bundle), *args]
    if prefix is not None:
        argv += ["--prefix", str(prefix)]
    if venv:
        argv += ["--venv", str(VENV)]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert done.returncode == 0, f"install.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a second run could change: type, mode, owner, content, mtime, link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = ("link", os.readlink(path))
        elif path.is_dir():
            what = ("dir",)
        else:
            what = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        out[str(path.relative_to(root))] = (*what, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


# What a real install writes on the box. install.sh compares with whatever is there (that is how a
# second run changes nothing), so a dry run on a box with an installation plans differently.
HOST_PATHS = tuple(map(Path, (
    "/opt/edge-monitor", "/etc/edge-monitor", "/var/lib/edge-monitor", "/etc/mosquitto/conf.d/edge-monitor.conf",
    "/etc/mosquitto/edge-monitor", "/usr/local/share/edge-monitor", "/etc/systemd/system/edge-monitor.service",
)))


def host_state() -> dict[str, tuple | None]:
    """lstat of each of HOST_PATHS and of everything under it that this user may list: type, mode,
    owner, size, mtime, link target (None: missing). Any change a run could make shows here,
    without following a symlink nor reading a file that may be a secret."""
    state: dict[str, tuple | None] = {}

    def record(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            state[path] = None
            return
        link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
        state[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, link)

    for top in map(str, HOST_PATHS):
        record(top)
        if state[top] is not None and stat.S_ISDIR(state[top][0]):
            for folder, dirs, files in os.walk(top):  # folders this user may not list are skipped
                for name in dirs + files:
                    record(os.path.join(folder, name))
    return state


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def installed(tmp_path_factory, model, ports) -> tuple[Path, subprocess.CompletedProcess]:
    prefix = tmp_path_factory.mktemp("install") / "root"
    done = install(prefix, model.bundle, "--machine", "mill-01", "--broker-port", str(ports[0]),
                   "--tls-port", str(ports[1]))
    return prefix, done


# ------------------------------------------------------------------------------ dry runs


def test_a_dry_run_prints_every_action_and_changes_nothing(tmp_path, model):
    prefix = tmp_path / "root"
    out = install(prefix, model.bundle, "--dry-run").stdout
    assert not prefix.exists()
    assert f"would run: ln -sfn {VENV} {prefix}/opt/edge-monitor" in out
    assert re.search(rf"would run: cp -r {re.escape(str(model.bundle))} {prefix}/var/lib/edge-monitor/\S+", out)
    assert re.search(r"would run: \S+/make-users.sh --confdir \S+/etc/mosquitto/edge-monitor ", out)
    assert re.search(r"would run: \S+/make-test-ca.sh ", out)
    for dest in ("etc/edge-monitor/config.yaml", "etc/mosquitto/conf.d/edge-monitor.conf", UNIT):
        assert re.search(rf"would run: install -m 0\d\d\d \S+ {prefix}/{dest}\n", out), dest
    assert "skipped (--prefix): systemctl enable --now mosquitto.service edge-monitor.service" in out
    assert "skipped (--prefix): system user edge-monitor" in out
    assert out.rstrip().endswith("done (dry run: nothing was changed)")


def test_a_dry_run_plans_building_the_venv(tmp_path, model):
    prefix = tmp_path / "root"
    out = install(prefix, model.bundle, "--dry-run", "--no-gpu", venv=False).stdout
    assert not prefix.exists()
    opt = re.escape(f"{prefix}/opt/edge-monitor")
    assert "python package: edge-monitor[serve] (no GPU found, or --no-gpu)" in out
    assert re.search(rf"would run: \S+ -m venv {opt}\n", out)
    assert re.search(rf"would run: {opt}/bin/python -m pip install --quiet --upgrade {re.escape(str(REPO))}\\\[serve\\\]\n", out)
    assert re.search(rf"would write {opt}/\.edge-monitor-source\n", out)


def test_a_dry_run_of_a_real_install_plans_packages_user_venv_and_units(tmp_path, model):
    """Without --prefix (as root would run it), but dry: what this box would get, nothing touched.
    The plan depends on what the box already has (an installation, or a test's fake one), so what
    is expected is read from the box too: the test holds on a clean box and an installed one."""
    before = host_state()
    done = install(None, model.bundle, "--dry-run", "--no-gpu", venv=False, check=False)
    assert host_state() == before, "the dry run changed something on this box"
    opt = Path("/opt/edge-monitor")
    if opt.is_symlink():
        # An install with --venv: a real run would refuse to build a venv over it, so the dry run does too.
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"{opt} is a symlink (from an install with --venv): remove it, or pass --venv again" in done.stderr
        done = install(None, model.bundle, "--dry-run", "--no-gpu", check=False)  # the rest of the plan
        assert host_state() == before, "the dry run changed something on this box"
    assert done.returncode == 0, f"install.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    if not opt.exists() and not opt.is_symlink():
        assert re.search(r"would run: \S+ -m venv /opt/edge-monitor\n", out)
    if not opt.is_symlink():
        pip = rf"would run: /opt/edge-monitor/bin/python -m pip install --quiet --upgrade {re.escape(str(REPO))}\\\[serve\\\]\n"
        assert re.search(pip, out) or "unchanged /opt/edge-monitor (built from this source tree)" in out
    for path, mode in (("/etc/edge-monitor/config.yaml", "0640"), ("/etc/systemd/system/edge-monitor.service", "0644")):
        planned = re.search(rf"would run: install -m {mode} .* {re.escape(path)}\n", out)
        assert planned or (Path(path).exists() and f"unchanged {path}" in out), path
    has_user = subprocess.run(["getent", "passwd", "edge-monitor"], capture_output=True).returncode == 0
    assert ("would run: useradd --system" in out) != has_user
    systemctl = r"skipped \(systemd is not PID 1 here: [^)]*\): systemctl enable|would run: systemctl enable "
    assert re.search(systemctl, out)


# ------------------------------------------------------------------------------ the installed tree


def test_the_tree_has_everything_where_the_service_looks(installed, model, ports):
    prefix, _ = installed
    unit = (prefix / UNIT).read_text()
    exec_start = re.search(r"^ExecStart=(\S+) run --config (\S+)$", unit, re.M)
    assert exec_start, unit
    assert exec_start.group(1) == f"{prefix}/opt/edge-monitor/bin/edge-monitor"
    assert os.access(exec_start.group(1), os.X_OK)
    assert exec_start.group(2) == f"{prefix}/etc/edge-monitor/config.yaml"
    config = load_config(exec_start.group(2))
    assert config.bundle == prefix / "var/lib/edge-monitor/bundle"
    assert (config.bundle / "bundle.json").read_bytes() == (model.bundle / "bundle.json").read_bytes()
    assert config.state_file == prefix / "var/lib/edge-monitor/alarm-state.json"
    assert (config.broker.host, config.broker.port) == ("127.0.0.1", ports[0])
    assert config.broker.username == "edge-monitor"
    assert config.broker.password_file == prefix / "etc/edge-monitor/secrets/edge-monitor.password"
    assert config.broker.output_username == "edge-monitor-out"
    assert config.broker.output_password_file == prefix / "etc/edge-monitor/secrets/edge-monitor-out.password"
    # Sparkplug stays off, but turning it on needs no user to be made: its own is there
    assert not config.sparkplug.enabled and config.sparkplug.username == "edge-monitor-sparkplug"
    assert config.sparkplug.password_file == prefix / "etc/edge-monitor/secrets/edge-monitor-sparkplug.password"
    broker_conf = (prefix / "etc/mosquitto/conf.d/edge-monitor.conf").read_text()
    assert f"listener {ports[0]} 127.0.0.1" in broker_conf
    assert f"password_file {prefix}/etc/mosquitto/edge-monitor/passwd" in broker_conf
    assert "@" not in re.sub(r"#.*", "", broker_conf)  # every placeholder filled
    for name in ("passwd", "acl", "certs/ca.crt", "certs/server.crt", "certs/server.key"):
        assert (prefix / "etc/mosquitto/edge-monitor" / name).is_file(), name
    # the test CA's private key is kept out of the broker's folder
    assert not list((prefix / "etc/mosquitto").rglob("ca.key"))
    assert stat.S_IMODE((prefix / "etc/edge-monitor/test-ca/ca.key").stat().st_mode) == 0o600
    acl = (prefix / "etc/mosquitto/edge-monitor/acl").read_text()
    assert "user daq-mill-01" in acl
    assert "user replay" not in acl and "replay:" not in (prefix / "etc/mosquitto/edge-monitor/passwd").read_text()
    assert (prefix / "usr/local/share/edge-monitor/mosquitto/make-users.sh").stat().st_mode & 0o111


@NEEDS_ANALYZE
@pytest.mark.parametrize("unit", [UNIT, SAVER_UNIT, TEMPLATE_UNIT])
def test_systemd_analyze_verify_accepts_the_units(installed, unit):
    prefix, _ = installed
    done = analyze("verify", str(prefix / unit))
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_the_template_unit_is_the_single_unit_per_instance(installed):
    from unit_template import DEPLOY, template_unit

    shipped = (DEPLOY / "edge-monitor@.service").read_text()
    assert shipped == template_unit((DEPLOY / "edge-monitor.service").read_text()), \
        "deploy/edge-monitor@.service is out of date: run python tests/unit_template.py"
    prefix, _ = installed
    installed_text = (prefix / TEMPLATE_UNIT).read_text()
    assert f"--config {prefix}/etc/edge-monitor/%i.yaml" in installed_text
    assert "StateDirectory=edge-monitor edge-monitor/%i\n" in installed_text


def test_the_broker_saver_runs_the_installed_script(installed):
    prefix, _ = installed
    exec_start = re.search(r"^ExecStart=(\S+) ", (prefix / SAVER_UNIT).read_text(), re.M).group(1)
    assert exec_start == f"{prefix}/usr/local/share/edge-monitor/mosquitto/save-while-small"
    assert Path(exec_start).stat().st_mode & 0o111


@NEEDS_ANALYZE
def test_the_security_exposure_is_at_most_the_documented_score(installed):
    prefix, _ = installed
    documented = re.search(r"Overall exposure level for edge-monitor\.service: (\d+\.\d+) (\w+)",
                           (REPO / "docs" / "deploy.md").read_text())
    assert documented, "docs/deploy.md must quote the line `→ Overall exposure level for edge-monitor.service: ...`"
    done = analyze("security", "--offline=true", str(prefix / UNIT))
    measured = re.search(r"Overall exposure level for edge-monitor\.service: (\d+\.\d+) (\w+)", done.stdout)
    assert measured, done.stdout + done.stderr
    assert float(measured.group(1)) <= float(documented.group(1)), done.stdout
    assert {measured.group(2), documented.group(2)} <= {"PERFECT", "SAFE", "OK"}


def test_a_second_run_changes_nothing(installed, model, ports):
    prefix, first = installed
    assert "+ " in first.stdout  # the first run did things
    before = snapshot(prefix)
    again = install(prefix, model.bundle, "--machine", "mill-01", "--broker-port", str(ports[0]),
                    "--tls-port", str(ports[1]))
    assert snapshot(prefix) == before
    assert [line for line in again.stdout.splitlines() if line.startswith("+ ")] == []
    assert "unchanged" in again.stdout


def test_the_installs_check_reads_the_brokers_listeners(installed, ports):
    _, done = installed
    conf = re.escape(str(installed[0] / "etc/mosquitto/conf.d/edge-monitor.conf"))
    assert re.search(rf"^ok    broker listeners in {conf}: listener {ports[0]} 127\.0\.0\.1, listener {ports[1]} take "
                     r"client ids from user names", done.stdout, re.M), done.stdout
    assert "WARN" not in done.stdout


def test_an_edited_config_is_kept_and_a_damaged_unit_restored(installed, model, ports):
    prefix, _ = installed
    config, unit = prefix / "etc/edge-monitor/config.yaml", prefix / UNIT
    edited = config.read_text() + "# site note\n"
    config.write_text(edited)
    good_unit = unit.read_text()
    unit.write_text(good_unit.replace("NoNewPrivileges=yes\n", ""))
    out = install(prefix, model.bundle, "--machine", "mill-01", "--broker-port", str(ports[0]),
                  "--tls-port", str(ports[1])).stdout
    assert config.read_text() == edited
    assert unit.read_text() == good_unit
    assert [line for line in out.splitlines() if line.startswith("+ ")] == [
        line for line in out.splitlines() if line.startswith("+ install -m 0644") and line.endswith(UNIT)
    ]


def test_a_ca_key_left_in_the_brokers_folder_is_moved_out(installed, model, ports):
    """An install by an earlier version kept the test CA's key in certs/: the next run moves it."""
    prefix, _ = installed
    certs, keys = prefix / "etc/mosquitto/edge-monitor/certs", prefix / "etc/edge-monitor/test-ca"
    ca, key = (certs / "ca.crt").read_bytes(), (keys / "ca.key").read_bytes()
    (keys / "ca.key").rename(certs / "ca.key")
    out = install(prefix, model.bundle, "--machine", "mill-01", "--broker-port", str(ports[0]),
                  "--tls-port", str(ports[1])).stdout
    assert f"moved the test CA's key out of the broker's folder: {certs}/ca.key -> {keys}/ca.key" in out
    assert not (certs / "ca.key").exists() and (keys / "ca.key").read_bytes() == key
    assert (certs / "ca.crt").read_bytes() == ca  # the same CA: SCADA clients keep theirs


# ------------------------------------------------------------------------------ the tree runs


class InstalledBroker(Broker):
    """Mosquitto with a main configuration like Debian's, including the installed conf.d."""

    def __init__(self, workdir: Path, prefix: Path, port: int) -> None:
        super().__init__(workdir, port=port)
        self.prefix = prefix

    def _write_conf(self) -> None:
        self.conf.write_text(
            f"persistence_location {self.workdir}/\nlog_dest file {self.log}\nconnection_messages true\n"
            f"user {getpass.getuser()}\ninclude_dir {self.prefix}/etc/mosquitto/conf.d\n"
        )


def test_the_installed_daemon_runs_with_the_installed_broker(installed, ports, tmp_path):
    from test_systemd import (
        NotifyListener,  # the stand-in for systemd's notification socket
    )

    prefix, _ = installed
    broker = InstalledBroker(tmp_path / "broker", prefix, ports[0]).start()
    listener = NotifyListener(f"@edge-monitor-install-{os.getpid()}")
    log = tmp_path / "daemon.log"
    unit = (prefix / UNIT).read_text()
    argv = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1).split()
    argv += ["--metrics", "127.0.0.1:0"]  # not the default port, which a monitor installed on this host holds
    env = {**os.environ, "NOTIFY_SOCKET": listener.address, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "w") as out:
        daemon = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        ready = listener.wait_for("READY=1", 90)
        assert ready is not None, f"no READY=1 within 90 s:\n{log.read_text()[-3000:]}{broker.log_tail()}"
        # it signed in with the installed credentials on the installed listener (its client id is its user)
        log_text = broker.log.read_text()
        assert re.search(r"New client connected from 127\.0\.0\.1:\d+ as edge-monitor .*u'edge-monitor'", log_text)
        assert re.search(r"New client connected from 127\.0\.0\.1:\d+ as edge-monitor-out .*u'edge-monitor-out'",
                         log_text)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()[-3000:]
        assert (prefix / "var/lib/edge-monitor/alarm-state.json").is_file()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        listener.close()
        broker.kill()


def test_a_new_bundle_goes_beside_the_old_one_and_the_link_switches(tmp_path, model):
    from daemon_support import second_bundle

    prefix = tmp_path / "root"
    state = prefix / "var/lib/edge-monitor"
    second, id2 = second_bundle(model, tmp_path / "bundle-2", 2.0)
    third, id3 = second_bundle(model, tmp_path / "bundle-3", 3.0)
    id1 = json.loads((model.bundle / "bundle.json").read_text())["model_id"]
    install(prefix, model.bundle)
    assert os.readlink(state / "bundle") == f"bundles/{id1}"
    # an installation from before bundles/: its bundle directory moves there and gets the link
    (state / "bundle").unlink()
    (state / "bundles" / id1).rename(state / "bundle")
    out = install(prefix, second).stdout
    assert os.readlink(state / "bundle") == f"bundles/{id2}"
    assert sorted(p.name for p in (state / "bundles").iterdir()) == sorted([id1, id2])  # the one before stays
    assert load_config(prefix / "etc/edge-monitor/config.yaml").bundle.resolve() == (state / "bundles" / id2)
    assert "+ mv -T" in out
    install(prefix, third)
    assert os.readlink(state / "bundle") == f"bundles/{id3}"
    assert sorted(p.name for p in (state / "bundles").iterdir()) == sorted([id2, id3])  # older ones go
    again = install(prefix, third).stdout
    assert f"unchanged {state}/bundle -> bundles/{id3}" in again
