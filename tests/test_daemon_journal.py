"""A clean journal: the daemon, started with the environment the systemd unit gives it (no
TF_CPP_MIN_LOG_LEVEL, no CUDA_VISIBLE_DEVICES), writes nothing of TensorFlow's or absl's on
stdout or stderr while it starts and scores; their lines are in its log at debug level, and its
device line says why it chose the device."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from daemon_support import REPO, Collector, Daemon, model_fixture, replay_cli

ROOT = "t-journal"
# glog's prefixes, absl's banner, and what TensorFlow says about oneDNN and CUDA
NATIVE = re.compile(r"^[IWEF]\d{4} |absl|oneDNN|cuda|cuInit|tensorflow", re.IGNORECASE)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


class UnitDaemon(Daemon):
    """The daemon with the unit's environment: TensorFlow's logging and the GPUs left as they are."""

    def start(self) -> UnitDaemon:
        env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self


@pytest.mark.parametrize("runtime", ["onnxruntime", "tensorflow"])
def test_no_native_lines_on_stderr_and_the_device_says_why(module_broker, model, tmp_path, runtime):
    collector = Collector(module_broker, [f"{ROOT}/#"], f"collector-journal-{runtime}")
    # debug: TensorFlow's lines must be in the log (not lost), as JSON records, not raw lines
    daemon = UnitDaemon(tmp_path, module_broker, model.bundle, ROOT, f"j-{runtime}",
                        f'machines: "mill-*"\nstatus_interval_s: 1\nruntime: {runtime}\n'
                        'logging:\n  format: json\n  level: debug\n').start()
    try:
        daemon.wait_online(collector)
        replay = replay_cli(module_broker, model.archive_path, ROOT)
        assert replay.returncode == 0, replay.stderr
        if not collector.wait(lambda: len(collector.on("/score")) > 0, 30):
            daemon.fail("no window scored")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        collector.close()

    output = daemon.log_path.read_text()
    raw = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raw.append(line)
    assert [line for line in raw if NATIVE.search(line)] == [], output[:3000]
    assert raw == []  # every line is a log record

    (device,) = daemon.events("device")
    assert device["requested"] == "auto" and device["level"] == "info" and device["runtime"] == runtime
    native = daemon.events("tensorflow_log")
    if runtime == "onnxruntime":  # no TensorFlow in the process: nothing of it to capture
        assert native == [] and device["device"] in ("cpu", "gpu"), native
        assert "the CUDA provider" in device["reason"] or "a CPU build (no CUDA provider)" in device["reason"], device
        return
    assert native and all(r["level"] == "debug" for r in native), native  # nothing unexpected here
    assert any("absl::InitializeLog()" in r["message"] for r in native)
    if device["device"] == "cpu":
        assert "device requested auto; TensorFlow sees no GPU" in device["reason"], device
        if any(re.search(r"cuInit|cuda drivers", r["message"], re.IGNORECASE) for r in native):
            assert "(CUDA: " in device["reason"], device  # CUDA's own words for the missing GPU
    else:
        assert device["device"].startswith("gpu:0 (") and "GPU visible" in device["reason"], device
