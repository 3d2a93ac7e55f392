"""What the monitor reports about itself: counters (in the status message and the log) and the
one-line ``STATUS=`` text that ``systemctl status`` shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass
class Counters:
    """Monotonic since the monitor came online; published in the status message."""

    messages_in: int = 0
    windows_scored: int = 0
    rejected: int = 0
    gap_samples: int = 0
    duplicate_samples: int = 0
    batches: int = 0
    errors_suppressed: int = 0  # rejections logged but not echoed (errors topic rate limit)
    inputs_redelivered: int = 0  # marked by the broker as sent before (after a crash or reconnect)
    duplicate_inputs: int = 0  # redelivered inputs the checkpoint already covered, dropped
    inputs_acknowledged: int = 0  # once a checkpoint covered them
    checkpoints: int = 0
    checkpoints_failed: int = 0  # the state file could not be written (nothing acknowledged)
    outputs_dropped: int = 0  # QoS 0 results published while disconnected
    nonfinite_scores: int = 0  # windows that scored non-finite (reported on the errors topic)
    inputs_other_instance: int = 0  # inputs of machines another instance on the root owns, dropped
    sparkplug_unsent: int = 0  # Sparkplug messages not sent while disconnected (the next birth has the state)
    outputs_refused: int = 0  # results the broker refused (an MQTT 5 PUBACK's reason: its ACL), not delivered


def status_text(connected: bool, machines: int, counters: Counters, states: Mapping[str, str],
                latency_p50: float | None = None, model: str | None = None) -> str:
    """One line: connection, counters, machines not normal, latency, the model in use."""
    c = counters
    parts = [
        f"broker {'connected' if connected else 'disconnected'}",
        f"{machines} machines seen, {c.messages_in} messages, {c.windows_scored} windows scored, "
        f"{c.rejected} rejected",
    ]
    for level in ("alarm", "warning"):
        names = sorted(m for m, s in states.items() if s == level)
        if names:
            parts.append(f"{level}: {', '.join(names)}")
    if latency_p50 is not None:
        parts.append(f"latency p50 {latency_p50:g} ms")
    if model is not None:
        parts.append(f"model {model}")
    return "; ".join(parts)
