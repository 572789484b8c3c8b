"""jaxtune/commands/quickstart.py at a smaller size: the demo grid (two tiny sizes x curated and synthetic data, the DoIT
abilities and the generated C-Eval-format OOD suite), its report, and the best run exported to a Hugging Face
folder that transformers loads with the same logits (check-hf)."""

from __future__ import annotations

import csv
from pathlib import Path

from jaxtune.commands.quickstart import quickstart
from jaxtune.demo.abilities import write_demo_dataset
from jaxtune.demo.ceval_ood import SUBJECTS, write_demo_ceval
from jaxtune.eval.parity import check_hf
from jaxtune.results import find_summaries, read_summary
from jaxtune.study.report import draw_group


def test_quickstart_in_small(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    # The quickstart writes the full-size corpus only when out/data has none: a smaller one keeps this fast.
    write_demo_dataset(out / "data", per_ability=6, eval_per_ability=1, synthetic=20)
    write_demo_ceval(out / "data" / "ceval", dev=3, val=2)
    lines: list[str] = []
    outputs = quickstart(
        out,
        overrides=["train.epochs=1", "eval.max_new_tokens=4", "eval.batch_size=8"],
        selections="curated-10,synthetic-10",
        print_fn=lines.append,
    )

    summaries = [read_summary(p) for p in find_summaries([out / "runs"]) if "report" not in p.parts]
    cells = {(s.suite, s.run.model_size, s.run.data_source, s.run.data_volume) for s in summaries}
    assert cells == {
        (suite, size, source, 10)
        for suite in ("doit", "ceval")
        for size in ("0.09m", "0.66m")
        for source in ("curated", "synthetic")
    }
    ceval = [s for s in summaries if s.suite == "ceval"]
    assert all(s.variant == "3-shot" and [a.name for a in s.abilities] == sorted(SUBJECTS) for s in ceval)

    report = out / "runs" / "report"
    assert (report / "doit-test.png").is_file() and (report / "ceval-3-shot.png").is_file()
    with (report / "doit-test.scores.csv").open(encoding="utf-8") as f:
        assert next(csv.reader(f))[1:-1] == [
            "0.09m curated 10",
            "0.09m synthetic 10",
            "0.66m curated 10",
            "0.66m synthetic 10",
        ]
    fig = draw_group([s for s in summaries if s.suite == "doit"], "doit-test")
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert styles["0.66m curated"] == "-" and styles["0.66m synthetic"] == "--"

    best = max((s for s in summaries if s.suite == "doit"), key=lambda s: s.overall)
    assert outputs.best_checkpoint == Path(best.run.checkpoint)
    text = outputs.summary()
    assert "from transformers import AutoModelForCausalLM" in text
    assert f"AutoModelForCausalLM.from_pretrained({str(out / 'hf')!r})" in text
    check = check_hf(out / "hf", num_tokens=8, max_new_tokens=2, tolerance=1e-4)
    assert check.ok, check.summary()

    # A rerun does nothing but report and export again.
    lines.clear()
    quickstart(
        out,
        overrides=["train.epochs=1", "eval.max_new_tokens=4", "eval.batch_size=8"],
        selections="curated-10,synthetic-10",
        print_fn=lines.append,
    )
    assert any("4 runs, 4 already done, 0 to run" in line for line in lines)
