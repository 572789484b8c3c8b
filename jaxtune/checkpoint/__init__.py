"""Checkpoints on Orbax: train state + data iterator, params-only and epoch checkpoints."""
