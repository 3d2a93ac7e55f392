"""The six signal channels of the milling archive, in the one order used everywhere.

Windows, scalers, model inputs, wire messages and bundles all index channels by this order.
"""

from __future__ import annotations

CHANNELS: tuple[str, ...] = (
    "smcAC",  # spindle motor current, AC
    "smcDC",  # spindle motor current, DC
    "vib_table",
    "vib_spindle",
    "AE_table",
    "AE_spindle",
)

#: Scalar fields of each archive record, in the archive's own order.
SCALAR_FIELDS: tuple[str, ...] = ("case", "run", "VB", "time", "DOC", "feed", "material")

#: Sampling rate of the archive's signals, Hz.
SAMPLE_RATE_HZ = 250.0

#: Material codes of the archive.
MATERIALS: dict[int, str] = {1: "cast_iron", 2: "steel"}


def channel_index(name: str) -> int:
    """Position of ``name`` in :data:`CHANNELS`; a clear error for anything else."""
    try:
        return CHANNELS.index(name)
    except ValueError:
        raise ValueError(f"unknown channel {name!r}; expected one of {', '.join(CHANNELS)}") from None
