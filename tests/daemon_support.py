"""What the daemon tests share: a small archive, a bundle trained on it with thresholds that make the
alarm outcome deterministic, the daemon as a subprocess, and an MQTT collector.

The archive: case 11 with its first run only (a tool that stays healthy) and case 13 through
failure (runs 1, 6, 10, 15). ``replay --machines 2 --cases 11,13`` gives ``mill-01`` the healthy
tool and ``mill-02`` the failing one. The bundle is trained in a few seconds on the healthy
windows; its thresholds are set from its own offline scores of these cuts (alarm just below the
failing tool's last cuts over its first one), and the fixture checks with the alarm policy
that mill-02 must reach ``alarm`` and mill-01 stay ``normal``. Scores are calibrated by regime, as
training evaluates them and the daemon publishes them.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.archive.mill import Archive, read_archive, write_archive
from edge_monitor.archive.synthetic import synthesize
from edge_monitor.core.alarm import (
    AlarmPolicy,
    AlarmTracker,
    CutEvidence,
    Level,
    Thresholds,
)
from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client

REPO = Path(__file__).resolve().parents[1]
CASES = (11, 13)
N_SAMPLES = 4500  # 18 s cuts: the shortest the generator makes, enough stable windows
POLICY = AlarmPolicy()  # per cut over the tool's first, 2 cuts in a row: the defaults the daemon runs with


@dataclass
class ModelFixture:
    archive: Archive
    archive_path: Path
    bundle: Path
    thresholds: Thresholds
    # (cut id, offset) -> (recon, kl, channels) offline scores of every stable window
    offline: dict[tuple[str, int], tuple[float, float, np.ndarray]]
    cuts_by_case: dict[int, list[str]]  # cut ids in replay order
    alarm_cut: str  # the cut of case 13 whose end raises the alarm, offline


_built: dict[str, ModelFixture] = {}


def write_test_archive(path: Path) -> Archive:
    synthetic = synthesize(seed=0, cases=list(CASES), max_runs=4, n_samples=N_SAMPLES)
    keep = [r for r in synthetic.records if r["case"] != 11 or r["run"] == 1]
    write_archive(path, keep)
    return read_archive(path)


def model_fixture(tmp_path_factory) -> ModelFixture:
    """Built once per test session (the daemon test modules share it)."""
    if "model" not in _built:
        _built["model"] = _build(tmp_path_factory.mktemp("daemon-model"))
    return _built["model"]


def _build(where: Path) -> ModelFixture:
    from edge_monitor.core.calibration import ScoreCalibration
    from edge_monitor.core.channels import CHANNELS
    from edge_monitor.model.bundle import save_bundle
    from edge_monitor.model.tf_inference import tf_scorer
    from edge_monitor.model.vae import VAEHyperParams
    from training.dataset import prepare_windows
    from training.fit import TrainingConfig, train_model
    from training.splits import Split

    archive = write_test_archive(where / "mill.mat")
    ws = prepare_windows(archive)
    healthy = np.flatnonzero(ws.healthy)
    rng = np.random.default_rng(0)
    order = rng.permutation(healthy)
    n_val = max(1, healthy.size // 5)
    split = Split("window", 0, np.sort(order[n_val:]), np.sort(order[:n_val]), np.empty(0, int))
    hp = VAEHyperParams(beta=2.0, codings=8, tcn_layers=1, filters=16, kernel_size=3, dilations=(1, 2, 4))
    trained = train_model(ws, split, hp, TrainingConfig(max_epochs=30, patience=8, batch_size=256), seed=0, verbose=0)
    raw = tf_scorer(trained.model, trained.scaler).raw_scores(ws.data)
    # Training's calibration, with a reference per regime even for this tiny archive, so that the
    # daemon's regime of each cut (from the cut start's params) is checked against the offline one.
    calibration = ScoreCalibration.fit(raw.subset(split.train), ws.regimes[split.train], min_windows=8)
    assert len(calibration.references) == 3, calibration.references.keys()  # global + two regimes
    # what training's evaluation reports and the daemon publishes: the one scoring call
    scores = tf_scorer(trained.model, trained.scaler, calibration).score(ws.data, ws.regimes)

    cut_ids = [archive.cuts[i].cut_id for i in ws.cut]
    recon = scores.recon.astype(np.float64)
    by_case: dict[int, list[str]] = {}
    for cut in archive.cuts:
        by_case.setdefault(cut.case, []).append(cut.cut_id)
    # The alarm rule decides per cut, on the median score of the cut's windows over the tool's first
    # cut (its reference). Case 11's only cut is its reference; case 13's later cuts are judged:
    # alarm just below its last two figures, so that it rises by its last cut, warning at 2 % growth.
    medians = {c: float(np.median(recon[np.asarray(cut_ids) == c])) for c in set(cut_ids)}
    counts = {c: int((np.asarray(cut_ids) == c).sum()) for c in set(cut_ids)}
    regimes = {cut_ids[i]: str(ws.regimes[i]) for i in range(len(ws))}
    evidence = CutEvidence(POLICY)
    figures = [evidence.judge(medians[c], counts[c], regimes[c]) for c in by_case[13]]
    alarm = min(figures[-2:]) * 0.98
    thresholds = Thresholds(min(alarm, 1.02), alarm, score="recon", rule="test: alarm below case 13's last cuts")
    alarm_cut = _check_outcome(thresholds, medians, counts, regimes, by_case)

    bundle = where / "bundle"
    save_bundle(
        bundle, trained.model, channels=CHANNELS, window=ws.window, stable_region=ws.stable,
        scaler=trained.scaler, calibration=calibration, hyperparams=hp, thresholds=thresholds,
        metrics={}, training={"test": True}, archive_sha256=archive.sha256,
        parity_windows=trained.scaler.transform(ws.data),  # exported: the daemon serves it with ONNX Runtime
    )
    offline = {
        (cut_ids[i], int(ws.starts[i])): (float(scores.recon[i]), float(scores.kl[i]), scores.channels[i])
        for i in range(len(ws))
    }
    return ModelFixture(archive, where / "mill.mat", bundle, thresholds, offline, by_case, alarm_cut)


def _check_outcome(thresholds, medians: dict[str, float], counts: dict[str, int], regimes: dict[str, str],
                   by_case) -> str:
    """With these thresholds, case 13's machine must end in alarm and case 11's stay normal; the cut
    of case 13 that raises the alarm."""
    raised = {}
    for case, expected in ((11, Level.NORMAL), (13, Level.ALARM)):
        tracker = AlarmTracker(POLICY, thresholds)
        decided = []
        for cut in by_case[case]:
            if tracker.cut_ended(medians[cut], counts[cut], cut, 0.0, regimes[cut]) is not None:
                decided.append((cut, tracker.state))
                if tracker.state == Level.ALARM:
                    raised[case] = cut
        if tracker.state != expected:
            pytest.fail(f"the test bundle does not separate case {case}: ends {tracker.state.label}, "
                        f"expected {expected.label}, transitions {decided} (thresholds {thresholds}, "
                        f"cut medians {[round(medians[c], 3) for c in by_case[case]]})")
    return raised[13]


# ------------------------------------------------------------------------------ MQTT collector


class Collector:
    """Subscribes to ``topics`` and keeps every message (topic, decoded JSON or raw, retain).

    ``broker`` is a test broker (anonymous access) or the :class:`BrokerSettings` to log in with.
    Returns once the broker acknowledged the subscription."""

    def __init__(self, broker, topics: list[str], client_id: str | None = None, persistent: bool = False) -> None:
        self.messages: list[tuple[str, object, bool]] = []
        self.payloads: list[tuple[str, bytes]] = []  # as they came, to compare duplicates byte for byte
        self._cond = threading.Condition()
        if isinstance(broker, BrokerSettings):
            settings = broker
        else:
            settings = BrokerSettings(host=broker.host, port=broker.port, client_id=client_id, reconnect_max_delay=2)
        subscribed = threading.Event()
        self.client = make_client(settings, clean_start=not persistent)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        if topics:
            self.client.on_connect = lambda c, u, f, r, p: c.subscribe([(t, 1) for t in topics])
        connect(self.client)
        assert not topics or subscribed.wait(10), f"no SUBACK for {topics}"

    def _on_message(self, client, userdata, message) -> None:
        try:
            body: object = json.loads(message.payload)
        except ValueError:
            body = message.payload
        with self._cond:
            self.messages.append((message.topic, body, bool(message.retain)))
            self.payloads.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    def on(self, suffix: str) -> list[tuple[str, dict]]:
        with self._cond:
            return [(t, b) for t, b, _ in self.messages if t.endswith(suffix)]

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def close(self) -> None:
        disconnect(self.client)


def machine_of(topic: str, root: str) -> str:
    return topic[len(root) + 1 :].split("/")[0]


def second_bundle(model: ModelFixture, where: Path, factor: float = 2.0) -> tuple[Path, str]:
    """The fixture's network under thresholds ``factor`` times as high: another model id, and
    scores that equal the offline ones whichever of the two scored a window."""
    from edge_monitor.model.bundle import load_bundle, save_bundle

    first = load_bundle(model.bundle)
    m = first.meta
    meta = save_bundle(
        where, first.model, channels=m.channels, window=m.window, stable_region=m.stable_region, scaler=m.scaler,
        calibration=m.calibration, hyperparams=m.hyperparams,
        thresholds=Thresholds(m.thresholds.warning * factor, m.thresholds.alarm * factor, m.thresholds.score, "test: second"),
        metrics=m.metrics, training={"test": f"thresholds x{factor}"}, archive_sha256=m.archive_sha256,
        parity_windows=np.random.default_rng(0).random((256, m.window.length, len(m.channels)), dtype=np.float32),
    )
    return where, meta.model_id


# ------------------------------------------------------------------------------ the daemon

_SERIAL = itertools.count(1)

#: ``python -c`` running ``python -m edge_monitor`` with TensorFlow's packages unimportable, as on
#: an edge box installed with the serving set only.
BLOCK_TENSORFLOW = f"""
import runpy, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import no_tensorflow
no_tensorflow.block()
sys.argv[0] = "edge_monitor"
runpy.run_module("edge_monitor", run_name="__main__", alter_sys=True)
"""


class Daemon:
    """``python -m edge_monitor run`` as a subprocess, logging JSON lines to a file."""

    def __init__(self, workdir: Path, broker, bundle: Path, root: str, instance: str, config: str = "",
                 without_tensorflow: bool = False) -> None:
        self.workdir = workdir
        self.root, self.instance = root, instance
        self.config = workdir / "config.yaml"
        self.config.write_text(config)
        self.log_path = workdir / f"daemon-{instance}-{next(_SERIAL)}.log"  # one per daemon process
        # without_tensorflow: any import of TensorFlow, Keras or keras-tcn fails in the daemon
        start = ["-c", BLOCK_TENSORFLOW] if without_tensorflow else ["-m", "edge_monitor"]
        self.args = [sys.executable, *start, "run", "--config", str(self.config),
                     "--broker", broker.address, "--bundle", str(bundle), "--root", root, "--instance", instance]
        if "metrics:" not in config:  # any free port: a test must not need the default one free on this host
            self.args += ["--metrics", "127.0.0.1:0"]
        self.process: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> "Daemon":
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        self.started = time.time()  # its status's ``since`` is later: an earlier process's is not its
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self

    def wait_online(self, collector: Collector, timeout: float = 60.0) -> dict:
        topic = f"{self.root}/_monitor/{self.instance}/status"

        def online() -> bool:
            # this process's: a daemon just killed on the same topic says online until the broker
            # has delivered its will
            statuses = [b for t, b, _ in collector.messages if t == topic and isinstance(b, dict)]
            last = statuses[-1] if statuses else {}
            return last.get("state") == "online" and (last.get("since") or 0) >= self.started

        if not collector.wait(online, timeout):
            self.fail(f"the daemon did not come online within {timeout} s")
        return collector.on(topic)[-1][1]

    def events(self, name: str | None = None) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                out.append(record)
        return out

    def fail(self, why: str) -> None:
        tail = "\n".join(self.log_path.read_text().splitlines()[-30:]) if self.log_path.exists() else ""
        pytest.fail(f"{why}\n-- daemon log --\n{tail}", pytrace=False)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.fail("the daemon did not stop within 30 s of SIGTERM")
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def replay_cli(broker, archive: Path, root: str, *extra: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "edge_monitor", "replay", "--archive", str(archive), "--broker", broker.address,
            "--machines", "2", "--cases", ",".join(map(str, CASES)), "--speed", "0", "--root", root, *extra]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
