"""The daemon as a process: device, bundle, monitor, signals and exit codes.

``python -m edge_monitor run`` calls :func:`run`: it chooses the device (TensorFlow loads only
then), loads and checks the bundle, builds the :class:`~.monitor.Monitor`, warms it up, connects
and runs it until SIGTERM/SIGINT. Exit codes: 0 after a graceful stop; 1 when the MQTT network
thread stalls (systemd restarts the service; nothing is lost); 2 for a start-up problem
(:class:`StartupError`, whose message names the thing to fix).
"""

from __future__ import annotations

import gc
import signal

from ..core.alarm import AlarmPolicy
from . import systemd
from .config import Config
from .logging import get_logger
from .monitor import Monitor, NetworkStalled, StartupError
from .mqtt import BrokerError


def policy_mismatch(chosen_for: object, running: AlarmPolicy) -> str | None:
    """What in the running alarm policy differs from the one the bundle's thresholds were chosen
    for (the thresholds are figures of that rule); None when nothing does or the bundle does not say."""
    if not isinstance(chosen_for, dict):
        return None
    keys = ("persist_cuts", "reference_cuts", "min_windows")
    differ = [f"alarm.{k}: {getattr(running, k)} (chosen for {chosen_for[k]})"
              for k in keys if k in chosen_for and chosen_for[k] != getattr(running, k)]
    if not differ:
        return None
    return ("the bundle's thresholds were chosen for another alarm rule than config.yaml sets: "
            + ", ".join(differ) + "; alarms may come too early or too late")


def run(config: Config) -> int:
    """Start the daemon for ``config`` and run it until SIGTERM/SIGINT; returns the exit code.
    Start-up problems raise :class:`StartupError`."""
    log = get_logger().bind(instance=config.instance)
    systemd.status("loading TensorFlow and the model")
    from ..model.device import DeviceError, select_device

    try:
        device = select_device(config.device)
    except (DeviceError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    log.info("device", requested=config.device, device=device)

    from ..model.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(config.bundle)
    except BundleError as exc:
        raise StartupError(str(exc)) from None
    th = bundle.meta.thresholds
    log.info("bundle", path=str(config.bundle), model=bundle.meta.model_id, score=th.score,
             warning=th.warning, alarm=th.alarm)
    mismatch = policy_mismatch(bundle.meta.training.get("alarm_policy"), config.alarm)
    if mismatch:
        log.warning("alarm_policy_differs", detail=mismatch)
    try:
        monitor = Monitor(config, bundle, "cpu" if device == "cpu" else "gpu")
    except BrokerError as exc:  # a TLS or password file that cannot be used
        raise StartupError(str(exc)) from None
    monitor.warm_up()
    # Everything loaded so far (TensorFlow, Keras, the model: ~400 000 objects) lives as long as
    # the process. Out of the collector's sight, a full collection no longer walks it: those took
    # ~200 ms every half minute under load, the whole tail of the scores' latency (docs/performance.md).
    gc.collect()  # what start-up left as garbage goes first, rather than being kept for good
    gc.freeze()
    # From here a stop request is honoured gracefully, also one that comes right after READY=1.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: monitor.stop())
    systemd.status(f"connecting to the broker {config.broker.address}")
    monitor.start()
    try:
        monitor.run()
    except NetworkStalled as exc:
        log.error("network_stalled", reason=str(exc), exit_code=1)
        systemd.status(f"exiting: {exc}")
        return 1
    return 0
