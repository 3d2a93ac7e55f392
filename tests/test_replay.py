"""The replay command: cuts of a small synthetic archive pushed through a real broker arrive
complete, bit for bit, paced or as fast as possible, and survive a broker restart; against the
edge box's deployed broker (its ACL and users), a machine's data acquisition user can replay: its
tool-change resets are refused (it may not send commands) with a message and exit 0, or left to
the operator with --no-resets, while any other refusal still fails."""

from __future__ import annotations

import argparse
import io
import json
import re
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
from broker import Subscriber, free_port
from deploy_broker import DeployBroker

from edge_monitor.archive.mill import read_archive
from edge_monitor.archive.publisher import Publisher
from edge_monitor.archive.replay import (
    ReplayJob,
    cut_messages,
    machine_ids,
    plan_machines,
    replay,
    replay_cuts,
)
from edge_monitor.archive.replay_cli import (
    Progress,
    add_replay_arguments,
    load_replay_archive,
    run_replay,
)
from edge_monitor.archive.synthetic import write_synthetic
from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.inbound import PAYLOAD_PARSERS, CutEnd, CutStart, SignalChunk
from edge_monitor.core.topics import parse_topic
from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client

pytestmark = pytest.mark.timeout(60)
N_SAMPLES = 4500  # the shortest synthetic cut (18 s): keeps the tests fast


@pytest.fixture(scope="module")
def archive_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("archive") / "mill.mat"
    write_synthetic(path, cases=[1, 7, 13], max_runs=2, n_samples=N_SAMPLES, n_corrupt=1)
    # seed 0 corrupts case 7's last run: every case keeps at least one cut
    return path


@pytest.fixture(scope="module")
def archive(archive_path):
    return read_archive(archive_path)


def args_of(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    return parser.parse_args(argv)


class Reassembled:
    """What a subscriber received under ``root``, put back together per machine and cut."""

    def __init__(self, root: str, messages) -> None:
        self.order: dict[str, list[str]] = defaultdict(list)  # machine -> cut ids in start order
        self.starts: dict[tuple[str, str], list[CutStart]] = defaultdict(list)
        self.ends: dict[tuple[str, str], list[CutEnd]] = defaultdict(list)
        self.chunks: dict[tuple[str, str, str], list[SignalChunk]] = defaultdict(list)
        self.resets: dict[str, int] = defaultdict(int)
        for m in messages:
            where = parse_topic(root, m.topic)
            machine, msg = where.machine, PAYLOAD_PARSERS[where.kind](m.payload)
            if isinstance(msg, CutStart):
                self.order[machine].append(msg.cut)
                self.starts[machine, msg.cut].append(msg)
            elif isinstance(msg, CutEnd):
                self.ends[machine, msg.cut].append(msg)
            elif isinstance(msg, SignalChunk):
                self.chunks[machine, msg.cut, where.channel].append(msg)
            else:
                self.resets[machine] += 1

    def signals(self, machine: str, cut: str) -> np.ndarray:
        """The cut's (n, 6) signals; asserts each channel's offsets are contiguous from 0."""
        columns = []
        for channel in CHANNELS:
            chunks = self.chunks[machine, cut, channel]
            offsets = [c.offset for c in chunks]
            sizes = np.cumsum([0] + [c.samples.size for c in chunks])
            assert offsets == sizes[:-1].tolist(), (machine, cut, channel)
            columns.append(np.concatenate([c.samples for c in chunks]))
        return np.stack(columns, axis=1)

    def complete(self, machine: str, cut: str, n: int) -> bool:
        return len(self.ends[machine, cut]) >= 1 and all(
            sum(c.samples.size for c in self.chunks[machine, cut, ch]) >= n for ch in CHANNELS
        )


def test_plan_deals_the_cases_out_to_the_machines(archive):
    by_case = archive.by_case()
    assert sorted(by_case) == [1, 7, 13] and len(archive.dropped) == 1
    plan = plan_machines(archive, 2)
    assert list(plan) == ["mill-01", "mill-02"]
    assert [(j.case, j.cut.run, j.tool_change) for j in plan["mill-02"]] == [(7, 1, True)]
    first = [(j.case, j.tool_change) for j in plan["mill-01"]]  # cases 1 and 13, runs in order
    assert [c for c, _ in first] == [1] * len(by_case[1]) + [13] * len(by_case[13])
    assert [t for _, t in first] == [i in (0, len(by_case[1])) for i in range(len(first))]
    assert [j.cut.run for j in plan["mill-01"] if j.case == 13] == sorted(c.run for c in by_case[13])
    plan = plan_machines(archive, 4, cases=[13, 1])  # more machines than cases: they wrap around
    assert [plan[m][0].case for m in plan] == [13, 1, 13, 1]
    with pytest.raises(ValueError, match=r"case\(s\) 6 have no usable cuts"):
        plan_machines(archive, 1, cases=[6])
    assert machine_ids(3) == ["mill-01", "mill-02", "mill-03"] and machine_ids(120)[0] == "mill-001"


def test_cut_messages_carry_the_cut_bit_for_bit(archive):
    cut = archive.cuts[0]
    messages = cut_messages("r", "m1", cut, chunk=1000, ts=1700000000.0)
    assert len(messages) == 2 + 6 * 5  # start, 5 rows of six chunks (4500 = 4 × 1000 + 500), end
    got = Reassembled("r", [type("M", (), {"topic": t, "payload": p}) for t, p in messages])
    start, end = got.starts["m1", cut.cut_id][0], got.ends["m1", cut.cut_id][0]
    assert (start.fs, start.params.doc, start.params.feed) == (250.0, cut.doc, cut.feed)
    assert start.params.material == cut.material_name
    assert (end.samples, end.ts) == (N_SAMPLES, 1700000000.0 + N_SAMPLES / 250.0)
    assert np.array_equal(got.signals("m1", cut.cut_id), cut.signals)  # full precision on the wire
    channels_in_first_row = [t.rsplit("/", 1)[1] for t, _ in messages[1:7]]
    assert channels_in_first_row == list(CHANNELS)  # interleaved: one chunk of every channel in turn


def test_replay_command_delivers_every_cut_completely(broker, archive_path, archive):
    root = "plant/r1"
    plan = plan_machines(archive, 2)
    # start, 18 rows of six chunks and end per cut, a reset per case
    n_messages = sum(2 + 6 * 18 + job.tool_change for jobs in plan.values() for job in jobs)
    out = io.StringIO()
    with Subscriber(broker, f"{root}/#") as sub:
        code = run_replay(args_of("--archive", str(archive_path), "--broker", broker.address,
                                  "--machines", "2", "--speed", "0", "--root", root), out)
        assert code == 0, out.getvalue()
        assert sub.wait_for(lambda ms: len(ms) >= n_messages, 20), (len(sub.messages), n_messages)
        time.sleep(0.1)  # nothing more may come
        got = Reassembled(root, sub.snapshot())
    assert len(sub.messages) == n_messages
    for machine, jobs in plan.items():
        assert got.order[machine] == [j.cut.cut_id for j in jobs]  # each machine's cuts in order
        assert got.resets[machine] == sum(j.tool_change for j in jobs)  # a new tool per case
        for job in jobs:
            key = (machine, job.cut.cut_id)
            assert len(got.starts[key]) == 1 and len(got.ends[key]) == 1
            assert got.ends[key][0].samples == N_SAMPLES
            assert np.array_equal(got.signals(*key), job.cut.signals)
    dropped = archive.dropped[0]
    assert f"c{dropped.case:02d}-r{dropped.run:02d}" not in {c for cuts in got.order.values() for c in cuts}
    text = out.getvalue()
    assert "1 corrupt cut(s) left out" in text
    assert "mill-01: cut c01-r01 done" in text  # plain progress lines when not a terminal
    assert f"replayed {len(archive.cuts)} cuts on 2 machine(s)" in text


def test_paced_replay_follows_real_time_times_speed(broker, archive):
    cut = archive.cuts[0]  # 18 s of signal
    speed = 20.0  # -> 0.9 s
    settings = BrokerSettings(broker.host, broker.port, "paced")
    with Subscriber(broker, "paced/#") as sub:
        started = time.monotonic()
        stats = replay_cuts(settings, "paced", "m1", [cut], speed=speed)
        elapsed = time.monotonic() - started
        assert sub.wait_for(lambda ms: len(ms) == stats.messages, 10)
    assert 0.85 < elapsed < 3.0, elapsed
    assert (stats.cuts, stats.chunks, stats.samples) == (1, 6 * 18, N_SAMPLES)


def test_flow_control_bounds_the_unacknowledged_messages(broker, archive):
    client = make_client(BrokerSettings(broker.host, broker.port, "bounded"), clean_start=True)
    connect(client)
    publisher = Publisher(client, max_unacked=4)
    most = 0
    screen = io.StringIO()
    progress = Progress(screen, tty=True, interval=0.0)

    def watch(event, stats):
        nonlocal most
        most = max(most, publisher.unacked)
        progress(event, stats)

    plan = {"m1": [ReplayJob(c.case, c, False) for c in archive.cuts[:2]]}
    stats = replay(publisher, "bounded", plan, speed=0, chunk=100, on_event=watch)
    disconnect(client)
    assert 1 <= most <= 4
    progress.draw(stats)
    assert "\x1b[1F" in screen.getvalue()  # redrawn in place on a terminal
    assert screen.getvalue().rstrip().endswith("done  cuts 2  messages 544")
    assert publisher.unacked == 0 and stats.messages == publisher.published == 2 * (2 + 6 * 45)


def test_replay_survives_a_broker_restart(broker, archive):
    """Chunks published while the broker is down wait in the client and are sent after paho
    reconnects by itself; a persistent subscriber gets every sample (QoS 1: maybe twice)."""
    cut = archive.cuts[0]
    settings = BrokerSettings(broker.host, broker.port, "restart-pub")
    with Subscriber(broker, "restart/#", client_id="restart-sub", clean_start=False) as sub:
        result = {}
        worker = threading.Thread(target=lambda: result.update(
            stats=replay_cuts(settings, "restart", "m1", [cut], speed=12.0)))  # 1.5 s
        worker.start()
        time.sleep(0.5)
        broker.restart()
        worker.join(30)
        assert not worker.is_alive()
        assert sub.wait_for(lambda ms: Reassembled("restart", ms).complete("m1", cut.cut_id, N_SAMPLES), 15)
        got = Reassembled("restart", sub.snapshot())
        assert sub.connections == 2  # the restart did cut the subscriber off
    for channel in CHANNELS:  # drop redeliveries, then the channel must be whole
        unique = {c.offset: c for c in got.chunks["m1", cut.cut_id, channel]}
        got.chunks["m1", cut.cut_id, channel] = [unique[o] for o in sorted(unique)]
    assert np.array_equal(got.signals("m1", cut.cut_id), cut.signals)
    assert result["stats"].cuts == 1


def test_command_line_errors(archive_path, capsys):
    port = free_port()
    assert run_replay(args_of("--archive", str(archive_path), "--broker", f"127.0.0.1:{port}"), io.StringIO()) == 1
    assert f"cannot reach broker 127.0.0.1:{port}" in capsys.readouterr().err
    assert run_replay(args_of("--archive", str(archive_path), "--cases", "1,6"), io.StringIO()) == 1
    assert "case(s) 6 have no usable cuts" in capsys.readouterr().err
    assert run_replay(args_of("--archive", str(archive_path), "--cases", "one"), io.StringIO()) == 1
    assert "--cases: expected comma-separated case numbers" in capsys.readouterr().err
    assert run_replay(args_of("--archive", str(archive_path), "--broker", "a:b:c"), io.StringIO()) == 1
    assert "expected HOST:PORT" in capsys.readouterr().err
    assert run_replay(args_of("--archive", str(archive_path), "--speed", "-1"), io.StringIO()) == 1
    assert "--speed must be 0" in capsys.readouterr().err
    assert run_replay(args_of("--archive", "nowhere.mat"), io.StringIO()) == 1
    assert "archive not found" in capsys.readouterr().err


def test_published_payloads_are_compact_json(archive):
    _, payload = cut_messages("r", "m1", archive.cuts[0])[1]
    assert b" " not in payload and json.loads(payload)["offset"] == 0


def test_loop_starts_over_with_fresh_cut_ids(broker, archive):
    client = make_client(BrokerSettings(broker.host, broker.port, "looping"), clean_start=True)
    connect(client)
    stop = threading.Event()
    plan = {"m1": [ReplayJob(1, archive.cuts[0], True)]}
    with Subscriber(broker, "loop/+/cut") as sub:
        stats = replay(Publisher(client), "loop", plan, speed=0, loop=True, stop=stop,
                       on_event=lambda e, s: s.cuts >= 3 and stop.set())
        disconnect(client)
        assert sub.wait_for(lambda ms: len(ms) >= 6, 10)
        starts = [m.json()["cut"] for m in sub.snapshot() if m.json()["event"] == "start"]
    cut_id = archive.cuts[0].cut_id
    assert stats.cuts == 3 and starts == [cut_id, f"{cut_id}.p2", f"{cut_id}.p3"]


def test_without_archive_the_synthetic_one_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    archive = load_replay_archive(None, out)
    assert (tmp_path / "data/synthetic-mill.mat").exists() and len(archive.cuts) == 165
    assert "writing the synthetic archive" in out.getvalue()


# ------------------------------------------------------------------- the deployed broker's ACL


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """The edge box's broker (tests/deploy_broker.py): its ACL, the users daq-mill-01, replay (the
    demo's, which may send commands) and edge-monitor (reads inputs and commands)."""
    b = DeployBroker(tmp_path_factory.mktemp("deployed"), ("mill-01",), replay=True).start()
    try:
        yield b
    finally:
        b.kill()


def replay_as(deployed, archive_path, user: str, *more: str) -> argparse.Namespace:
    return args_of("--archive", str(archive_path), "--broker", deployed.address, "--speed", "0",
                   "--cases", "1,13", "--username", user, "--password-file", str(deployed.password_file(user)),
                   *more)


def watch_inputs(deployed) -> Subscriber:
    """What the monitor's user gets: cuts, signals and commands (cmd) of every machine."""
    sub = Subscriber(deployed, "mill/#")
    sub.settings = deployed.settings("edge-monitor", "watch-inputs")
    return sub


def settle(sub: Subscriber, out: io.StringIO) -> list:
    """Everything replayed, once the last cut end has arrived (published last, QoS 1, in order)."""
    last_end = [line for line in out.getvalue().splitlines() if " done (case " in line][-1]
    cut = last_end.split("cut ", 1)[1].split(" ", 1)[0]
    assert sub.wait_for(lambda ms: any(m.topic.endswith("/cut") and m.json().get("event") == "end"
                                       and m.json()["cut"] == cut for m in ms), 20)
    return sub.snapshot()


def test_a_daq_user_replays_and_only_its_resets_are_refused(deployed, archive_path, archive, capsys):
    """daq-mill-01 may not send commands: the broker refuses the reset before each case (a new
    tool), everything else arrives, and replay says what happened and what to do, and exits 0."""
    out = io.StringIO()
    with watch_inputs(deployed) as sub:
        code = run_replay(replay_as(deployed, archive_path, "daq-mill-01", "--machines", "1"), out)
        got = settle(sub, out)
    err = capsys.readouterr().err
    assert code == 0, out.getvalue() + err
    assert ("replay: the broker refused 2 of 2 tool-change reset(s) on mill/mill-01/cmd (Not authorized): "
            "user daq-mill-01 may not send commands") in err
    assert "Reset the machines from SCADA" in err and "--no-resets" in err
    assert [m.topic for m in got if m.topic.endswith("/cmd")] == []
    cuts = [c.cut_id for case in (1, 13) for c in archive.by_case()[case]]
    assert Reassembled("mill", got).order["mill-01"] == cuts  # every cut went through


def test_no_resets_leaves_tool_changes_to_the_operator(deployed, archive_path, capsys):
    """--no-resets publishes no reset at all: not with the demo user, which may send commands (a
    watcher that reads cmd sees none, and sees them without the option), and a DAQ user is refused
    nothing."""
    for option, resets in (((), 2), (("--no-resets",), 0)):
        out = io.StringIO()
        with watch_inputs(deployed) as sub:
            code = run_replay(replay_as(deployed, archive_path, "replay", "--machines", "1", *option), out)
            got = settle(sub, out)
        assert code == 0, out.getvalue() + capsys.readouterr().err
        assert [m.json()["cmd"] for m in got if m.topic == "mill/mill-01/cmd"] == ["reset"] * resets
    text = out.getvalue()
    assert "mill-01: new tool (case 13) before cut c13-r01: no reset sent (--no-resets)" in text
    assert "left 2 tool change(s) to the operator (--no-resets; mill-01 2)" in text
    assert "reset it from SCADA when its tool is changed" in text

    out = io.StringIO()
    code = run_replay(replay_as(deployed, archive_path, "daq-mill-01", "--machines", "1", "--no-resets"), out)
    err = capsys.readouterr().err
    assert code == 0 and "refused" not in err, out.getvalue() + err
    assert "left 2 tool change(s) to the operator" in out.getvalue()


def test_a_refused_signal_still_fails(deployed, archive_path, capsys):
    """daq-mill-01 replaying a second machine: mill-02's cuts and signals are refused, which is
    an error (exit 1) naming the topics and the user."""
    out = io.StringIO()
    code = run_replay(replay_as(deployed, archive_path, "daq-mill-01", "--machines", "2", "--no-resets"), out)
    err = capsys.readouterr().err
    assert code == 1, out.getvalue() + err
    assert re.search(r"replay: the broker refused \d+ message\(s\) \(Not authorized\) on mill/mill-02/", err), err
    assert "user daq-mill-01 may not publish there" in err and "mill/mill-01/" not in err
    assert "tool-change reset" not in err  # none was sent
