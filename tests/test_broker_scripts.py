"""The broker's scripts on their own, without a broker (``deploy/mosquitto/make-users.sh`` and
``make-test-ca.sh``): the channels a machine's data acquisition may write are the monitor's, the
demo user is made only when asked for, and the test CA's private key never lands in the broker's
certificate folder. What the resulting files let each user do on a real Mosquitto is
``tests/test_deploy_broker.py``'s part."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest
from deploy_broker import DEPLOY, run_script

from edge_monitor.core.channels import CHANNELS

MAKE_USERS = DEPLOY / "make-users.sh"


def make_users(where: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(MAKE_USERS), "--confdir", str(where / "etc"), "--secrets", str(where / "secrets"),
                           "--broker-group", "", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def acl_block(where: Path, user: str) -> list[str]:
    """The ``topic`` lines of ``user``'s block in the written ACL."""
    lines = (where / "etc" / "acl").read_text().splitlines()
    start = lines.index(f"user {user}") + 1
    block = []
    for line in lines[start:]:
        if line.startswith("user "):
            break
        if line.startswith("topic "):
            block.append(line)
    return block


def users(where: Path) -> list[str]:
    return [line.split(":", 1)[0] for line in (where / "etc" / "passwd").read_text().splitlines()]


# ------------------------------------------------------------------------------------ make-users.sh


def test_the_scripts_default_channels_are_the_monitors(tmp_path):
    """The twin of edge_monitor/core/channels.py in the script: the default list, and the ACL it
    writes (a machine's cut, its frame and one signal topic per channel, nothing below them)."""
    default = re.search(r"^CHANNELS=(\S+)$", MAKE_USERS.read_text(), re.M)
    assert default and tuple(default.group(1).split(",")) == CHANNELS
    make_users(tmp_path, "mill-01")
    assert acl_block(tmp_path, "daq-mill-01") == ["topic write mill/mill-01/cut", "topic write mill/mill-01/frame"] + [
        f"topic write mill/mill-01/signal/{c}" for c in CHANNELS]


def test_other_channels_make_other_exact_topics_and_bad_ones_are_refused(tmp_path):
    make_users(tmp_path, "--channels", "a1,b-2", "--root", "plant/mill", "--replay", "m")
    assert acl_block(tmp_path, "daq-m") == ["topic write plant/mill/m/cut", "topic write plant/mill/m/frame",
                                            "topic write plant/mill/m/signal/a1",
                                            "topic write plant/mill/m/signal/b-2"]
    assert [line for line in acl_block(tmp_path, "replay") if "/signal/" in line] == [
        "topic write plant/mill/+/signal/a1", "topic write plant/mill/+/signal/b-2"]
    for bad, why in (("a,b/c", "channel 'b/c' is not 1-64 characters"), ("a,#", "channel '#' is not"),
                     ("", "names no channel"), ("a,a", "names a channel twice")):
        done = make_users(tmp_path / "bad", "--channels", bad, check=False)
        assert done.returncode == 2 and why in done.stderr, done.stderr


def test_the_demo_user_is_made_only_when_asked_and_kept_until_deleted(tmp_path):
    secret = tmp_path / "secrets" / "replay.password"
    make_users(tmp_path, "mill-01")  # a first run without options: no demo user
    assert "replay" not in users(tmp_path) and not secret.exists()
    assert "user replay" not in (tmp_path / "etc" / "acl").read_text()

    out = make_users(tmp_path, "--replay").stdout
    assert "replay" in users(tmp_path) and secret.exists()
    assert "DEMO user replay is there" in out
    assert acl_block(tmp_path, "replay") == [
        "topic write mill/+/cut", *(f"topic write mill/+/signal/{c}" for c in CHANNELS), "topic write mill/+/frame",
        "topic write mill/+/cmd",
        "topic deny mill/_monitor/#", "topic deny mill//#"]
    password = secret.read_text()

    make_users(tmp_path, "mill-02")  # a later run, say to add a machine: kept as it was
    assert "replay" in users(tmp_path) and secret.read_text() == password
    assert "topic write mill/+/cmd" in acl_block(tmp_path, "replay")

    out = make_users(tmp_path, "--no-replay").stdout
    assert re.search(r"^  replay +removed", out, re.M)
    assert "replay" not in users(tmp_path) and not secret.exists()
    assert "user replay" not in (tmp_path / "etc" / "acl").read_text()
    make_users(tmp_path)
    assert "replay" not in users(tmp_path)
    assert {u for u in users(tmp_path) if u.startswith("daq-")} == {"daq-mill-01", "daq-mill-02"}

    done = make_users(tmp_path, "--replay", "--no-replay", check=False)
    assert done.returncode == 2 and "contradict" in done.stderr


def test_each_monitor_instance_gets_users_with_the_monitors_rights_kept_until_removed(tmp_path):
    make_users(tmp_path, "--instance", "line1", "--instance", "line2")
    for role in ("", "-out", "-sparkplug"):
        assert acl_block(tmp_path, f"edge-monitor-line1{role}") == acl_block(tmp_path, f"edge-monitor{role}")
        assert acl_block(tmp_path, f"edge-monitor{role}")  # not empty
        assert (tmp_path / "secrets" / f"edge-monitor-line2{role}.password").is_file()
    make_users(tmp_path, "mill-01")  # a later run keeps them
    assert {"edge-monitor-line1", "edge-monitor-line2-out"} <= set(users(tmp_path))
    make_users(tmp_path, "--remove-instance", "line1")
    assert not [u for u in users(tmp_path) if u.startswith("edge-monitor-line1")]
    assert not list((tmp_path / "secrets").glob("edge-monitor-line1*"))
    assert "edge-monitor-line2" in users(tmp_path)
    for bad in ("out", "a-sparkplug", "a/b", "x" * 41):
        done = make_users(tmp_path, "--instance", bad, check=False)
        assert done.returncode == 2 and "instance name" in done.stderr, bad


def test_dashboards_may_not_command_the_monitors_level_nor_an_empty_machine(tmp_path):
    make_users(tmp_path, "--dashboard", "hall-2")
    for user in ("scada", "scada-hall-2"):
        block = acl_block(tmp_path, user)
        at = block.index("topic write mill/+/cmd")
        assert block[at:at + 3] == ["topic write mill/+/cmd", "topic deny mill/_monitor/cmd", "topic deny mill//cmd"]
        assert "topic read mill/_monitor/+/status" in block  # not hidden by a wider deny
        # and, as a Sparkplug host application: everything of Sparkplug, commands, its STATE
        assert block[at + 3:] == ["topic read spBv1.0/#", "topic write spBv1.0/+/NCMD/+",
                                  "topic write spBv1.0/+/DCMD/+/+", "topic readwrite spBv1.0/STATE/+"]


# ------------------------------------------------------------------------------------ make-test-ca.sh


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_test_ca_key_goes_to_its_own_folder(tmp_path):
    certs, keys = tmp_path / "etc" / "certs", tmp_path / "test-ca"
    out = run_script("make-test-ca.sh", "--broker-group", "", "--ca-key-dir", str(keys), str(certs))
    assert sorted(p.name for p in certs.iterdir()) == ["ca.crt", "client.crt", "client.key", "server.crt", "server.key"]
    assert (keys / "ca.key").is_file() and mode(keys / "ca.key") == 0o600 and mode(keys) == 0o700
    assert f"the test CA's private key is {keys}/ca.key (not in {certs})" in out
    ca = (certs / "ca.crt").read_bytes()
    again = run_script("make-test-ca.sh", "--broker-group", "", "--ca-key-dir", str(keys), str(certs))
    assert "kept test CA" in again and (certs / "ca.crt").read_bytes() == ca

    # A key an earlier version left beside the certificates is moved out; the CA stays.
    (keys / "ca.key").rename(certs / "ca.key")
    moved = run_script("make-test-ca.sh", "--broker-group", "", "--ca-key-dir", str(keys), str(certs))
    assert f"moved the test CA's key out of the broker's folder: {certs}/ca.key -> {keys}/ca.key" in moved
    assert not (certs / "ca.key").exists() and (keys / "ca.key").is_file()
    assert (certs / "ca.crt").read_bytes() == ca

    # Without the key, usable certificates are kept; one that must be issued needs a new CA.
    (keys / "ca.key").unlink()
    kept = run_script("make-test-ca.sh", "--broker-group", "", "--ca-key-dir", str(keys), str(certs))
    assert "kept test CA" in kept and (certs / "ca.crt").read_bytes() == ca
    renewed = run_script("make-test-ca.sh", "--broker-group", "", "--ca-key-dir", str(keys), "--host",
                         "edge-01.plant.example", str(certs))
    assert "a new test CA (give SCADA clients the new ca.crt)" in renewed
    assert (certs / "ca.crt").read_bytes() != ca and (keys / "ca.key").is_file() and not (certs / "ca.key").exists()


@pytest.mark.parametrize("inside", [".", "keys"])
def test_the_test_ca_key_may_not_go_into_the_certificates_folder(tmp_path, inside):
    certs = tmp_path / "certs"
    done = subprocess.run([str(DEPLOY / "make-test-ca.sh"), "--broker-group", "", "--ca-key-dir",
                           str(certs / inside), str(certs)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "the CA key must not be where the broker's certificates are" in done.stderr
    assert not certs.exists() or not list(certs.rglob("*.key"))
