"""The config: the typed, documented schema (schema.py), loading (YAML, overrides) and the named model shapes (presets.py)."""
