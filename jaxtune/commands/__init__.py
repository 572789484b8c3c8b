"""Command modules: each registers its own sub-parser and calls one plain function."""
