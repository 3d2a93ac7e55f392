"""A model bundle's metadata without TensorFlow: ``bundle.json``, its validation and the content-hash
model id (:mod:`.bundle` has the layout and the rules; it saves and loads whole bundles).

Nothing here imports TensorFlow or Keras, so that ``edge-monitor check --no-model`` (the service
unit's ``ExecStartPre``) validates a bundle in a fraction of a second: the metadata through the one
validator (``core/spec.py``), both files present, and the model id recomputed over them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..core.alarm import Thresholds
from ..core.calibration import ScoreCalibration
from ..core.channels import CHANNELS
from ..core.spec import Spec, SpecError, from_mapping, parse_field, setting
from ..core.stable_region import StableRegionSpec
from ..core.windowing import WindowSpec
from .hyperparams import VAEHyperParams
from .scaling import MinMaxScaler

# 2: stable_region.lookahead (format 1 had none: its look-ahead was the half width); 3: serving, the
# scoring graph exported for runtimes without TensorFlow (formats 1 and 2 have none); 4:
# thresholds.operating, the operating point's stated rule (an older monitor would refuse the key
# without saying why: it says "upgrade" for a newer format)
BUNDLE_FORMAT = 4
MODEL_FILE = "model.keras"
META_FILE = "bundle.json"
ONNX_FILE = "scoring.onnx"
#: What an exported scoring graph may differ from TensorFlow's, relative, in every output of every
#: window checked. Measured (quick model, 4,096 held-out windows): ONNX Runtime within 4e-6 in the
#: recon and kl scores and 2.6e-5 in the per-channel errors, where a squared difference of nearly
#: equal numbers amplifies the last bits; TensorFlow itself differs by 9e-7, 2e-7 and 4e-6 between
#: two batch sizes. An export with wrong weights differs by order 1.
PARITY_TOLERANCE = 1e-4
#: The smallest magnitude a relative difference is taken against (a KL near 0).
PARITY_FLOOR = 1e-6
#: The scoring graph's outputs, as WindowScores names them.
SCORE_OUTPUTS = ("recon", "kl", "channels")


class BundleError(ValueError):
    """The bundle cannot be used; the message names the bundle and the file or key to fix."""


@dataclass(frozen=True)
class ServingExport(Spec):
    """The scoring graph exported beside ``model.keras``, and the proof that it scores as TensorFlow
    does: on ``windows`` held-out windows, every output's largest absolute and relative difference
    (``parity``: output -> {"max_abs", "max_rel"}), at most ``tolerance`` relative."""

    section = "serving"
    opset: int = setting(low=1)
    windows: int = setting(low=1)
    parity: dict = setting(parse=lambda value, _: _parity(value))
    versions: dict
    format: str = setting("onnx", choices=("onnx",))
    file: str = setting(ONNX_FILE, parse=lambda value, _: _plain_name(value))
    tolerance: float = setting(PARITY_TOLERANCE, above=0.0)


def _plain_name(value) -> str:
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise ValueError(f"expected a file name inside the bundle, got {value!r}")
    return value


def _parity(value) -> dict:
    if not isinstance(value, dict) or set(value) != set(SCORE_OUTPUTS):
        raise ValueError(f"expected the outputs {', '.join(SCORE_OUTPUTS)}, got {value!r}")
    for name, diff in value.items():
        if not (isinstance(diff, dict) and set(diff) == {"max_abs", "max_rel"}
                and all(isinstance(v, (int, float)) and v >= 0 for v in diff.values())):
            raise ValueError(f"{name}: expected {{'max_abs': number >= 0, 'max_rel': number >= 0}}, got {diff!r}")
    return value


@dataclass
class BundleMeta:
    """The content of ``bundle.json``; every key is required."""

    model_id: str
    channels: tuple[str, ...]
    window: WindowSpec
    stable_region: StableRegionSpec
    scaler: MinMaxScaler = setting(parse=lambda value, _: MinMaxScaler.from_dict(value))
    calibration: ScoreCalibration = setting(parse=lambda value, _: ScoreCalibration.from_dict(value))
    hyperparams: VAEHyperParams
    thresholds: Thresholds
    metrics: dict
    training: dict
    archive_sha256: str
    created: str
    versions: dict
    format: int = setting(BUNDLE_FORMAT, low=1)
    serving: ServingExport | None = None  # format 3: the exported scoring graph, if any

    def to_dict(self) -> dict:
        return {"format": self.format, "model_id": self.model_id, "created": self.created, **self._content()}

    def _content(self) -> dict:
        """Every field the model id covers (all but ``model_id`` and ``created``), as its format writes it."""
        stable_region = self.stable_region.to_dict()
        if self.format < 2:  # no look-ahead key: it was the half width (checked by _check_meta)
            del stable_region["lookahead"]
        return {
            "format": self.format,
            "channels": list(self.channels),
            "window": self.window.to_dict(),
            "stable_region": stable_region,
            "scaler": self.scaler.to_dict(),
            "calibration": self.calibration.to_dict(),
            "hyperparams": self.hyperparams.to_dict(),
            "thresholds": self.thresholds.to_dict(),
            "metrics": self.metrics,
            "training": self.training,
            "archive_sha256": self.archive_sha256,
            "versions": self.versions,
            **({"serving": self.serving.to_dict()} if self.format >= 3 and self.serving else {}),
        }


def windowing_of(meta: BundleMeta) -> dict:
    """How a bundle cuts windows: its channels, window and stable-region specs, as plain data. Open
    cuts windowed this way can be taken over by any model that shares it (a reload, and the state
    file's open cuts after a restart with another bundle)."""
    return {"channels": list(meta.channels), "window": meta.window.to_dict(),
            "stable_region": meta.stable_region.to_dict()}


def read_bundle_meta(path: str | Path) -> BundleMeta:
    """Read and validate ``bundle.json`` and check the model id against the files, without loading
    the model."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {path}: no such directory (train one with `python -m training fit`)")
    meta_file, model_file = path / META_FILE, path / MODEL_FILE
    if not meta_file.is_file():
        raise BundleError(f"bundle {path}: {META_FILE} is missing")
    try:
        data = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {path}: {META_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"bundle {path}: {META_FILE} must hold a JSON object")
    try:  # first: a newer format may differ in anything else
        fmt = parse_field(BundleMeta, "format", data.get("format"))
    except SpecError as exc:
        raise _invalid(path, exc) from None
    if fmt > BUNDLE_FORMAT:
        raise BundleError(
            f"bundle {path}: format {fmt} is newer than this edge_monitor {__version__} reads "
            f"(format {BUNDLE_FORMAT}); upgrade edge_monitor"
        )
    meta = _meta_from_dict(data, path)
    _check_meta(meta, path)
    if not model_file.is_file():
        raise BundleError(f"bundle {path}: {MODEL_FILE} is missing")
    files = [MODEL_FILE]
    if meta.serving is not None:
        files.append(meta.serving.file)
        if not (path / meta.serving.file).is_file():
            raise BundleError(
                f"bundle {path}: {meta.serving.file} is missing ({META_FILE} key 'serving' names it); "
                f"export it again with `python -m training export --bundle {path}`"
            )
    expected = _model_id(*((path / f).read_bytes() for f in files), meta=meta)
    if meta.model_id != expected:
        raise BundleError(
            f"bundle {path}: model_id {meta.model_id!r} in {META_FILE} does not match the content of "
            f"{', '.join(files)} and {META_FILE} (hash {expected!r}); the bundle was modified after saving: "
            "restore the saved files or train a new bundle"
        )
    return meta


def rewrite_meta(path: str | Path, meta: BundleMeta) -> BundleMeta:
    """Write ``meta`` as the bundle's ``bundle.json`` with the model id over its files and the new
    content (e.g. thresholds moved by ``python -m training thresholds``): the model files stay, the
    JSON file is replaced atomically, so a reader sees the old bundle or the new one."""
    path = Path(path)
    meta.format = format_holding(meta)
    _check_meta(meta, path)
    files = [MODEL_FILE] + ([meta.serving.file] if meta.serving else [])
    meta.model_id = _model_id(*((path / f).read_bytes() for f in files), meta=meta)
    tmp = path / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta.to_dict(), indent=2, allow_nan=False) + "\n")
    tmp.chmod(0o644)
    tmp.replace(path / META_FILE)
    return meta


def format_holding(meta: BundleMeta) -> int:
    """The oldest format that holds ``meta``'s content from its own format on: 4 once it has an
    operating point (``thresholds.operating``), so that a monitor of the previous release still
    reads a bundle without one and says "upgrade" for one with it."""
    return max(meta.format, 4) if meta.thresholds.operating is not None else meta.format


def scoring_id(meta: BundleMeta, path: str | Path) -> str:
    """What makes a bundle's scores, hashed: its model files and everything in ``bundle.json`` that
    shapes a score (not its thresholds, metrics or training record). Two bundles with the same
    scoring id judge every cut by the same figures, so a machine's alarm history and reference
    carry over from one to the other (thresholds moved without training)."""
    path = Path(path)
    digest = hashlib.sha256()
    for f in [MODEL_FILE] + ([meta.serving.file] if meta.serving else []):
        digest.update((path / f).read_bytes())
    content = meta._content()
    digest.update(_canonical({k: content[k] for k in ("channels", "window", "stable_region", "scaler",
                                                      "calibration", "hyperparams")}
                             | {"score": meta.thresholds.score}))
    return digest.hexdigest()[:16]


def check_keras(meta: BundleMeta, path: Path) -> None:
    """``model.keras`` can be loaded by the installed Keras (its major version): for TensorFlow
    serving and training only, which need it."""
    saved_major = str(meta.versions.get("keras", "")).split(".")[0]
    try:
        installed = metadata.version("keras")  # what `import keras` would load, without loading it
    except metadata.PackageNotFoundError:
        raise BundleError(f"bundle {path}: {MODEL_FILE} needs Keras, which is not installed "
                          "(pip install 'edge-monitor[training]')") from None
    if saved_major and saved_major != installed.split(".")[0]:
        raise BundleError(
            f"bundle {path}: {MODEL_FILE} was saved with Keras {meta.versions['keras']} but this is "
            f"Keras {installed}; retrain or install a matching Keras major version"
        )


def _check_meta(meta: BundleMeta, path: Path) -> None:
    region = meta.stable_region
    if meta.format < 2 and region.lookahead != region.half_width:
        raise BundleError(
            f"bundle {path}: format {meta.format} has no 'stable_region' key 'lookahead' (it is the half width, "
            f"{region.half_width}), but the look-ahead is {region.lookahead}"
        )
    if meta.channels != CHANNELS:
        raise BundleError(
            f"bundle {path}: {META_FILE} key 'channels' is {list(meta.channels)}; "
            f"edge_monitor expects exactly {list(CHANNELS)} in this order"
        )
    n = len(meta.channels)
    if len(meta.scaler.minimum) != n:
        raise BundleError(
            f"bundle {path}: {META_FILE} key 'scaler' has {len(meta.scaler.minimum)} channels, expected {n}"
        )
    if meta.serving is not None and meta.format < 3:
        raise BundleError(f"bundle {path}: format {meta.format} has no key 'serving' (format 3 added it)")
    if meta.thresholds.operating is not None and meta.format < 4:
        raise BundleError(f"bundle {path}: format {meta.format} has no key 'thresholds.operating' (format 4 added it)")


def _meta_from_dict(data: dict, path: Path) -> BundleMeta:
    try:
        return from_mapping(BundleMeta, _as_current(data), required=True)
    except SpecError as exc:
        raise _invalid(path, exc) from exc


def _as_current(data: dict) -> dict:
    """``bundle.json`` of an older format with the keys the current format added, as they were then."""
    if "serving" not in data:  # none exported (every bundle before format 3)
        data = {**data, "serving": None}
    thresholds = data.get("thresholds")
    if isinstance(thresholds, dict) and "operating" not in thresholds:  # chosen by no stated rule (before it)
        data = {**data, "thresholds": {**thresholds, "operating": None}}
    region = data.get("stable_region")
    if data.get("format") == 1 and isinstance(region, dict) and "lookahead" not in region and "half_width" in region:
        data = {**data, "stable_region": {**region, "lookahead": region["half_width"]}}
    return data


def _invalid(path: Path, exc: SpecError) -> BundleError:
    if not exc.key:  # the file as a whole, e.g. a key is missing
        return BundleError(f"bundle {path}: {META_FILE} {exc.problem}")
    return BundleError(f"bundle {path}: {META_FILE} key {exc.top_key!r} is invalid ({exc})")


def _canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _model_id(*files: bytes, meta: BundleMeta) -> str:
    """Over ``model.keras`` and the exported graph (if any), then ``bundle.json``'s content."""
    digest = hashlib.sha256()
    for data in files:
        digest.update(data)
    digest.update(_canonical(meta._content()))
    return digest.hexdigest()[:16]
