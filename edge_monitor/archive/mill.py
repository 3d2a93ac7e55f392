"""Reading and writing the UC Berkeley milling archive layout (``mill.mat``).

The archive is a MATLAB struct array ``mill`` of shape (1, n); each element is one cut with
the scalar fields ``case, run, VB, time, DOC, feed, material`` (each a (1, 1) array, VB NaN where
wear was not measured) and the six signals of :data:`~edge_monitor.core.channels.CHANNELS`, each an
(n_samples, 1) column sampled at 250 Hz.

:func:`read_archive` turns the file into typed :class:`Cut` records. Structural problems that make
the file unusable raise :class:`ArchiveError` naming the file, the cut and the field. Cuts whose
signals are corrupt (wrong length, flatlined or dropped-out channels, non-finite values) are not
errors: they are dropped and reported in :attr:`Archive.dropped` with their reason.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..core.channels import CHANNELS, MATERIALS, SCALAR_FIELDS
from .cut_quality import find_corruption

ARCHIVE_VARIABLE = "mill"


class ArchiveError(ValueError):
    """The archive file cannot be used; the message names the file, and the cut and field if any."""


@dataclass(frozen=True)
class Cut:
    """One cut ("run") of the archive."""

    index: int  # 0-based position in the archive's struct array
    case: int
    run: int
    vb: float  # flank wear measured after the run, mm; NaN where not measured
    time: float
    doc: float  # depth of cut, mm
    feed: float  # mm/rev
    material: int  # 1 cast iron, 2 steel
    signals: np.ndarray = field(repr=False)  # (n_samples, 6) float64, CHANNELS order

    @property
    def cut_id(self) -> str:
        """Stable identifier: case and run, e.g. ``c13-r04``."""
        return f"c{self.case:02d}-r{self.run:02d}"

    @property
    def material_name(self) -> str:
        return MATERIALS.get(self.material, f"material_{self.material}")

    @property
    def n_samples(self) -> int:
        return int(self.signals.shape[0])

    def describe(self) -> str:
        return f"cut {self.index} (case {self.case}, run {self.run})"


@dataclass(frozen=True)
class DroppedCut:
    """A cut left out of the usable archive, and why."""

    index: int
    case: int
    run: int
    reason: str

    def __str__(self) -> str:
        return f"cut {self.index} (case {self.case}, run {self.run}): {self.reason}"


@dataclass(frozen=True)
class Archive:
    path: Path
    sha256: str
    cuts: tuple[Cut, ...]
    dropped: tuple[DroppedCut, ...]
    n_samples: int  # the archive's cut length (the common length of its signals)

    def __len__(self) -> int:
        return len(self.cuts)

    def by_case(self) -> dict[int, list[Cut]]:
        out: dict[int, list[Cut]] = {}
        for cut in self.cuts:
            out.setdefault(cut.case, []).append(cut)
        for runs in out.values():
            runs.sort(key=lambda c: c.run)
        return out


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scipy_io():
    """SciPy's MAT-file reader: the ``replay`` extra, not on an edge box that only serves."""
    try:
        import scipy.io
    except ImportError:
        raise ArchiveError("reading and writing mill.mat needs SciPy: pip install 'edge-monitor[replay]'") from None
    return scipy.io


def _load_struct(path: Path) -> np.ndarray:
    if not path.exists():
        raise ArchiveError(f"{path}: archive not found (give --archive the path of mill.mat)")
    if path.is_dir():
        raise ArchiveError(f"{path}: is a directory, expected the archive file mill.mat")
    scipy_io = _scipy_io()
    try:
        contents = scipy_io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise ArchiveError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save it with save(..., '-v7')"
        ) from exc
    except Exception as exc:  # scipy raises several types for garbage input
        raise ArchiveError(f"{path}: not a MATLAB MAT file ({exc})") from exc
    if ARCHIVE_VARIABLE not in contents:
        found = ", ".join(k for k in contents if not k.startswith("__")) or "none"
        raise ArchiveError(
            f"{path}: no variable {ARCHIVE_VARIABLE!r} in the MAT file (variables found: {found})"
        )
    mill = contents[ARCHIVE_VARIABLE]
    if not isinstance(mill, np.ndarray) or mill.dtype.names is None:
        raise ArchiveError(f"{path}: variable {ARCHIVE_VARIABLE!r} is not a struct array")
    missing = [f for f in (*SCALAR_FIELDS, *CHANNELS) if f not in mill.dtype.names]
    if missing:
        raise ArchiveError(
            f"{path}: struct {ARCHIVE_VARIABLE!r} is missing field(s) {', '.join(missing)}"
        )
    return mill.reshape(-1)


def _scalar(path: Path, index: int, record: np.void, name: str) -> float:
    value = np.asarray(record[name])
    if value.size != 1 or value.dtype.kind not in "biuf":
        raise ArchiveError(
            f"{path}: cut {index}: field {name!r} should be a (1, 1) number, "
            f"got shape {value.shape} of {value.dtype}"
        )
    return float(value.reshape(()))


def read_archive(path: str | os.PathLike[str]) -> Archive:
    """Read ``mill.mat``; corrupt cuts are dropped and listed in ``Archive.dropped``."""
    path = Path(path)
    mill = _load_struct(path)
    if mill.size == 0:
        raise ArchiveError(f"{path}: struct {ARCHIVE_VARIABLE!r} holds no cuts")

    parsed: list[tuple[int, dict[str, float], list[np.ndarray]]] = []
    for index, record in enumerate(mill):
        scalars = {name: _scalar(path, index, record, name) for name in SCALAR_FIELDS}
        columns = []
        for name in CHANNELS:
            column = np.asarray(record[name])
            if column.dtype.kind not in "biuf":
                raise ArchiveError(
                    f"{path}: cut {index} (case {scalars['case']:g}, run {scalars['run']:g}): "
                    f"signal field {name!r} is not numeric (dtype {column.dtype})"
                )
            if column.ndim > 2 or (column.ndim == 2 and min(column.shape) > 1):
                raise ArchiveError(
                    f"{path}: cut {index} (case {scalars['case']:g}, run {scalars['run']:g}): "
                    f"signal field {name!r} should be a column (n, 1), got shape {column.shape}"
                )
            columns.append(column.reshape(-1).astype(np.float64))
        parsed.append((index, scalars, columns))

    # The archive's cut length is the length most signals have (9000 in the real file); a signal of
    # any other length makes its cut corrupt, reported with the field named.
    lengths = Counter(len(col) for _, _, cols in parsed for col in cols)
    n_samples = lengths.most_common(1)[0][0]

    cuts: list[Cut] = []
    dropped: list[DroppedCut] = []
    for index, s, columns in parsed:
        case, run = int(s["case"]), int(s["run"])
        reason = None
        for name, col in zip(CHANNELS, columns):
            if len(col) != n_samples:
                reason = f"{path.name}: field {name!r} has {len(col)} samples, expected {n_samples}"
                break
        if reason is None:
            signals = np.stack(columns, axis=1)
            problem = find_corruption(signals)
            if problem is not None:
                reason = f"{path.name}: {problem}"
        if reason is not None:
            dropped.append(DroppedCut(index, case, run, reason))
            continue
        cuts.append(
            Cut(
                index=index,
                case=case,
                run=run,
                vb=s["VB"],
                time=s["time"],
                doc=s["DOC"],
                feed=s["feed"],
                material=int(s["material"]),
                signals=signals,
            )
        )
    if not cuts:
        raise ArchiveError(f"{path}: every cut is corrupt; first reason: {dropped[0].reason}")
    return Archive(path, file_sha256(path), tuple(cuts), tuple(dropped), n_samples)


MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, written by edge-monitor".ljust(116)


def write_archive(path: str | os.PathLike[str], records: Iterable[dict]) -> Path:
    """Write records in the ``mill.mat`` layout.

    Each record is a mapping with the scalar fields (``case, run, VB, time, DOC, feed, material``)
    and the six channel names, each a 1-D signal. Written as MAT v5, like the real archive.
    """
    records = list(records)
    names = (*SCALAR_FIELDS, *CHANNELS)
    mill = np.empty((1, len(records)), dtype=[(n, object) for n in names])
    for i, rec in enumerate(records):
        for n in SCALAR_FIELDS:
            mill[0, i][n] = np.array([[float(rec[n])]])
        for n in CHANNELS:
            mill[0, i][n] = np.asarray(rec[n], dtype=np.float64).reshape(-1, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        _scipy_io().savemat(fh, {ARCHIVE_VARIABLE: mill}, do_compression=False)
        # SciPy writes the time into the file's 116-byte text header: a fixed text instead, so that
        # the same records make the same file, byte for byte (and the same hash in a bundle)
        fh.seek(0)
        fh.write(MAT_HEADER_TEXT)
    os.replace(tmp, path)
    return path


def records_from_cuts(cuts: Sequence[Cut]) -> list[dict]:
    """The writer's record mappings for typed cuts (round trip helper for tests and tools)."""
    out = []
    for c in cuts:
        rec: dict = {
            "case": c.case, "run": c.run, "VB": c.vb, "time": c.time,
            "DOC": c.doc, "feed": c.feed, "material": c.material,
        }
        for j, name in enumerate(CHANNELS):
            rec[name] = c.signals[:, j]
        out.append(rec)
    return out
