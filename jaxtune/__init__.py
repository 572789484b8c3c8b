"""jaxtune: instruction-tuning research on JAX (DoIT and BELLE reproduced TPU-natively)."""

__version__ = "0.1.0"
