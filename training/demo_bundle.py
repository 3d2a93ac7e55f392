"""The demo's model bundle: the one the project ships, when the demo replays the synthetic archive
it was trained on; a quick fit otherwise (the real ``mill.mat``, another seed).

``deploy/demo-bundle/`` is a quick-preset bundle trained on ``python -m training synth`` (seed 0),
so that ``make demo`` shows the product within two minutes instead of training first.
``make demo-bundle`` trains it again; ``tests/test_demo_bundle.py`` fails when the code would
score with it otherwise than its exported graph does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from edge_monitor.archive.truth import truth_path

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "demo-bundle"
SHIPPED_SEED = 0  # what `make demo-bundle` trains on: `python -m training synth` with no options


def shipped_fits(archive: Path) -> str | None:
    """Why the shipped bundle is not for ``archive``, or None when it was trained on an archive
    like it: the synthetic archive of the same seed and options. Not by the file's hash: the
    generator's sines and exponentials may round differently on another CPU, and the demo does not
    need the same last bits (``training evaluate`` then scores every window, and says so)."""
    sidecar = truth_path(archive)
    if not sidecar.exists():
        return f"{archive} is not the synthetic archive (no {sidecar.name} beside it)"
    try:
        header = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        return f"{sidecar} cannot be read ({exc})"
    if header.get("seed") != SHIPPED_SEED or header.get("options"):
        return (f"{archive} is a synthetic archive of seed {header.get('seed')} and options {header.get('options') or {}}, "
                f"the shipped bundle's is seed {SHIPPED_SEED} with none")
    return None


def provide(archive: Path, out: Path, shipped: Path = SHIPPED) -> Path:
    """A bundle for the demo at ``out``: kept if there, else the shipped one copied, else fitted."""
    if (out / "bundle.json").exists():
        print(f"demo bundle: {out} (there already; remove it to get the shipped one or a new fit)", flush=True)
        return out
    if out.exists() and any(out.iterdir()):
        # not a bundle (a fit stopped half-way, something else): nothing here decides what to do with it
        raise SystemExit(f"demo bundle: {out} holds files but no bundle.json; remove it (or move it away) "
                         "and run make demo again")
    why = shipped_fits(archive) if (shipped / "bundle.json").exists() else f"no shipped bundle in {shipped}"
    if why is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            shutil.copytree(shipped, tmp / "bundle")
            if out.exists():
                out.rmdir()  # empty (checked above)
            (tmp / "bundle").replace(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"demo bundle: the shipped one ({shipped.name}, trained on the synthetic archive, seed {SHIPPED_SEED}) "
              f"copied to {out}; `make demo-bundle` trains it again here (3-7 minutes)", flush=True)
        return out
    print(f"demo bundle: fitting a quick model into {out}, 3-7 minutes on 2 cores: {why}", flush=True)
    from .fit import fit

    fit(archive, out, preset="quick")
    return out
