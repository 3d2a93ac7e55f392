"""Training, search and evaluation of the β-VAE tool-wear models on the milling archive.

Imports ``edge_monitor`` for everything the live daemon also does (archive reading, stable-region
detection, windowing, scaling, the model and its bundle); never the other way round.
"""
