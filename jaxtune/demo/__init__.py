"""The quickstart's bundled material: the generated ability corpus (abilities.py, ceval_ood.py), the DoIT record
writer (records.py), the demo SentencePiece tokenizer folder (``tokenizer/``, made by scripts/make_demo_tokenizer.py)
and the quickstart's config and sweep files (quickstart.yaml, sweep.yaml)."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_TOKENIZER = DEMO_DIR / "tokenizer"
"""The demo tokenizer folder: ``tokenizer.model`` (1,000 pieces; the DoIT template adds 4 tokens: 1,004 ids)."""
