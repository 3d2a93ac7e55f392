"""Progress of long training work: which model trains, its epochs and time, and what remains.

``fit``, ``crossval`` and ``search`` train many models (a default ``fit`` five, a cross-validation
twenty), each for minutes on a small box. :class:`Progress` prints a line when a model starts and
ends, and one every ``every`` seconds while it trains, with an estimate of what remains: epochs
still to run (early stopping ends most models before ``max_epochs``, so the estimate takes the
finished models' epoch counts, and says the most it could be) times the seconds per epoch seen.
"""

from __future__ import annotations

import time
from typing import Callable


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts ``models`` trainings of at most ``max_epochs`` epochs each; :meth:`model` gives the
    Keras callback of the next one."""

    def __init__(self, models: int, max_epochs: int, *, every: float = 30.0,
                 out: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.models, self.max_epochs, self.every = models, max_epochs, every
        self.out = out or (lambda line: print(line, flush=True))
        self.clock = clock
        self.started = clock()
        self.done = 0  # models finished
        self.epochs_done: list[int] = []  # epochs each finished model ran
        self.seconds_per_epoch: float | None = None

    def model(self, what: str):
        """The Keras callback of the next model; ``what`` says which (e.g. "fold 2 of 4")."""
        import keras  # heavy: only when a model trains

        class Callback(_ModelProgress, keras.callbacks.Callback):
            pass

        return Callback(self, self.done + 1, what)

    def expected_epochs(self) -> float:
        return (sum(self.epochs_done) / len(self.epochs_done)) if self.epochs_done else float(self.max_epochs)

    def remaining(self, index: int, epoch: int) -> tuple[float, float] | None:
        """Seconds likely left and at most left, model ``index`` being at ``epoch``; None before an epoch is timed."""
        if self.seconds_per_epoch is None:
            return None
        later = self.models - index
        likely = max(self.expected_epochs() - epoch, 1.0) + later * self.expected_epochs()
        most = (self.max_epochs - epoch) + later * self.max_epochs
        return likely * self.seconds_per_epoch, most * self.seconds_per_epoch

    def ended(self, epochs: int) -> None:
        self.done += 1
        self.epochs_done.append(epochs)


class _ModelProgress:
    """What the Keras callback of one model does (mixed into ``keras.callbacks.Callback``)."""

    def __init__(self, progress: Progress, index: int, what: str) -> None:
        super().__init__()
        self.progress, self.index, self.what = progress, index, what
        self.epoch = 0
        self.best: float | None = None

    @property
    def _name(self) -> str:
        return f"model {self.index}/{self.progress.models} ({self.what})"

    def on_train_begin(self, logs=None) -> None:
        p = self.progress
        self.began = self.last = p.clock()
        left = p.remaining(self.index, 0)
        tail = "" if left is None else f"; about {_duration(left[0])} left in all (at most {_duration(left[1])})"
        p.out(f"{self._name}: training, at most {p.max_epochs} epochs{tail}")

    def on_epoch_end(self, epoch, logs=None) -> None:
        p = self.progress
        now = p.clock()
        self.epoch = epoch + 1
        p.seconds_per_epoch = (now - self.began) / self.epoch
        loss = (logs or {}).get("val_loss")
        if loss is not None and (self.best is None or loss < self.best):
            self.best = float(loss)
        if now - self.last < p.every:
            return
        self.last = now
        left = p.remaining(self.index, self.epoch)
        best = "" if self.best is None else f", best validation loss {self.best:.5f}"
        p.out(f"{self._name}: epoch {self.epoch}/{p.max_epochs}, {p.seconds_per_epoch:.1f} s per epoch{best}; "
              f"about {_duration(left[0])} left in all (at most {_duration(left[1])})")

    def on_train_end(self, logs=None) -> None:
        p = self.progress
        p.ended(self.epoch)
        p.out(f"{self._name}: {self.epoch} epochs in {_duration(p.clock() - self.began)}; "
              f"{p.done} of {p.models} models done after {_duration(p.clock() - p.started)}")
