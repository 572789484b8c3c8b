"""``jaxtune quickstart``: the DoIT study's grid in miniature, end to end on a CPU in minutes.

It writes the generated ten-ability corpus (:mod:`jaxtune.demo.abilities`: curated abilities and a "synthetic"
general-instruction file) and a generated C-Eval-format out-of-domain suite (:mod:`jaxtune.demo.ceval_ood`) under
``out/data``, then runs the grid of ``jaxtune/demo/sweep.yaml`` (:mod:`jaxtune.study.grid`): two tiny LLaMA sizes x
curated and synthetic data at several volumes, each run scored per ability and on the OOD suite, and the report
drawn under ``out/runs/report`` (curated solid, synthetic dashed, one colour per size). It then prints the study's
three findings with their numbers and chooses a data budget from the curves, trained when it leaves the uniform
counts (:mod:`jaxtune.commands.quickstart_findings`). It ends by exporting the run
with the best overall ability score to a Hugging Face folder ``out/hf`` and printing the transformers code that
loads it. Rerunning continues where it stopped: finished runs and evaluations are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtune.commands.arguments import add_command
from jaxtune.demo import DEMO_DIR, DEMO_TOKENIZER
from jaxtune.demo.abilities import write_demo_dataset
from jaxtune.demo.ceval_ood import write_demo_ceval
from jaxtune.paths import local_path
from jaxtune.results import find_summaries, read_summary

if TYPE_CHECKING:
    from jaxtune.commands.quickstart_findings import FindingsOutputs
    from jaxtune.study.grid import GridOutputs

QUICKSTART_SWEEP = DEMO_DIR / "sweep.yaml"
BEST_OF = "doit-test"
"""The summary stem whose overall score picks the checkpoint the quickstart exports."""


@dataclass
class QuickstartOutputs:
    grid: GridOutputs
    best_checkpoint: Path
    best_label: str
    hf_dir: Path
    findings: FindingsOutputs | None = None

    def summary(self) -> str:
        return "\n".join(
            [
                self.grid.summary(),
                "",
                *([self.findings.text, ""] if self.findings else []),
                f"best run: {self.best_label}; exported {self.best_checkpoint} to the Hugging Face folder {self.hf_dir}",
                "load it with transformers:",
                "    from transformers import AutoModelForCausalLM",
                f"    model = AutoModelForCausalLM.from_pretrained({str(self.hf_dir)!r})",
            ]
        )


def best_checkpoint(eval_dirs: Sequence[Path], stem: str = BEST_OF) -> tuple[Path, str]:
    """The checkpoint whose ``{stem}`` summary has the best overall score, and a label of its run."""
    best = None
    for path in find_summaries(eval_dirs):
        if not path.name.startswith(f"{stem}."):
            continue
        s = read_summary(path)
        if best is None or s.overall > best[0].overall:
            best = (s, path)
    if best is None or not best[0].run.checkpoint:
        raise FileNotFoundError(f"no {stem} summary with a checkpoint under {[str(d) for d in eval_dirs]}")
    s = best[0]
    return Path(s.run.checkpoint), f"{s.run.model_size} {s.run.run_name} (overall {s.overall:.1f})"


def quickstart(
    out: str | Path = "runs/quickstart",
    overrides: Sequence[str] = (),
    selections: str | Sequence[str] | None = None,
    *,
    print_fn: Callable[[str], None] = print,
) -> QuickstartOutputs:
    """Generate the demo data under ``out/data``, run the demo grid under ``out/runs`` (``selections``: its data
    types, default the sweep file's), export the best checkpoint to ``out/hf``; ``overrides`` apply to every run."""
    import jax

    from jaxtune.commands.quickstart_findings import findings_and_budget
    from jaxtune.convert.hf import export_hf
    from jaxtune.study.grid import load_grid, run_grid  # imported when run: the CLI imports this module to parse

    out = Path(local_path(out))  # the demo data is written locally (the runs could take gs:// directories)
    if not jax.config.jax_compilation_cache_dir:
        # The runs of one size compile the same evaluation programs: compile them once for the whole grid.
        jax.config.update("jax_compilation_cache_dir", str((out / "jax-cache").absolute()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    data_dir = out / "data"
    if not (data_dir / "curated").is_dir():
        print_fn(f"writing the generated ten-ability corpus to {data_dir}")
        write_demo_dataset(data_dir)
    if not (data_dir / "ceval").is_dir():
        print_fn(f"writing the generated C-Eval-format out-of-domain suite to {data_dir / 'ceval'}")
        write_demo_ceval(data_dir / "ceval")
    defaults = [
        f"data.path={data_dir}",
        f"data.tokenizer={DEMO_TOKENIZER}",
        f"eval.data_dir={data_dir}",
    ]
    spec = load_grid(QUICKSTART_SWEEP)
    if isinstance(selections, str):
        selections = [s for s in selections.split(",") if s]
    spec = dataclasses.replace(
        spec,
        run_dir=out / "runs",
        overrides=(*spec.overrides, *defaults, *overrides),
        data_types=tuple(selections) if selections else spec.data_types,
    )
    grid = run_grid(spec, print_fn=print_fn)
    found = findings_and_budget(spec, grid, out, print_fn=print_fn)  # the three findings, then a budget run
    checkpoint, label = best_checkpoint(grid.eval_dirs)
    hf_dir = out / "hf"
    print_fn(f"exporting the best run ({label}) to {hf_dir}")
    export_hf(checkpoint, hf_dir, overwrite=True)
    return QuickstartOutputs(grid=grid, best_checkpoint=checkpoint, best_label=label, hf_dir=hf_dir, findings=found)


def register(subparsers: Any) -> None:
    """Add ``jaxtune quickstart`` to the ``jaxtune`` parser."""
    p = add_command(
        subparsers,
        "quickstart",
        run,
        "the study's grid in miniature: two tiny models x curated and synthetic "
        "generated data at several volumes, then the best exported to HF",
    )
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument(
        "--selections",
        default=None,
        help="comma-separated data types of the demo grid (default: those of jaxtune/demo/sweep.yaml)",
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides")


def run(args: argparse.Namespace) -> int:
    """``jaxtune quickstart``: run it and print its summary."""
    print(quickstart(args.out, overrides=args.overrides, selections=args.selections).summary())
    return 0
