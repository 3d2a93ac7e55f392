"""Reloading without a restart (``systemctl reload``, SIGHUP): a new configuration and model bundle.

The signal only sets a flag. The main loop then starts :class:`Reloader`'s thread, which reads
and validates ``config.yaml`` and the bundle it names, loads the model and traces its scoring call:
seconds of work that must not stop the loop. Meanwhile the old model goes on scoring. When the
new one is ready the main loop switches between two of its turns (:meth:`Monitor.switch`): every
window cut before the switch is scored by the old model, every one after by the new, and every
output from then on carries the new model id. The MQTT session, the open cuts and the inputs in
flight are kept. Anything wrong (a key, a file, a bundle that does not load or windows cuts
differently) leaves the old configuration and model running, and says why.

What a reload applies, and what waits for a restart (:data:`RESTART_ONLY`): the bundle, the alarm
policy, batching, QoS, how scores are published (`outputs`), the errors rate limit, the status interval and the log level apply at the
switch. The broker and its credentials, the topic root and instance, the device, delivery,
limits, the state file, the metrics endpoint, the Sparkplug edge node and the log format belong to connections, threads
and files opened at start; the machines watched, to the alarm states read back at start (a
machine added later would resume as normal while its retained alarm says otherwise). A change to
them is reported and waits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

from ..model.meta import BundleError, BundleMeta, windowing_of  # no TensorFlow
from ..model.runtime import RuntimeChoice, ServingError  # no TensorFlow
from . import systemd
from .config import Config, ConfigError

if TYPE_CHECKING:
    from ..model.scorer import WindowScorer
    from ..model.serving import ServingModel

#: Settings a reload does not apply: they were used to open connections, threads and files.
RESTART_ONLY: tuple[str, ...] = ("broker", "topic_root", "instance", "machines", "runtime", "device", "delivery", "limits",
                                 "state_file", "metrics", "sparkplug")


@dataclass(frozen=True)
class Prepared:
    """A new configuration and model, loaded and traced, ready to switch to."""

    config: Config  # as read, with the running values of what waits for a restart
    bundle: ServingModel
    scorer: WindowScorer
    waiting: tuple[str, ...]  # restart-only settings that changed: applied at the next restart


@dataclass(frozen=True)
class Failed:
    """A reload that cannot be applied; ``reason`` names the thing to fix."""

    reason: str


Outcome = Union[Prepared, Failed]


def restart_only_changes(running: Config, new: Config) -> tuple[Config, tuple[str, ...]]:
    """``new`` with the running values of the settings a reload does not apply, and the names of
    those that differ (``logging.format`` included: the log stream was set up at start)."""
    waiting = [name for name in RESTART_ONLY if getattr(new, name) != getattr(running, name)]
    kept = {name: getattr(running, name) for name in RESTART_ONLY}
    if new.logging.format != running.logging.format:
        waiting.append("logging.format")
    kept["logging"] = replace(new.logging, format=running.logging.format)
    return replace(new, **kept), tuple(waiting)


def windowing_change(running: BundleMeta, new: BundleMeta) -> str | None:
    """What in the new bundle's metadata cuts windows differently from the running one
    (:func:`~..model.meta.windowing_of`), or None. A reload keeps the open cuts, cut into windows
    as they were so far: the geometry must stay."""
    old, now = windowing_of(running), windowing_of(new)
    differ = [f"{name}: {old[name]!r} -> {now[name]!r}" for name in old if old[name] != now[name]]
    if not differ:
        return None
    return ("it cuts windows differently (" + "; ".join(differ) + "): a reload keeps the open cuts, "
            "so it needs the same windows; restart the service to change them (open cuts then start afresh)")


class Reloader:
    """Prepares reloads on a thread of its own; the main loop polls it once per turn.

    Requests that come while one is being prepared are kept: one more reload follows, reading
    the files as they are then (an operator who fixes a file and reloads again gets that)."""

    def __init__(self, read_config: Callable[[], Config], warm_up: Callable[[WindowScorer], None]) -> None:
        self._read_config = read_config  # config.yaml with the command line's overrides, validated
        self._warm_up = warm_up
        # Set from the signal handler: a plain attribute, since an Event's lock taken by the main
        # thread when the signal lands would deadlock it.
        self._requested = False
        self._thread: threading.Thread | None = None
        self._outcome: Outcome | None = None
        self.runtime: RuntimeChoice | None = None  # chosen at start, kept by every reload

    def request(self) -> None:
        self._requested = True

    @property
    def busy(self) -> bool:
        return self._requested or self._thread is not None

    def wait(self, timeout: float) -> None:
        """Let a reload being prepared finish (at shutdown; its outcome is dropped)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def poll(self, running: Config, running_meta: BundleMeta) -> Outcome | None:
        """The outcome of a finished reload (once), else None; starts the next one when asked for
        (and tells systemd: ``RELOADING=1`` now, ``READY=1`` from whoever takes the outcome)."""
        if self._thread is not None:
            if self._thread.is_alive():
                return None
            self._thread.join()
            self._thread, outcome, self._outcome = None, self._outcome, None
            return outcome
        if self._requested:
            self._requested = False
            systemd.reloading("reloading the configuration and the model bundle")
            self._thread = threading.Thread(target=self._prepare, args=(running, running_meta),
                                            name="edge-monitor-reload", daemon=True)
            self._thread.start()
        return None

    def _prepare(self, running: Config, running_meta: BundleMeta) -> None:
        try:
            self._outcome = prepare(running, running_meta, self._read_config, self._warm_up, self.runtime)
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the old model keeps running
            self._outcome = Failed(f"unexpected {type(exc).__name__} while reloading: {exc}")


def prepare(running: Config, running_meta: BundleMeta, read_config: Callable[[], Config],
            warm_up: Callable[[WindowScorer], None], runtime: RuntimeChoice) -> Outcome:
    """Read, validate and load what a reload switches to (on the reload thread), on the runtime
    chosen at start."""
    from ..model.serving import load_serving

    try:
        new = read_config()
    except (ConfigError, ValueError) as exc:
        return Failed(str(exc))
    config, waiting = restart_only_changes(running, new)
    # The bundle directory may be a symlink that an installer switches (deploy/install.sh): read
    # it once, through one resolved path, so that a switch during the load cannot mix two bundles.
    path = Path(config.bundle).resolve()
    # No capture of fd 2 here (service/native_log.py): TensorFlow started long ago and says
    # nothing more, and a capture would hide what the main thread's inference might write meanwhile.
    try:
        bundle = load_serving(path, runtime)
    except (BundleError, ServingError) as exc:
        return Failed(str(exc))
    except Exception as exc:  # noqa: BLE001 - Keras refusing the file in its own words
        return Failed(f"bundle {config.bundle}: cannot load it ({type(exc).__name__}: {exc})")
    change = windowing_change(running_meta, bundle.meta)
    if change:
        return Failed(f"bundle {config.bundle}: {change}")
    scorer = bundle.scorer()
    try:
        warm_up(scorer)  # traced here, not on the first live window after the switch
    except Exception as exc:  # noqa: BLE001
        return Failed(f"bundle {config.bundle}: its model does not score a window ({type(exc).__name__}: {exc})")
    return Prepared(config, bundle, scorer, waiting)
