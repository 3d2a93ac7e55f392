"""TensorFlow's and absl's native lines kept out of stderr (edge_monitor/service/native_log.py): the
classifier on the lines TensorFlow 2.21 writes here, the capture of fd 2 (what it passes through,
threads, nesting), Python's stderr kept off fd 2, Python logging and warnings as log lines."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from edge_monitor.service.native_log import NativeCapture, classify

# What `import tensorflow` and the first GPU query wrote on this box (TensorFlow 2.21, no GPU).
STARTUP = b"""\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796083023.397029    4990 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796083023.397427    4990 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796083023.449117    4990 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796083027.099337    4990 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1796083081.942999    5444 util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512. Falling back to the default Eigen-based implementation if present.
"""


class Recorder:
    """A structlog-like logger that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict]] = []

    def debug(self, event: str, **fields) -> None:
        self.records.append(("debug", event, fields))

    def warning(self, event: str, **fields) -> None:
        self.records.append(("warning", event, fields))


def test_tensorflow_start_up_lines_are_debug_and_the_cuda_ones_are_marked():
    lines = classify(STARTUP)
    assert [(line.level, line.severity, line.source) for line in lines] == [
        ("debug", "warning", "absl"),
        ("debug", "info", "port.cc:153"),
        ("debug", "info", "cudart_stub.cc:31"),
        ("debug", "info", "cpu_feature_guard.cc:227"),
        ("warning", "error", "cuda_platform.cc:52"),  # unless the device resolved to the CPU
        ("debug", "error", "util.cc:131"),  # a harmless ERROR line, measured while training
    ]
    assert lines[0].message == "All log messages before absl::InitializeLog() is called are written to STDERR"
    assert lines[3].message.endswith("\nTo enable the following instructions: AVX2 AVX512F FMA, in other "
                                     "operations, rebuild TensorFlow with the appropriate compiler flags.")
    assert [line.no_gpu for line in lines] == [False, False, True, False, True, False]
    assert b"".join(line.raw for line in lines) == STARTUP  # every byte accounted for


def test_error_lines_are_warnings_and_unknown_lines_pass_through():
    data = (b"some library: something real went wrong\n"
            b"E1130 23:59:10.123456  4990 gpu_device.cc:2020] Could not identify NUMA node\n"
            b"  the rest of its message\n"
            b"F1130 23:59:10.123456  4990 check.cc:1] Check failed: x == y\n"
            b"2024-01-31 12:00:00.123456: W tensorflow/core/framework/op_kernel.cc:1816] OP_REQUIRES failed\n"
            b"a real error right after a notice\n"
            b"no newline at the end")
    lines = classify(data)
    assert [(line.level, line.severity, line.message) for line in lines] == [
        ("pass", None, "some library: something real went wrong"),
        # glog writes a multi-line message after one prefix: an error keeps its lines (it is shown)
        ("warning", "error", "Could not identify NUMA node\n  the rest of its message"),
        ("warning", "fatal", "Check failed: x == y"),
        ("debug", "warning", "OP_REQUIRES failed"),
        # ... but nothing hides behind a notice
        ("pass", None, "a real error right after a notice"),
        ("pass", None, "no newline at the end"),
    ]
    assert b"".join(line.raw for line in lines) == data


def test_the_capture_logs_native_lines_and_passes_the_rest_to_stderr(capfd):
    log = Recorder()
    with NativeCapture(log, "test") as native:
        os.write(2, STARTUP)
        os.write(2, b"libfoo: a real error nobody knows\n")
        native.expect_no_gpu()
    out = capfd.readouterr()
    assert out.err == "libfoo: a real error nobody knows\n"  # unchanged, and nothing else
    assert {(level, fields["source"]) for level, _, fields in log.records} == {
        ("debug", "absl"), ("debug", "port.cc:153"), ("debug", "cudart_stub.cc:31"),
        ("debug", "cpu_feature_guard.cc:227"), ("debug", "cuda_platform.cc:52"), ("debug", "util.cc:131"),
    }
    assert all(event == "tensorflow_log" and fields["during"] == "test" for _, event, fields in log.records)
    assert native.cuda_note == "failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"

    log = Recorder()
    with NativeCapture(log, "gpu") as native:  # a GPU was expected: CUDA's failure is a warning
        os.write(2, STARTUP)
    assert [f["source"] for level, _, f in log.records if level == "warning"] == ["cuda_platform.cc:52"]
    assert capfd.readouterr().err == ""


def test_the_capture_ends_when_the_block_raises(capfd):
    log = Recorder()
    with pytest.raises(ValueError, match="bad bundle"):
        with NativeCapture(log, "bundle"):
            os.write(2, b"unknown\nE0000 00:00:1.0  1 loader.cc:9] cannot read the model\n")
            raise ValueError("bad bundle")
    assert capfd.readouterr().err == "unknown\n"
    assert [(level, f["message"]) for level, _, f in log.records] == [("warning", "cannot read the model")]
    os.write(2, b"after\n")  # fd 2 is back
    assert capfd.readouterr().err == "after\n"


def test_captures_do_not_nest_and_threads_take_turns(capfd):
    outer = NativeCapture(Recorder(), "outer")
    with outer:
        with pytest.raises(RuntimeError, match="captures do not nest"):
            with NativeCapture(Recorder(), "inner"):
                pass
        os.write(2, b"I0000 00:00:1.0  1 a.cc:1] outer\n")
    assert [line.message for line in outer.lines] == ["outer"]

    first, second = NativeCapture(Recorder(), "first"), NativeCapture(Recorder(), "second")
    holding, entered, go = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with first:
            holding.set()
            go.wait(10)
            os.write(2, b"I0000 00:00:1.0  1 a.cc:1] first\n")

    def wait_turn() -> None:
        holding.wait(10)
        with second:
            entered.set()
            os.write(2, b"I0000 00:00:1.0  1 b.cc:1] second\n")

    threads = [threading.Thread(target=hold), threading.Thread(target=wait_turn)]
    for t in threads:
        t.start()
    assert holding.wait(10)
    assert not entered.wait(0.3)  # the second capture waits for the first
    go.set()
    for t in threads:
        t.join(10)
    assert [line.message for line in first.lines] == ["first"]
    assert [line.message for line in second.lines] == ["second"]
    assert capfd.readouterr().err == ""


def test_python_stderr_and_logging_stay_out_of_the_capture(tmp_path):
    """In a process of its own: Python's stderr written inside a capture comes out at once and is
    not mistaken for native output; Python logging and warnings become JSON log lines."""
    script = textwrap.dedent("""
        import logging, os, sys, warnings
        from edge_monitor.service.logging import configure_logging
        from edge_monitor.service.native_log import NativeCapture, isolate_python_stderr, route_python_logging

        assert isolate_python_stderr() and not isolate_python_stderr()
        configure_logging("json", "debug")
        route_python_logging()
        with NativeCapture(during="test"):
            print("python line", file=sys.stderr, flush=True)
            os.write(2, b"I0000 00:00:1.0  1 port.cc:153] native line\\n")
            os.write(2, b"E0000 00:00:1.0  1 x.cc:2] native error\\n")
            logging.getLogger("tensorflow").warning("from %s", "tf")
            warnings.warn("from keras", UserWarning)
    """)
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "python line"  # before the capture ended: not held back with the native lines
    import json

    records = [json.loads(line) for line in lines[1:]]  # everything else: the log
    assert [(r["event"], r["level"]) for r in records] == [
        ("python_log", "warning"), ("python_warning", "warning"),
        ("tensorflow_log", "debug"), ("tensorflow_log", "warning"),
    ]
    assert records[0]["logger"] == "tensorflow" and records[0]["message"] == "from tf"
    assert records[1]["category"] == "UserWarning" and records[1]["message"] == "from keras"
    assert records[2]["message"] == "native line" and records[3]["message"] == "native error"
