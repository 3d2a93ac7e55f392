"""A synthetic milling archive in the ``mill.mat`` layout, with the generator's ground truth.

The real UC Berkeley archive cannot be downloaded here, so the project runs on this stand-in. It
follows the real experiment's 16 cases (:data:`CASES`) and models each cut as air cut, entry
transient, steady cutting and exit; flank wear grows along each case's runs and raises the load,
the vibration's once-per-revolution content and the acoustic-emission bursts, while tool-to-tool
and run-to-run gains, drift and noise partly mask it. ``docs/synthetic-archive.md`` gives the
equations and parameters.

Each tool draws its randomness from ``SeedSequence([seed, 1, case])`` and each cut from
``SeedSequence([seed, 2, case, run])``, so an archive limited to some cases or runs holds exactly
the cuts of the full archive with the same seed (which cuts are corrupted aside).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.signal import lfilter

from ..core.channels import CHANNELS, SAMPLE_RATE_HZ
from .mill import write_archive
from .truth import CutTruth, truth_path


@dataclass(frozen=True)
class CaseSpec:
    """One row of the real experiment's table (method.md)."""

    case: int
    doc: float  # depth of cut, mm
    feed: float  # mm/rev
    material: int  # 1 cast iron, 2 steel
    runs: int
    vb_max: float  # largest flank wear of the case, mm (reached at its last run)


CASES: tuple[CaseSpec, ...] = (
    CaseSpec(1, 1.5, 0.5, 1, 17, 0.50),
    CaseSpec(2, 0.75, 0.5, 1, 14, 0.55),
    CaseSpec(3, 0.75, 0.25, 1, 14, 0.55),
    CaseSpec(4, 1.5, 0.25, 1, 7, 0.49),
    CaseSpec(5, 1.5, 0.5, 2, 6, 0.74),
    CaseSpec(6, 1.5, 0.25, 2, 1, 0.00),
    CaseSpec(7, 0.75, 0.25, 2, 8, 0.46),
    CaseSpec(8, 0.75, 0.5, 2, 6, 0.62),
    CaseSpec(9, 1.5, 0.5, 1, 9, 0.81),
    CaseSpec(10, 1.5, 0.25, 1, 10, 0.70),
    CaseSpec(11, 0.75, 0.25, 1, 23, 0.76),
    CaseSpec(12, 0.75, 0.5, 1, 15, 0.65),
    CaseSpec(13, 0.75, 0.25, 2, 15, 1.53),
    CaseSpec(14, 0.75, 0.5, 2, 9, 1.14),
    CaseSpec(15, 1.5, 0.25, 2, 7, 0.70),
    CaseSpec(16, 1.5, 0.5, 2, 6, 0.62),
)

# The machine: a face mill with six inserts at 826 rev/min; US mains for the spindle drive.
SPINDLE_RPM = 826.0
INSERTS = 6
ROTATION_HZ = SPINDLE_RPM / 60.0  # 13.8 Hz; the teeth pass at INSERTS times that, 82.6 Hz
LINE_HZ = 60.0
REFERENCE_SECONDS = 36.0  # the real recordings' length; event times scale with the cut length
MIN_SAMPLES = 4500  # shorter cuts leave no room for air, entry, steady cutting and exit
WORKPIECE_MM = 483.0  # length of one pass, for the cumulative cutting time field
STEADY_EPS = 0.05  # the entry transient is over when its overshoot stays below 5 % of the load
CORRUPT_CUTS = ((2, 1), (12, 1))  # (case, run) of the real archive's two corrupt cuts
CORRUPTION_KINDS = ("flatline", "dropout", "nonfinite")

# Wear signature, in the tool's effective wear w = wear_gain * VB (docs/synthetic-archive.md).
RUB_FORCE = 0.2  # flank rubbing force per (w + w^2), relative to the sharp chip force at 0.5 mm/rev
RUNOUT_NEW, RUNOUT_WEAR = 0.08, 0.45  # once-per-revolution force modulation: new + wear * w^1.5
VIB_WEAR = 1.5  # broadband vibration grows by (1 + VIB_WEAR * w^2)
AE_LEVEL_WEAR = 0.25  # AE level grows by (1 + AE_LEVEL_WEAR * w)
BURST_RATE_HZ, BURST_WEAR = 1.5, 6.0  # AE bursts per second: rate * (1 + BURST_WEAR * w^2)

# What masks it: tool-to-tool (per case) and run-to-run spread, as lognormal sigmas.
TOOL_FORCE_SIGMA, TOOL_GAIN_SIGMA, TOOL_WEAR_GAIN = 0.08, 0.10, (0.6, 1.4)
RUN_FORCE_SIGMA, RUN_GAIN_SIGMA = 0.06, 0.08
OFFSET_SIGMA = np.array([0.01, 0.02, 0.01, 0.01, 0.005, 0.005])  # V, CHANNELS order

# Vibration sensors (table, spindle): tooth-passing harmonic weights, structural mode (Hz),
# spindle imbalance (V).
VIB_SENSORS = (((1.0, 0.5, 0.3), 38.0, 0.02), ((1.0, 0.7, 0.45), 96.0, 0.03))


@dataclass
class SyntheticArchive:
    records: list[dict]  # write_archive's record mappings
    truth: list[CutTruth]  # one per record, same order


def case_spec(case: int) -> CaseSpec:
    for spec in CASES:
        if spec.case == case:
            return spec
    raise ValueError(f"unknown case {case!r}; the synthetic archive has cases 1 to {len(CASES)}")


def select_runs(n_runs: int, max_runs: int | None) -> np.ndarray:
    """Runs kept when a case is limited to ``max_runs``: first, last, spread across the wear."""
    if max_runs is None or max_runs >= n_runs:
        return np.arange(1, n_runs + 1)
    return np.unique(np.round(np.linspace(1, n_runs, max_runs)).astype(int))


# --- tool: wear curve and tool-to-tool differences ------------------------------------------------


@dataclass(frozen=True)
class _Tool:
    """One case's tool: its wear after every run and how it differs from the other tools."""

    vb: np.ndarray  # (runs,) true wear after each run, mm
    measured: np.ndarray  # (runs,) False where VB was not measured
    time: np.ndarray  # (runs,) cumulative cutting time, min
    force: float  # tool-to-tool force factor (insert geometry, edge preparation)
    wear_gain: float  # how strongly this tool's wear shows in the signals
    gains: np.ndarray  # (6,) per-channel gain of this set-up


def _wear_curve(s: np.ndarray) -> np.ndarray:
    """Typical flank-wear curve over normalised use s in [0, 1]: break-in, steady, accelerating."""
    break_in = (1 - np.exp(-s / 0.06)) / (1 - math.exp(-1 / 0.06))
    return 0.10 * break_in + 0.28 * s + 0.32 * s**2 + 0.30 * s**4


def _tool(spec: CaseSpec, seed: int) -> _Tool:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, spec.case]))
    n = spec.runs
    # Cumulative cutting time: one pass per run, sometimes two, at the case's feed speed.
    pass_min = WORKPIECE_MM / (spec.feed * SPINDLE_RPM)
    passes = rng.choice([1, 1, 1, 2], size=n) * rng.uniform(0.95, 1.05, size=n)
    time = np.round(np.cumsum(passes * pass_min), 1)
    if n == 1:
        vb = np.array([spec.vb_max])
    else:
        # Wear against use, with run-to-run jitter in the increments; ends exactly at vb_max.
        s = (time - time[0]) / (time[-1] - time[0])
        h = _wear_curve(s)
        steps = np.diff(h) * rng.lognormal(0.0, 0.3, size=n - 1)
        h = np.concatenate(([0.0], np.cumsum(steps) / steps.sum()))
        vb0 = min(rng.uniform(0.0, 0.08), spec.vb_max)
        vb = np.round(vb0 + (spec.vb_max - vb0) * h, 2)
    # About one run in eight was not measured; never the first or the last of a case.
    measured = np.ones(n, dtype=bool)
    if n > 2:
        inner = np.flatnonzero(rng.random(n - 2) < 0.16) + 1
        measured[inner] = False
    return _Tool(
        vb=vb,
        measured=measured,
        time=time,
        force=float(rng.lognormal(0.0, TOOL_FORCE_SIGMA)),
        wear_gain=float(rng.uniform(*TOOL_WEAR_GAIN)),
        gains=rng.lognormal(0.0, TOOL_GAIN_SIGMA, size=len(CHANNELS)),
    )


# --- one cut --------------------------------------------------------------------------------------


def _smoothstep(t: np.ndarray, start: float, duration: float) -> np.ndarray:
    """0 before ``start``, 1 after ``start + duration``, a raised cosine between."""
    u = np.clip((t - start) / duration, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * u)


def _resonance(rng: np.random.Generator, n: int, freq: float, q: float, fs: float) -> np.ndarray:
    """Unit-variance noise through a two-pole resonator (a structural mode of the machine)."""
    r = math.exp(-math.pi * freq / (q * fs))
    a = [1.0, -2 * r * math.cos(2 * math.pi * freq / fs), r * r]
    y = lfilter([1.0], a, rng.standard_normal(n))
    return y / y.std()


def _force(spec: CaseSpec, w: float) -> float:
    """Cutting force relative to a sharp tool at 1.5 mm, 0.5 mm/rev in cast iron.

    Two parts, both along the engaged edge (so proportional to the depth of cut): the chip
    force, Kienzle-like in feed, and the rubbing of the flank wear land, which grows with wear
    ``w`` but not with feed, so wear shows more, relatively, at the lower feed.
    """
    material = {1: 1.0, 2: 1.45}[spec.material]
    return material * (spec.doc / 1.5) * ((spec.feed / 0.5) ** 0.75 + RUB_FORCE * (w + w**2))


@dataclass(frozen=True)
class _Timeline:
    """Events of one cut, in seconds."""

    entry: float  # the tool touches the workpiece
    ramp: float  # time to full engagement
    overshoot: float  # the spindle drive's current overshoot after the ramp, share of the load
    tau: float  # its decay time constant
    ring_hz: float  # its oscillation
    exit: float  # the exit starts (may lie beyond the end of the recording)
    exit_ramp: float  # time to leave the workpiece

    @property
    def steady(self) -> float:
        """End of the entry transient: the overshoot's envelope has fallen below STEADY_EPS."""
        return self.entry + self.ramp + self.tau * math.log(max(self.overshoot / STEADY_EPS, 1.0))


def _timeline(rng: np.random.Generator, spec: CaseSpec, duration: float) -> _Timeline:
    scale = duration / REFERENCE_SECONDS
    return _Timeline(
        entry=max(rng.uniform(5.0, 14.0) * scale, 3.0),  # leaves the detector its air baseline
        ramp=rng.uniform(1.0, 2.5) * math.sqrt(0.5 / spec.feed),  # slower at the lower feed
        overshoot=rng.uniform(0.03, 0.20),
        tau=rng.uniform(0.25, 0.7),
        ring_hz=rng.uniform(0.6, 1.4),
        exit=rng.uniform(27.0, 40.0) * scale,
        exit_ramp=rng.uniform(0.8, 2.5),
    )


def _envelope(
    rng: np.random.Generator, t: np.ndarray, tl: _Timeline
) -> tuple[np.ndarray, np.ndarray]:
    """Engagement (0 in the air, 1 cutting) and the load envelope: engagement with drift,
    fluctuation and the entry overshoot."""
    n = t.size
    leaving = 1 - _smoothstep(t, tl.exit, tl.exit_ramp)
    engaged = _smoothstep(t, tl.entry, tl.ramp) * leaving
    after = np.clip(t - tl.entry - tl.ramp, 0.0, None)
    ring = tl.overshoot * np.exp(-after / tl.tau) * np.sin(2 * np.pi * tl.ring_hz * after)
    # Slow drift (workpiece hardness, spindle warming) and small load fluctuations (0.4 s).
    drift = rng.normal(0, 0.015) * (2 * t / t[-1] - 1) + rng.uniform(0, 0.025) * np.sin(
        2 * np.pi * t / rng.uniform(8, 20) + rng.uniform(0, 2 * np.pi)
    )
    k = int(0.4 * SAMPLE_RATE_HZ)
    fluct = 0.01 * np.convolve(rng.standard_normal(n + k - 1), np.ones(k) / math.sqrt(k), "valid")
    return engaged, engaged * (1 + drift + fluct) + ring * leaving


def _cut(
    spec: CaseSpec, tool: _Tool, run: int, seed: int, n: int, fs: float
) -> tuple[np.ndarray, tuple[int, tuple[int, int], int | None]]:
    """Signals (n, 6) of one cut, and its truth: entry, stable [start, stop), exit (or None)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, spec.case, run]))
    vb = float(tool.vb[run - 1])
    t = np.arange(n) / fs
    tl = _timeline(rng, spec, n / fs)
    engaged, envelope = _envelope(rng, t, tl)

    # Cutting force: parameters, tool, this run's workpiece, and wear (worse near failure).
    w = tool.wear_gain * vb
    force = _force(spec, w) * tool.force * rng.lognormal(0.0, RUN_FORCE_SIGMA)
    load = force * np.maximum(envelope, 0.0)  # 0 in the air

    # Spindle angle; the spindle slows slightly under load.
    rot_hz = ROTATION_HZ * (1 - 0.006 * load)
    theta = 2 * np.pi * np.cumsum(rot_hz) / fs + rng.uniform(0, 2 * np.pi)
    tooth = INSERTS * theta
    # Uneven insert wear makes the force vary once per revolution: runout and sidebands.
    runout = RUNOUT_NEW + RUNOUT_WEAR * min(w, 1.6) ** 1.5
    per_rev = 1 + runout * np.sin(theta + rng.uniform(0, 2 * np.pi))
    tooth_force = load * per_rev * (1 + 0.25 * np.sin(tooth + rng.uniform(0, 2 * np.pi)))

    # Sensor gains and offsets of the set-up and of this run (mounting, coupling, amplifiers).
    gain = tool.gains * rng.lognormal(0.0, RUN_GAIN_SIGMA, size=len(CHANNELS))
    offset = rng.normal(0.0, 1.0, size=len(CHANNELS)) * OFFSET_SIGMA

    # Spindle motor current: AC at the drive frequency, DC level; both follow the load.
    line = 2 * np.pi * rng.normal(LINE_HZ, 0.05) * t + rng.uniform(0, 2 * np.pi)
    ac_amp = 0.45 + 0.7 * (load + 0.05 * (tooth_force - load))
    smc_ac = ac_amp * (np.sin(line) + 0.08 * np.sin(3 * line)) + rng.normal(0, 0.02, n)
    ripple = 0.015 * np.sin(2 * np.pi * 360.0 * t + rng.uniform(0, 2 * np.pi))  # rectifier
    smc_dc = 0.3 + 0.8 * (load + 0.03 * (tooth_force - load)) + ripple + rng.normal(0, 0.012, n)

    # Vibration: tooth passing and its (aliased) harmonics, runout, structural modes, noise.
    vib = []
    for harmonics, mode_hz, imbalance in VIB_SENSORS:
        teeth = sum(
            h * np.sin(i * tooth + rng.uniform(0, 2 * np.pi)) for i, h in enumerate(harmonics, 1)
        )
        modes = _resonance(rng, n, mode_hz * rng.uniform(0.97, 1.03), 12.0, fs)
        vib.append(
            0.11 * tooth_force * teeth / 1.3
            + 0.05 * load * (1 + VIB_WEAR * w**2) * modes
            + imbalance * np.sin(theta)  # the spindle's own imbalance, also in the air
            + rng.normal(0, 0.012, n)
        )

    # Acoustic emission, RMS-like: a level that grows with load, plus bursts (chip breakage,
    # micro-chipping) that come more often as the edge wears; multiplicative noise keeps it > 0.
    rate = BURST_RATE_HZ * engaged * (1 + BURST_WEAR * w**2)  # bursts per second
    events = rng.random(n) < rate / fs
    sizes = events * rng.lognormal(0.0, 0.5, n)
    bursts = lfilter([1.0], [1.0, -math.exp(-1 / (0.03 * fs))], sizes)
    pulse = 1 + 0.1 * np.maximum(np.sin(tooth), 0)  # each insert's engagement
    ae = []
    for base, level, burst in ((0.06, 0.22, 0.10), (0.08, 0.30, 0.07)):  # table, spindle
        cut_level = level * load**0.8 * (1 + AE_LEVEL_WEAR * w) * pulse
        noise = lfilter([0.3], [1.0, -0.7], rng.standard_normal(n))
        ae.append((base + cut_level + burst * force * bursts) * np.exp(0.08 * noise))

    signals = np.stack([smc_ac, smc_dc, vib[0], vib[1], ae[0], ae[1]], axis=1)
    signals = signals * gain + offset

    exit_ = int(round(tl.exit * fs))
    stable = (int(math.ceil(tl.steady * fs)), min(exit_, n))
    return signals, (int(round(tl.entry * fs)), stable, exit_ if exit_ < n else None)


# --- corruption -----------------------------------------------------------------------------------


def _corrupt(signals: np.ndarray, kind: str, rng: np.random.Generator, fs: float) -> str:
    """Corrupt one channel of ``signals`` in place the way acquisition fails; says what it did."""
    j = int(rng.integers(len(CHANNELS)))
    name = CHANNELS[j]
    n = signals.shape[0]
    if kind == "flatline":  # sensor unplugged: the ADC reads one value throughout
        signals[:, j] = round(float(signals[0, j]), 3)
        return f"flatline: {name} constant over the whole cut"
    length = int(rng.uniform(2.0, 6.0) * fs)
    start = int(rng.integers(int(2 * fs), n - length))
    if kind == "dropout":  # the channel drops out and the acquisition holds its last value
        signals[start : start + length, j] = signals[start - 1, j]
        return f"dropout: {name} held for {length / fs:.1f} s from sample {start}"
    signals[start : start + length, j] = np.nan  # lost samples written as NaN
    return f"nonfinite: {name} NaN for {length / fs:.1f} s from sample {start}"


def _corrupt_positions(keys: list[tuple[int, int]], n_corrupt: int, seed: int) -> list[int]:
    """Record positions to corrupt: the real archive's two first, then others drawn at random."""
    chosen = [keys.index(k) for k in CORRUPT_CUTS if k in keys][:n_corrupt]
    rest = [i for i in range(len(keys)) if i not in chosen]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    extra = rng.choice(rest, size=max(n_corrupt - len(chosen), 0), replace=False)
    return chosen + sorted(int(i) for i in extra)


# --- the archive ----------------------------------------------------------------------------------


def synthesize(
    seed: int = 0,
    cases: Sequence[int] | None = None,
    max_runs: int | None = None,
    n_samples: int = 9000,
    n_corrupt: int | None = None,
) -> SyntheticArchive:
    """A synthetic archive: records for :func:`~edge_monitor.archive.mill.write_archive` and their truth.

    ``cases`` limits it to some cases, ``max_runs`` to that many runs per case (first, last and
    spread between, so wear still spans each case). ``n_corrupt`` defaults to 2 for the full
    archive (the first runs of cases 2 and 12, like the real one) and 0 otherwise.
    """
    if n_samples < MIN_SAMPLES:
        raise ValueError(
            f"n_samples must be at least {MIN_SAMPLES} (18 s at 250 Hz), got {n_samples}"
        )
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"max_runs must be at least 1, got {max_runs}")
    specs = [case_spec(c) for c in sorted(set(cases))] if cases is not None else list(CASES)
    full = cases is None and max_runs is None
    fs = SAMPLE_RATE_HZ

    records: list[dict] = []
    timelines: list[tuple] = []
    keys: list[tuple[int, int]] = []
    vbs: list[float] = []
    for spec in specs:
        tool = _tool(spec, seed)
        for run in select_runs(spec.runs, max_runs):
            signals, timeline = _cut(spec, tool, int(run), seed, n_samples, fs)
            i = run - 1
            record = {
                "case": spec.case,
                "run": int(run),
                "VB": float(tool.vb[i]) if tool.measured[i] else math.nan,
                "time": float(tool.time[i]),
                "DOC": spec.doc,
                "feed": spec.feed,
                "material": spec.material,
            }
            record.update({name: signals[:, j] for j, name in enumerate(CHANNELS)})
            records.append(record)
            timelines.append(timeline)
            keys.append((spec.case, int(run)))
            vbs.append(float(tool.vb[i]))

    n_corrupt = (2 if full else 0) if n_corrupt is None else n_corrupt
    if not 0 <= n_corrupt <= len(records):
        raise ValueError(
            f"n_corrupt must be between 0 and {len(records)} (the cuts), got {n_corrupt}"
        )
    corrupt: dict[int, str] = {}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    for k, pos in enumerate(_corrupt_positions(keys, n_corrupt, seed)):
        signals = np.stack([records[pos][name] for name in CHANNELS], axis=1)
        corrupt[pos] = _corrupt(signals, CORRUPTION_KINDS[k % len(CORRUPTION_KINDS)], rng, fs)
        records[pos].update({name: signals[:, j] for j, name in enumerate(CHANNELS)})

    truth = [
        CutTruth(i, case, run, vb, entry, stable, exit_, corrupt.get(i))
        for i, ((case, run), vb, (entry, stable, exit_)) in enumerate(zip(keys, vbs, timelines))
    ]
    return SyntheticArchive(records, truth)


def write_synthetic(path: str | os.PathLike[str], seed: int = 0, **kwargs) -> SyntheticArchive:
    """Write a synthetic archive to ``path`` (MAT v5) and its truth to ``<path>.truth.json``."""
    synthetic = synthesize(seed=seed, **kwargs)
    n_samples = len(synthetic.records[0][CHANNELS[0]])
    write_archive(path, synthetic.records)
    header = {
        "archive": Path(path).name,
        "seed": seed,
        "options": kwargs,
        "n_samples": n_samples,
        "sample_rate_hz": SAMPLE_RATE_HZ,
    }
    # One line per cut: the sidecar stays readable and diffable.
    cuts = ",\n".join(json.dumps(t.to_dict()) for t in synthetic.truth)
    text = json.dumps(header, default=_jsonable)[:-1] + ', "cuts": [\n' + cuts + "\n]}\n"
    truth_path(path).write_text(text)
    return synthetic


def _jsonable(value):
    """numpy values in the options (``cases=np.array([...])``) as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"option value {value!r} cannot be written to the truth sidecar")
