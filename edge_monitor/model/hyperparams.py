"""The β-VAE's hyperparameters (:mod:`.vae` builds the model from them). A module of their own, without
Keras: ``bundle.json`` records them, and its metadata is read without TensorFlow (:mod:`.meta`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.spec import Spec, setting


@dataclass(frozen=True)
class VAEHyperParams(Spec):
    """Numpy scalars (random search) and lists (JSON) become plain ints, floats and tuples."""

    section = "hyperparams"
    beta: float = setting(2.0, low=0.0)
    codings: int = setting(16, low=1)
    tcn_layers: int = setting(2, low=1)
    filters: int = setting(32, low=1)
    kernel_size: int = setting(4, low=1)
    dilations: tuple[int, ...] = setting((1, 2, 4), low=1)
    learning_rate: float = setting(1e-3, above=0.0)
