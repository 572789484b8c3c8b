"""One file per model family, each registering everything family-specific (see :mod:`jaxtune.families.registry`)."""
