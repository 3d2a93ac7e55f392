"""The alarm states across restarts: a state file, the retained alarm topic, and which one wins.

Every machine's alarm state lives in two places: the retained ``R/<machine>/alarm`` message on the
broker (what dashboards see) and a JSON state file beside the monitor (which also keeps the cut
history and the tool's reference). At start-up both are read back; for each machine the later
transition wins (:func:`choose_alarm_state`), and the retained message is republished only when it
disagrees with the winner. A restart never re-announces nor clears an active alarm.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho

from ..core.alarm import AlarmPolicy, AlarmTracker, Thresholds
from ..core.inbound import Limits, parse_alarm
from ..core.outbound import AlarmMessage
from ..core.topics import ProtocolError, Topics, machine_id_problem

STATE_FORMAT = 1
READBACK_TIMEOUT = 5.0  # seconds to wait for the retained alarms at start


def choose_alarm_state(saved: dict | None, retained: AlarmMessage | None) -> tuple[dict | None, bool]:
    """Which alarm state a machine restarts in, from the state file's snapshot and the retained
    alarm message, and whether the retained message must be republished.

    The later transition wins (``since``; the file on a tie or when both agree, as it also holds
    the cut history and the tool's reference). Republishing is needed only when the winner differs
    from what dashboards see, e.g. a reset whose retained ``normal`` never reached the broker: an active alarm that the
    retained topic already shows is never announced again."""
    if saved is None and retained is None:
        return None, False
    shown = retained.state if retained is not None else "normal"
    if retained is None:
        chosen = saved
    elif saved is None:
        chosen = retained.to_dict()
    else:
        def when(value: Any) -> float:
            return float("-inf") if value is None else float(value)

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
) -> tuple[dict[str, AlarmTracker], list[str]]:
    """The alarm tracker each watched machine restarts with, and the machines whose retained alarm
    is stale and must be republished. A snapshot that cannot be restored is reported with ``warn``
    (an event name and fields) and skipped."""
    trackers: dict[str, AlarmTracker] = {}
    republish: list[str] = []
    for machine in sorted(set(saved) | set(retained)):
        problem = machine_id_problem(machine)
        if problem:  # e.g. a state file edited by hand: no topic could carry this machine
            warn("alarm_state_ignored", machine=machine, reason=problem)
            continue
        if not watches(machine):
            continue
        chosen, stale = choose_alarm_state(saved.get(machine), retained.get(machine))
        if chosen is None:
            continue
        try:
            trackers[machine] = AlarmTracker.from_dict(policy, thresholds, chosen)
        except ValueError as exc:
            warn("alarm_state_ignored", machine=machine, reason=str(exc))
            continue
        if stale:  # e.g. a reset whose retained "normal" never reached the broker
            republish.append(machine)
    return trackers, republish


class StateFile:
    """Alarm snapshots of every machine in one JSON file, replaced atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self) -> tuple[dict[str, dict], str | None]:
        """(snapshots by machine, a problem to log or None). A missing file is no problem."""
        if self.path is None or not self.path.exists():
            return {}, None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            machines = data["machines"]
            if data.get("format") != STATE_FORMAT or not isinstance(machines, dict):
                raise ValueError(f"expected format {STATE_FORMAT} with a 'machines' object")
            return {str(m): s for m, s in machines.items() if isinstance(s, dict)}, None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            return {}, f"state file {self.path}: unreadable, ignored ({exc}); using the retained alarms"

    def write(self, machines: dict[str, dict], model: str) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": STATE_FORMAT, "model": model, "machines": machines}, allow_nan=False)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
