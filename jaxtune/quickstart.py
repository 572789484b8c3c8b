"""``jaxtune quickstart``: the main job on the embedded default, end to end on a CPU in minutes.

It writes the generated ten-ability corpus (:mod:`jaxtune.demo.abilities`) in the DoIT layout, then runs the
study's grid in miniature (:mod:`jaxtune.sweep`): a tiny LLaMA (``jaxtune/demo/quickstart.yaml``) fine-tuned at
several curated data volumes, each run scored per ability with the DoIT scorers, and the growth curves drawn.
Rerunning continues where it stopped: finished runs and evaluations are reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from jaxtune.config import load_config
from jaxtune.demo.abilities import write_demo_dataset
from jaxtune.paths import local_path
from jaxtune.sweep import SweepOutputs, sweep

DEMO_DIR = Path(__file__).resolve().parent / "demo"
QUICKSTART_CONFIG = DEMO_DIR / "quickstart.yaml"
DEMO_TOKENIZER = DEMO_DIR / "tokenizer"


def quickstart(
    out: str | Path = "runs/quickstart",
    overrides: Sequence[str] = (),
    selections: str | Sequence[str] = "curated-10,curated-40,curated-160,curated-640,curated-2560",
    *,
    print_fn: Callable[[str], None] = print,
) -> SweepOutputs:
    """Generate the demo corpus under ``out/data``, train and evaluate one tiny model per selection under
    ``out/runs``, and write the report (per-ability table, growth curves) under ``out/runs/report``."""
    out = Path(local_path(out))  # the demo corpus is written locally (jaxtune sweep takes gs:// run directories)
    data_dir = out / "data"
    if not (data_dir / "curated").is_dir():
        print_fn(f"writing the generated ten-ability corpus to {data_dir}")
        write_demo_dataset(data_dir)
    defaults = [
        f"run_dir={out / 'runs'}",
        f"data.path={data_dir}",
        f"data.valid_path={data_dir / 'curated' / 'valid'}",
        f"data.tokenizer={DEMO_TOKENIZER}",
        f"eval.data_dir={data_dir}",
    ]
    cfg = load_config(QUICKSTART_CONFIG, [*defaults, *overrides])
    if isinstance(selections, str):
        selections = [s for s in selections.split(",") if s]
    outputs = sweep(cfg, selections, print_fn=print_fn)
    return outputs
