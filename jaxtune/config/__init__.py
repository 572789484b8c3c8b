"""The run configuration: the typed, documented sections and their rules (schema.py), reading YAML files and
``key=value`` overrides into them (loading.py), and the named model shapes as plain data (presets.py)."""
