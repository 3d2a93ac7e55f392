"""TensorFlow's and absl's own lines kept out of stderr, and real errors kept in.

TensorFlow's C++ runtime and absl write straight to file descriptor 2, on every start:
"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", the
oneDNN and CUDA-stub notices, "failed call to cuInit" on a box without a GPU.
``TF_CPP_MIN_LOG_LEVEL`` cannot hold back what absl writes before TensorFlow reads it.

- :func:`isolate_python_stderr`, at process start: Python's ``sys.stderr`` (and so the structlog
  output) writes to a duplicate of fd 2, so Python's lines never pass through fd 2 again.
- :class:`NativeCapture` points fd 2 itself at an anonymous temporary file around a step that
  initialises TensorFlow (import, device selection, loading a bundle, the first inference), then
  restores it and sorts what was written (:func:`classify`): glog INFO/WARNING lines, absl's
  "before absl::InitializeLog()" and the errors known to be harmless go to the log at debug level;
  CUDA's "no GPU here" lines too when the device resolved to the CPU
  (:meth:`~NativeCapture.expect_no_gpu`; :attr:`~NativeCapture.cuda_note` is then the device's
  reason); any other ERROR/FATAL line goes to the log as a warning; a line in no known format is
  written back to fd 2 unchanged, so nothing real is lost. A file, not a pipe: a pipe nobody
  drains fills up and blocks the writer. One capture at a time: another thread waits for the
  running one, the same thread cannot nest one (RuntimeError). A native abort inside a capture
  loses what it wrote there: keep the captured steps short.
- :func:`own_process_output` does both, with the log between them, for each entry point that
  loads TensorFlow (the daemon, ``check``, training, the demo).
- :func:`route_python_logging`: Python ``logging`` records (TensorFlow's, absl's, any library's)
  and ``warnings`` (Keras') become structured log lines instead of raw ones.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, replace

from .logging import configure_logging, get_logger

# glog's prefix, as absl writes it: "I0000 00:00:1796083023.397029    4990 port.cc:153] message"
# (before absl::InitializeLog the date and time are that odd pair), or "E1130 23:59:10.123 ...".
_GLOG = re.compile(r"(?P<sev>[IWEF])\d{4} \S+\s+\d+ (?P<src>[^\s\]]+:\d+)\] ?(?P<msg>.*)")
# TensorFlow's own older format: "2024-01-31 12:00:00.123456: W tensorflow/core/x.cc:12] message"
_TF_LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<sev>[IWEF]) (?P<src>[^\s\]]+:\d+)\] ?(?P<msg>.*)")
_ABSL_PREINIT = "WARNING: All log messages before absl::InitializeLog()"
SEVERITIES = {"I": "info", "W": "warning", "E": "error", "F": "fatal"}
# CUDA saying there is no GPU to use: expected where the device resolves to the CPU.
_NO_GPU = re.compile(r"failed call to cuInit|could not find cuda drivers|CUDA_ERROR_NO_DEVICE"
                     r"|no CUDA-capable device|cannot dlopen some GPU libraries", re.IGNORECASE)
# ERROR lines that report nothing wrong (measured): oneDNN falling back to Eigen for int32 ops
# while a model trains, on CPUs it considers without AVX-512.
_HARMLESS_ERRORS = re.compile(r"oneDNN supports \w+ only on platforms with AVX-512")
# Known second lines of a notice (cpu_feature_guard.cc, with TF_CPP_MIN_LOG_LEVEL=0).
_KNOWN_CONTINUATIONS = re.compile(r"To enable the following instructions: ")


@dataclass(frozen=True)
class NativeLine:
    """One line (with its continuation lines) that native code wrote to fd 2.

    ``level``: ``debug`` (noise), ``warning`` (an error line the log must show) or ``pass`` (not
    recognised: written back to stderr as it came). ``severity``: glog's (``info`` ... ``fatal``),
    None for an unrecognised line. ``no_gpu``: CUDA saying there is no GPU."""

    level: str
    severity: str | None
    source: str | None
    message: str
    raw: bytes
    no_gpu: bool = False


def classify(data: bytes) -> list[NativeLine]:
    """Sort what native code wrote. glog writes a multi-line message after one prefix: a line in
    no known format continues an ERROR/FATAL line before it (shown either way), but not a notice,
    so that nothing real can hide behind one; it is passed through (a few known second lines of
    notices excepted)."""
    out: list[NativeLine] = []
    continues = False  # the line before was a glog line (a notice continues only with known lines)
    for raw in data.splitlines(keepends=True):
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        match = _GLOG.fullmatch(text) or _TF_LOG.fullmatch(text)
        if match:
            severity, message = SEVERITIES[match["sev"]], match["msg"]
            loud = severity in ("error", "fatal") and not _HARMLESS_ERRORS.search(message)
            out.append(NativeLine("warning" if loud else "debug", severity, match["src"], message, raw,
                                  bool(_NO_GPU.search(message))))
            continues = True
        elif text.startswith(_ABSL_PREINIT):
            out.append(NativeLine("debug", "warning", "absl", text.removeprefix("WARNING: "), raw))
            continues = False
        elif continues and (out[-1].level == "warning" or _KNOWN_CONTINUATIONS.match(text)):
            last = out[-1]
            out[-1] = replace(last, message=f"{last.message}\n{text}", raw=last.raw + raw)
        else:
            out.append(NativeLine("pass", None, None, text, raw))
            continues = False
    return out


# ------------------------------------------------------------------------------ Python's stderr


def isolate_python_stderr() -> bool:
    """Point ``sys.stderr`` at a duplicate of fd 2, before TensorFlow loads and before logging is
    configured (structlog keeps the stream it is given). True if it did; a ``sys.stderr`` that does
    not write to fd 2 (already isolated, or replaced by a test runner) is left alone."""
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
    old = sys.stderr
    old.flush()
    fd = os.dup(2)  # not inherited by child processes; fd 2 itself still is
    # closefd=False: the duplicate lives as long as the process (no ResourceWarning at exit)
    sys.stderr = os.fdopen(fd, "w", buffering=1, encoding=old.encoding or "utf-8", closefd=False,
                           errors=old.errors or "backslashreplace")
    return True


def _flush_python() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


# ------------------------------------------------------------------------------ the capture

_lock = threading.Lock()
_owner: int | None = None  # the thread capturing now


class NativeCapture:
    """``with NativeCapture(log, "model"):``: fd 2 goes to an anonymous file for the block, and
    its lines are sorted and logged (``log``: a structlog logger; the process's by default) when
    the block ends, also when it raises. :attr:`lines` holds them afterwards."""

    def __init__(self, log=None, during: str = "tensorflow") -> None:
        self.during = during
        self.lines: list[NativeLine] = []
        self._log = log
        self._no_gpu_expected = False
        self._file = None
        self._saved: int | None = None
        self._held = False

    def expect_no_gpu(self) -> None:
        """The device resolved to the CPU: CUDA's "no GPU" errors are expected, not warnings."""
        self._no_gpu_expected = True

    @property
    def cuda_note(self) -> str | None:
        """CUDA's own words for the missing GPU (the most severe such line), if it said any."""
        rank = {"fatal": 0, "error": 1, "warning": 2, "info": 3}
        said = sorted((line for line in self.lines if line.no_gpu), key=lambda line: rank.get(line.severity, 4))
        return said[0].message.splitlines()[0] if said else None

    def __enter__(self) -> NativeCapture:
        global _owner
        if _owner == threading.get_ident():
            raise RuntimeError(f"NativeCapture({self.during!r}): this thread already captures fd 2; "
                               "captures do not nest (capture the outer step only)")
        _lock.acquire()
        self._held = True
        _owner = threading.get_ident()
        _flush_python()
        try:
            self._file = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except OSError as exc:  # no temporary file: TensorFlow's lines go to stderr as before
            self._release()
            (self._log or get_logger()).warning("native_stderr_not_captured", during=self.during, reason=str(exc))
        return self

    def _release(self) -> None:
        global _owner
        if self._saved is not None:
            os.close(self._saved)
            self._saved = None
        if self._held:
            self._held = False
            _owner = None
            _lock.release()

    def __exit__(self, *exc_info) -> None:
        if self._saved is None:  # the capture could not start
            if self._file is not None:
                self._file.close()
            return
        try:
            _flush_python()
            os.dup2(self._saved, 2)
            self._file.seek(0)
            self.lines = classify(self._file.read())
            passed = b"".join(line.raw for line in self.lines if line.level == "pass")
            while passed:  # before another capture may take fd 2
                passed = passed[os.write(2, passed):]
        finally:
            self._file.close()
            self._release()
        self._report()

    def _report(self) -> None:
        log = self._log or get_logger()
        for line in self.lines:
            if line.level == "pass":
                continue
            quiet = line.level == "debug" or (line.no_gpu and self._no_gpu_expected)
            (log.debug if quiet else log.warning)(
                "tensorflow_log", severity=line.severity, source=line.source, message=line.message,
                during=self.during,
            )


# ------------------------------------------------------------------------------ Python's logging


class _ToStructlog(logging.Handler):
    """Python ``logging`` records as structured log lines (the logger's name in ``logger``)."""

    def emit(self, record: logging.LogRecord) -> None:
        levels = (logging.ERROR, logging.WARNING, logging.INFO)  # structlog knows the standard ones
        level = next((lv for lv in levels if record.levelno >= lv), logging.DEBUG)
        try:
            get_logger().log(level, "python_log", logger=record.name, message=record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    get_logger().warning("python_warning", category=category.__name__, message=str(message),
                         source=f"{filename}:{lineno}")


def own_process_output(fmt: str = "auto", level: str = "warning") -> None:
    """A process that loads TensorFlow, set up before it does: Python's stderr off fd 2
    (:func:`isolate_python_stderr`), the structured log (``logging.format`` and ``level``) that
    captured native lines and Python's logging go to (:func:`route_python_logging`)."""
    isolate_python_stderr()
    configure_logging(fmt, level)
    route_python_logging()


def route_python_logging() -> None:
    """Python ``logging`` (root: warnings and above) and ``warnings`` into the structured log.

    Call before TensorFlow loads: TensorFlow gives its logger a stderr handler of its own, and
    absl calls ``logging.basicConfig()``, only when the root logger has no handler yet."""
    root = logging.getLogger()
    if not any(isinstance(h, _ToStructlog) for h in root.handlers):
        root.addHandler(_ToStructlog())
    warnings.showwarning = _show_warning
