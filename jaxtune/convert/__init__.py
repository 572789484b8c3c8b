"""Conversion between Hugging Face LLaMA folders and jaxtune checkpoints (see :mod:`jaxtune.convert.hf`)."""
