"""The daemon as a process: device, bundle, monitor, signals and exit codes.

``python -m edge_monitor run`` calls :func:`run`: it reads the bundle's metadata, chooses the
runtime and device (ONNX Runtime on the bundle's exported graph; TensorFlow, which loads only
then, for a bundle without one), loads the bundle on it, builds the :class:`~.monitor.Monitor`, warms it up, connects
and runs it until SIGTERM/SIGINT. Exit codes: 0 after a graceful stop; 1 when the MQTT network
thread stalls (systemd restarts the service; nothing is lost); 2 for a start-up problem
(:class:`StartupError`, whose message names the thing to fix).
"""

from __future__ import annotations

import gc
import signal
from contextlib import nullcontext
from typing import Callable

from ..core.alarm import policy_mismatch
from . import systemd
from .config import Config
from .liveness import NetworkStalled
from .logging import get_logger
from .monitor import Monitor, StartupError
from .mqtt import BrokerError
from .native_log import NativeCapture
from .reload import Reloader
from .scoring import report_call_size, warm_up


def run(config: Config, read_config: Callable[[], Config] | None = None) -> int:
    """Start the daemon for ``config`` and run it until SIGTERM/SIGINT; returns the exit code.
    ``read_config`` reads the configuration again for a reload (SIGHUP; none: the configuration
    cannot change, only the bundle it names is loaded again). Start-up problems raise
    :class:`StartupError`."""
    log = get_logger().bind(instance=config.instance)
    # SIGHUP's default ends the process: from the first moment, it asks for a reload instead (one
    # that comes during start-up is done once the monitor runs).
    reloader = Reloader(read_config or (lambda: config), warm_up)
    signal.signal(signal.SIGHUP, lambda signum, frame: reloader.request())
    systemd.status("loading the model")
    from ..model.meta import BundleError, read_bundle_meta
    from ..model.runtime import ServingError, choose_runtime, pick_runtime
    from ..model.serving import load_serving

    try:
        meta = read_bundle_meta(config.bundle)
        runtime, _ = pick_runtime(config.runtime, meta, str(config.bundle))
    except (BundleError, ServingError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    # TensorFlow's and absl's native lines go to the log, not to stderr (native_log.py); ONNX
    # Runtime writes nothing there (its log level is set to errors).
    tensorflow = runtime == "tensorflow"
    if tensorflow:
        systemd.status("loading TensorFlow and the model")
    with NativeCapture(log, "device") if tensorflow else nullcontext() as native:
        try:
            choice = choose_runtime(config.runtime, config.device, meta, str(config.bundle))
        except (ServingError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        if tensorflow and choice.kind == "cpu":
            native.expect_no_gpu()
    try:
        with NativeCapture(log, "bundle") if tensorflow else nullcontext():
            bundle = load_serving(config.bundle, choice, None if tensorflow else meta)
    except (BundleError, ServingError) as exc:
        raise StartupError(str(exc)) from None
    choice = bundle.runtime  # the GPU may have fallen back to the CPU
    note = native.cuda_note if tensorflow and choice.kind == "cpu" else None
    log.info("device", requested=config.device, device=choice.device, runtime=choice.runtime,
             requested_runtime=config.runtime, reason=f"{choice.reason} (CUDA: {note})" if note else choice.reason)
    reloader.runtime = choice
    report_call_size(log, bundle)
    th = bundle.meta.thresholds
    log.info("bundle", path=str(config.bundle), model=bundle.meta.model_id, score=th.score,
             warning=th.warning, alarm=th.alarm, levels=th.levels, operating_point=th.describe())
    if th.levels == 1:
        log.info("one_alarm_level", detail="the bundle's warning and alarm thresholds coincide: on its archive a "
                 "lower warning gave no earlier notice of a failing tool, so machines go from normal to alarm")
    mismatch = policy_mismatch(bundle.meta.training.get("alarm_policy"), config.alarm)
    if mismatch:
        log.warning("alarm_policy_differs", detail=mismatch)
    try:
        monitor = Monitor(config, bundle, choice.kind, reloader)
    except BrokerError as exc:  # a TLS or password file that cannot be used
        raise StartupError(str(exc)) from None
    with NativeCapture(log, "warm-up") if tensorflow else nullcontext():
        monitor.warm_up()
    del bundle  # the monitor holds what it needs: a reload can free this model
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
