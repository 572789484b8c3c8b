"""A tiny training run over the generated demo corpus, as the end-to-end tests start it: the demo data written under
a folder, the bundled demo tokenizer, a 1,004-token LLaMA small enough for a CPU, and the DoIT template."""

from __future__ import annotations

from pathlib import Path

from jaxtune.demo import DEMO_TOKENIZER
from jaxtune.demo.abilities import write_demo_dataset

TINY_DEMO_MODEL = dict(
    vocab_size=1004, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, max_position_embeddings=256
)
"""The model section: the demo tokenizer's 1,000 pieces and the DoIT template's 4 added tokens."""


def demo_run_config(
    root: Path, *, eval_per_ability: int = 2, model: dict | None = None, data: dict | None = None, **sections
) -> dict:
    """Write the demo corpus (4 records per ability, 10 synthetic) under ``root/data`` and return the config dict
    of a run in ``root/run`` on its curated-40 selection, rows of 64 tokens; ``model`` and ``data`` update those
    sections, ``sections`` add the others (train, optim, checkpoint, mesh)."""
    data_root = write_demo_dataset(root / "data", per_ability=4, eval_per_ability=eval_per_ability, synthetic=10)
    return {
        "run_dir": str(root / "run"),
        "model": {**TINY_DEMO_MODEL, **(model or {})},
        "data": {
            "format": "doit",
            "path": str(data_root),
            "tokenizer": str(DEMO_TOKENIZER),
            "template": "doit",
            "max_len": 64,
            "selection": "curated-40",
            **(data or {}),
        },
        **sections,
    }
