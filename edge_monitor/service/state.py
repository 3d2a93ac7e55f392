"""The monitor's state across restarts: the state file, the retained alarm topic, and which wins.

Every machine's alarm state lives in two places: the retained ``R/<machine>/alarm`` message on the
broker (what dashboards see) and a state file beside the monitor (which also keeps the cut
history, the tool's reference and, since format 2, every open cut: the checkpoint of
:mod:`.checkpoint`; its bytes: :mod:`.state_format`). At start-up both are read back
(:func:`choose_alarm_state`); a restart never re-announces nor clears an active alarm.

The file is read defensively: whatever it holds (truncated, wrong types, another version, another
model's cuts), the monitor starts with what can be used and a warning per thing it could not.
"""

from __future__ import annotations

import math
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho

from ..core.alarm import AlarmPolicy, AlarmTracker, Thresholds, carried_over, judging, thresholds_moved
from ..core.fleet import Fleet
from ..core.inbound import Limits, parse_alarm
from ..core.outbound import SENSOR_FAULT, AlarmMessage
from ..core.topics import ProtocolError, Topics, machine_id_problem
from . import state_format
from .mqtt import acknowledge

READBACK_TIMEOUT = 5.0  # seconds to wait for the retained alarms at start


def choose_alarm_state(saved: dict | None, retained: AlarmMessage | None,
                       checkpoint: bool = False) -> tuple[dict | None, bool]:
    """Which alarm state a machine restarts in, from the state file's snapshot and the retained
    alarm message, and whether the retained message must be republished.

    A checkpoint (format 2) wins: it covers exactly the inputs that were acknowledged, and the
    broker sends the later ones again, which decide again whatever the retained message shows that
    is newer. It is republished only when it is newer than the retained message (e.g. a reset whose
    retained ``normal`` never reached the broker).

    Otherwise (format 1, or no file) the later transition wins (``since``; the file on a tie or
    when both agree, as it also holds the cut history and the tool's reference). Republishing is
    needed only when the winner differs from what dashboards see. Either way an active alarm that
    the retained topic already shows is never announced again."""
    if saved is None and retained is None:
        return None, False
    shown = retained.state if retained is not None else "normal"

    def when(value: Any) -> float:
        try:
            return float(value) if type(value) in (int, float) and math.isfinite(value) else float("-inf")
        except OverflowError:  # an integer too large for a float
            return float("-inf")

    if retained is None:
        chosen = saved
    elif saved is None:
        chosen = retained.to_dict()
    elif checkpoint:
        newer = when(saved.get("since")) >= when(retained.since)
        return saved, saved.get("state") != shown and newer
    else:
        agree = saved.get("state") == retained.state
        chosen = saved if agree or when(saved.get("since")) >= when(retained.since) else retained.to_dict()
    assert chosen is not None
    return chosen, chosen.get("state") != shown


def restore_alarm_states(
    saved: dict[str, dict],
    retained: dict[str, AlarmMessage],
    watches: Callable[[str], bool],
    policy: AlarmPolicy,
    thresholds: Thresholds,
    warn: Callable[..., Any],
    checkpoint: bool = False,
    model: str | None = None,
    saved_model: str | None = None,
    same_scores: bool = False,
) -> tuple[dict[str, AlarmTracker], list[str]]:
    """The alarm tracker each watched machine restarts with, and the machines whose retained alarm
    is stale and must be republished. A snapshot that cannot be restored is reported with ``warn``
    (an event name and fields) and skipped.

    A state decided under another model than ``model`` (the state file's ``saved_model``, or the
    retained message's ``model``) is carried over as a reload carries it (:func:`carried_over`) and
    announced again with the running model's id. With ``same_scores`` (the state file was written
    by a model that scores as the running one: only its thresholds differ) the state file's
    snapshots keep their history and references (:func:`thresholds_moved`)."""
    trackers: dict[str, AlarmTracker] = {}
    republish: list[str] = []
    saved, retained = dict(saved), dict(retained)
    for machine in sorted(set(saved) | set(retained)):
        problem = machine_id_problem(machine)
        if problem:  # e.g. a state file edited by hand: no topic could carry this machine
            warn("alarm_state_ignored", machine=machine, reason=problem)
            continue
        if not watches(machine):
            continue
        shown = retained.get(machine)
        if shown is not None and shown.state == SENSOR_FAULT:
            # Not a wear state: the machine resumes in the wear state underneath (the message
            # carries it; a state file wins as usual) and shows that; a fault that lasts is
            # detected again from its windows.
            retained[machine] = AlarmMessage(machine, shown.wear or "normal", None, None, None, None, shown.model)
            republish.append(machine)
        try:
            chosen, stale = choose_alarm_state(saved.get(machine), retained.get(machine), checkpoint)
            if chosen is None:
                continue
            decided_by = saved_model if chosen is saved.get(machine) else retained[machine].model
            if model is not None and decided_by is not None and decided_by != model:
                kept = same_scores and chosen is saved.get(machine) and "references" in chosen
                chosen, stale = (thresholds_moved if kept else carried_over)(chosen, thresholds), True
            trackers[machine] = AlarmTracker.from_dict(policy, thresholds, chosen)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            warn("alarm_state_ignored", machine=machine, reason=str(exc)[:300])
            fallback = retained.get(machine)  # the state file's snapshot is unusable: what dashboards show
            if fallback is not None:
                try:
                    trackers[machine] = AlarmTracker.from_dict(policy, thresholds, fallback.to_dict())
                except (ValueError, OverflowError):
                    pass
            continue
        if stale and machine not in republish:  # e.g. a reset whose retained "normal" never reached the broker
            republish.append(machine)
    return trackers, republish


@dataclass
class SavedState:
    """What the state file holds that can be used."""

    alarms: dict[str, dict] = field(default_factory=dict)  # AlarmTracker snapshots by machine
    streams: dict[str, Any] = field(default_factory=dict)  # open cuts (MachinePipeline.to_state), by machine
    checkpoint: bool = False  # format 2: covers exactly the acknowledged inputs
    model: str | None = None  # the model whose outputs the file's alarm states decided (format 2)
    scoring: str | None = None  # what made that model's scores (model/meta.scoring_id), if written
    judging: dict | None = None  # how its alarm policy judged cuts (core/alarm.judging), if written
    problems: list[str] = field(default_factory=list)  # what could not be used, to log


def resume(fleet: Fleet, saved: SavedState, retained: dict[str, AlarmMessage], warn: Callable[..., Any],
           now: float = 0.0) -> tuple[dict[str, AlarmTracker], list[str]]:
    """Bring ``fleet`` back to where the state file and the retained alarms leave it: every
    machine's alarm state, and the cuts that were open at the checkpoint. Returns the trackers
    restored and the machines whose retained alarm must be republished. Whatever the file holds,
    this warns (``warn(event, **fields)``) rather than raises."""
    spec = fleet.spec
    same_scores = (bool(spec.scoring_id) and saved.scoring == spec.scoring_id
                   and saved.judging == judging(spec.policy))  # the same figures: history and references stand
    trackers, stale = restore_alarm_states(saved.alarms, retained, fleet.watches, spec.policy, spec.thresholds,
                                           warn, checkpoint=saved.checkpoint, model=spec.model_id,
                                           saved_model=saved.model, same_scores=same_scores)
    fleet.restore({m: t.to_dict() for m, t in trackers.items()})
    for machine, problem in fleet.resume(saved.streams, now):
        warn("open_cut_not_resumed", machine=str(machine)[:64], reason=problem)
    if saved.model is not None and saved.model != spec.model_id and not same_scores:
        for machine in saved.streams:  # another model scored them so far: judged on this one's windows
            if machine in fleet:
                fleet[machine].forget_scores()
    return trackers, stale


class StateFile:
    """Every machine's alarm state and open cut in one file (state_format.py), replaced atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self, model: str, windowing: dict | None = None) -> SavedState:
        """What can be used of the file: open cuts of ``model``, or of another model that cut
        windows the same way (``windowing``, ``model.meta.windowing_of``: after a reload, or a
        restart with a new bundle; their scores so far are dropped at :func:`resume`, as a reload
        drops them). Never raises: a file that cannot be used at all is a problem to log."""
        saved = SavedState()
        if self.path is None:
            return saved
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return saved
        except OSError as exc:
            saved.problems.append(f"state file {self.path}: unreadable, ignored ({exc}); using the retained alarms")
            return saved
        contents = state_format.parse(data)
        head = contents.head
        if head is None:
            saved.problems += [f"state file {self.path}: {p}, ignored; using the retained alarms" for p in contents.problems]
            return saved
        saved.problems += [f"state file {self.path}: {p}" for p in contents.problems]
        saved.alarms = {str(m): s for m, s in head["machines"].items() if isinstance(s, dict)}
        saved.checkpoint = head.get("format") != 1
        if saved.checkpoint and isinstance(head.get("model"), str):
            saved.model = head["model"]
            saved.scoring = head["scoring"] if isinstance(head.get("scoring"), str) else None
            saved.judging = head["judging"] if isinstance(head.get("judging"), dict) else None
        if contents.streams and head.get("model") != model and (windowing is None or head.get("windowing") != windowing):
            saved.problems.append(f"state file {self.path}: its open cuts were windowed for model "
                                  f"{str(head.get('model'))[:40]!r}, which cut windows otherwise than {model}; "
                                  "they start afresh")
        else:
            saved.streams = contents.streams
        return saved

    @staticmethod
    def compose(alarms: dict[str, dict], streams: dict[str, state_format.Record], model: str,
                windowing: dict | None = None, scoring: str = "", policy: AlarmPolicy | None = None) -> list:
        """The file's bytes, in pieces (:func:`.state_format.compose`): ``streams`` holds each
        machine's open cut already encoded (:func:`.state_format.encode_record`), so that only the
        machines that changed are encoded again; ``windowing`` says how they were cut into windows
        (``model.meta.windowing_of``); ``scoring`` what made the model's scores
        (``model.meta.scoring_id``) and ``policy`` how cuts were judged: with both the same, a
        restart keeps the histories and references."""
        head: dict[str, Any] = {"model": model, "machines": alarms}
        if scoring and policy is not None:
            head["scoring"], head["judging"] = scoring, judging(policy)
        if windowing is not None:
            head["windowing"] = windowing
        return state_format.compose(head, streams)

    def write(self, parts: bytes | list) -> None:
        """Replace the file with ``parts`` (:meth:`compose`), atomically."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = write_synced(self.path.parent, f".{self.path.name}.", [parts] if isinstance(parts, bytes) else parts)
        try:
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        sync_directory(self.path.parent)  # the rename is durable only once the directory is


def write_synced(directory: Path, prefix: str, data: bytes | list) -> Path:
    """A new file in ``directory`` (its name starts with ``prefix``) holding ``data`` (or its
    bytes-like pieces, one after another), on disk (flushed and fsynced) when this returns; removed
    again if writing fails. The state file's first step, the Sparkplug bdSeq file's, and
    ``edge-monitor check``'s probe of the state directory."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.writelines([data] if isinstance(data, bytes) else data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def sync_directory(directory: Path) -> None:
    """Make the directory's entries durable (a rename or a removal in it survives a power cut)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_retained_alarms(
    client: paho.Client, topics: Topics, limits: Limits, warn: Callable[..., Any],
    timeout: float = READBACK_TIMEOUT,
) -> dict[str, AlarmMessage]:
    """Every machine's retained alarm: subscribe, then a round trip through a private topic (the
    broker sends a subscription's retained messages before anything published later). Messages
    that are not valid alarms are reported with ``warn`` and skipped."""
    found: dict[str, AlarmMessage] = {}
    nonce = secrets.token_hex(8).encode()
    done = threading.Event()

    def on_alarm(client, userdata, message) -> None:  # paho's network thread
        acknowledge(client, message)
        if not message.payload:  # a cleared retained message
            return
        machine = message.topic.split("/")[-2]
        try:
            alarm = parse_alarm(message.payload, limits)
            if alarm.machine != machine:
                raise ProtocolError(f"alarm of machine {alarm.machine!r} on the topic of {machine!r}")
        except ProtocolError as exc:
            warn("retained_alarm_ignored", topic=message.topic, reason=exc.reason)
            return
        found[machine] = alarm

    def on_sync(client, userdata, message) -> None:
        acknowledge(client, message)
        if message.payload == nonce:
            done.set()

    client.message_callback_add(topics.alarms, on_alarm)
    client.message_callback_add(topics.sync, on_sync)
    try:
        filters = [(topics.alarms, 1), (topics.sync, 1)]
        client.subscribe(filters)
        client.publish(topics.sync, nonce, qos=1)
        if not done.wait(timeout):
            warn("retained_alarms_incomplete", waited_s=timeout)
        client.unsubscribe([f for f, _ in filters])
    finally:
        # our own alarms are not read after start-up: late ones fall to the client's on_message
        client.message_callback_remove(topics.alarms)
        client.message_callback_remove(topics.sync)
    return dict(found)
