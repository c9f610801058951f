"""The run layer: between Hydra and the engine.

Light on purpose: ``ssl4gie/__init__.py`` imports :mod:`ssl4gie.run.resolvers` in every process that resolves a
config (no torch here); the modules that build and train import torch themselves.
"""
