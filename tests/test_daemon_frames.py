"""Frames end to end against a real Mosquitto: the same archive replayed as chunks and as frames
(JSON and compact) gives the same windows and the same scores, byte for byte; each malformed frame
is rejected with its reason on the errors topic while the machine's other input goes on."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest
from daemon_support import Collector, Daemon, machine_of, model_fixture, replay_cli

from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.inbound import F32_FRAME_CONTENT_TYPE, SignalFrame

# One window per inference call: the runs compared byte for byte score alike by construction (the
# call shapes the runtime is probed for keep a score's bits independent of its batch, which
# test_scores_in_batches_are_the_scores_of_windows relies on; this does not).
CONFIG = 'machines: "mill-*"\nstate_file: state.json\nstatus_interval_s: 1\nbatching: {max_batch: 1}\n'
MASK = re.compile(rb'"(ts|since)": ?[0-9.e+-]+')


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def run(broker, model, workdir, root: str, *replay_args: str, before=None, config: str = CONFIG) -> Collector:
    """A daemon of its own under ``root``, the archive replayed with ``replay_args``; its outputs."""
    collector = Collector(broker, [f"{root}/#"], f"collector-{root}")
    workdir.mkdir()
    daemon = Daemon(workdir, broker, model.bundle, root, f"i-{root}", config).start()
    try:
        daemon.wait_online(collector)
        if before is not None:
            before(collector)
        replay = replay_cli(broker, model.archive_path, root, *replay_args)
        assert replay.returncode == 0, replay.stderr
        n_cuts = len(model.archive.cuts)
        if not collector.wait(lambda: len(collector.on("/summary")) >= n_cuts, 60):
            daemon.fail(f"expected {n_cuts} summaries, got {len(collector.on('/summary'))}")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        collector.close()
    return collector


def outputs(collector: Collector, root: str) -> dict[str, list[bytes]]:
    out = collections.defaultdict(list)
    for topic, payload in collector.payloads:
        if topic.rsplit("/", 1)[-1] in ("score", "alarm", "summary") and "/_monitor/" not in topic:
            out[topic[len(root):]].append(MASK.sub(rb'"\1": 0', payload))
    return dict(out)


def bad_frames() -> list[tuple[bytes, str | None, str]]:
    rows = np.ones((4, 6))
    good = {name: rows[:, c].tolist() for c, name in enumerate(CHANNELS)}
    compact = SignalFrame("c1", 0, rows).to_f32()
    return [
        (json.dumps({"cut": "c1", "offset": 0, "channels": {k: v for k, v in good.items() if k != "vib_table"}}).encode(),
         None, "channels lacks vib_table: a frame carries every channel"),
        (json.dumps({"cut": "c1", "offset": 0, "channels": {**good, "temp": [1.0] * 4}}).encode(),
         None, "unknown channel 'temp' in channels"),
        (json.dumps({"cut": "c1", "offset": 0, "channels": {**good, "smcAC": [1.0] * 3}}).encode(),
         None, "channels have unequal lengths (smcAC 3, smcDC 4"),
        (json.dumps({"cut": "c1", "offset": 0, "channels": {**good, "AE_spindle": [1.0, 2.5, 1.0, 1.0]}}).encode()
         .replace(b"2.5", b"1e999"), None, "channels.AE_spindle: samples[1] is not a finite number"),
        (compact[:-4], F32_FRAME_CONTENT_TYPE, "is not a whole number of rows of 6 float32 values"),
    ]


def test_frames_give_the_scores_of_chunks_and_bad_frames_change_nothing(broker, model, tmp_path):
    from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def send_bad_frames(collector: Collector) -> None:
        client = make_client(BrokerSettings(host=broker.host, port=broker.port, client_id="bad-frames"),
                             clean_start=True)
        connect(client)
        for payload, content_type, _ in bad_frames():
            properties = Properties(PacketTypes.PUBLISH)
            if content_type:
                properties.ContentType = content_type
            client.publish("t-frames/mill-01/frame", payload, qos=1, properties=properties).wait_for_publish(5)
        disconnect(client)
        assert collector.wait(lambda: len(collector.on("/errors")) >= len(bad_frames()), 10)

    chunks = outputs(run(broker, model, tmp_path / "c", "t-chunks"), "t-chunks")
    frames = run(broker, model, tmp_path / "f", "t-frames", "--frames", before=send_bad_frames)
    compact = outputs(run(broker, model, tmp_path / "b", "t-compact", "--frames", "--encoding", "f32"), "t-compact")

    assert set(chunks) == {f"/mill-0{m}/{leaf}" for m in (1, 2) for leaf in ("score", "summary")} | {"/mill-02/alarm"}
    assert outputs(frames, "t-frames") == chunks  # the same windows, scores, alarms and summaries, byte for byte
    # compact frames: float32 samples, so the same windows with scores equal to a few digits
    assert set(compact) == set(chunks)
    for topic in chunks:
        assert len(compact[topic]) == len(chunks[topic]), topic
    windows = {(json.loads(p)["cut"], json.loads(p)["offset"]): json.loads(p)["score"]
               for t in ("/mill-01/score", "/mill-02/score") for p in chunks[t]}
    for t in ("/mill-01/score", "/mill-02/score"):
        for p in compact[t]:
            body = json.loads(p)
            assert body["score"] == pytest.approx(windows[(body["cut"], body["offset"])], rel=1e-4)

    errors = [b for _, b in frames.on("/errors")]
    assert len(errors) == len(bad_frames())  # nothing else was refused
    for (_, _, reason), error in zip(bad_frames(), errors):
        assert error["topic"] == "t-frames/mill-01/frame" and reason in error["reason"], error


def per_window(collector: Collector, root: str) -> tuple[dict[str, list[bytes]], list[int]]:
    """Batched score messages (``R/<machine>/scores``) unpacked into the per-window messages they
    stand for, byte for byte as the monitor encodes those; and how many windows each batch held."""
    out: dict[str, list[bytes]] = collections.defaultdict(list)
    sizes = []
    for topic, payload in collector.payloads:
        if topic.endswith("/scores"):
            body = json.loads(payload)
            assert set(body) == {"cut", "model", "windows"}, body
            sizes.append(len(body["windows"]))
            for w in body["windows"]:
                message = {"cut": body["cut"], **{k: v for k, v in w.items() if k != "ts"}, "model": body["model"],
                           "ts": w["ts"]}
                out[topic[len(root):-1]].append(MASK.sub(rb'"\1": 0', json.dumps(message, separators=(",", ":")).encode()))
    return dict(out), sizes


def test_scores_in_batches_are_the_scores_of_windows(broker, model, tmp_path):
    """``outputs.scores: batch``: a machine's windows scored together go out in one message on
    ``R/<machine>/scores``; unpacked, the very messages of one per window (with the batches of any
    size the call shape allows, the scores are the same bits), alarms and summaries unchanged."""
    windows = outputs(run(broker, model, tmp_path / "w", "t-window", "--frames"), "t-window")
    config = CONFIG.replace("batching: {max_batch: 1}", "batching: {max_batch: 256}") + "outputs: {scores: batch}\n"
    batched = run(broker, model, tmp_path / "s", "t-batch", "--frames", config=config)
    scores, sizes = per_window(batched, "t-batch")
    others = outputs(batched, "t-batch")
    assert not any(topic.endswith("/score") for topic in others)  # no message per window as well
    assert {**others, **scores} == windows
    assert max(sizes) > 1 and sum(sizes) == sum(len(v) for t, v in windows.items() if t.endswith("/score"))
