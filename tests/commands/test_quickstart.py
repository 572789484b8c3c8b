"""jaxtune/commands/quickstart.py on a subset of its grid (two tiny sizes x curated and synthetic data, the DoIT
abilities and the generated C-Eval-format OOD suite): its report, the three findings and the budget step
(:mod:`jaxtune.commands.quickstart_findings`) as printed, and the best run exported to a Hugging Face folder that
transformers loads with the same logits (check-hf). The quickstart runs in a process of its own with one CPU device
(tests/commands/quickstart_worker.py), as on a newcomer's machine."""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from jaxtune.demo.abilities import write_demo_dataset
from jaxtune.demo.ceval_ood import SUBJECTS, write_demo_ceval
from jaxtune.eval.parity import check_hf
from jaxtune.results import find_summaries, read_summary
from jaxtune.study.report import draw_group

WORKER = Path(__file__).with_name("quickstart_worker.py")  # one CPU device, as on a newcomer's machine


@pytest.mark.long  # minutes: scheduled first (tests/conftest.py)
def test_the_quickstart_on_a_subset_of_its_grid(tmp_path: Path) -> None:
    """The quickstart itself (its sizes, corpus, recipe, findings and budget step) on a subset of its grid: four of
    its seven data types, and 10 of the 40 test items per ability (evaluation is most of a run's cost). The cells,
    the report and the HF export of the best run; each finding shows as the full quickstart prints it; the budget
    sums to the total and, from curves of 1 and 16 records per ability, keeps the uniform counts (the caps allow no
    more than 64 per ability), so curated-640 is its run. (A rerun skipping done cells: tests/study/test_grid.py.)"""
    out = tmp_path / "qs"
    data = write_demo_dataset(out / "data")  # the quickstart's own corpus, as it writes it
    for f in (data / "curated" / "test").glob("*.json"):
        f.write_text("".join(f.read_text(encoding="utf-8").splitlines(keepends=True)[:10]), encoding="utf-8")
    write_demo_ceval(data / "ceval", dev=3, val=2)
    result = tmp_path / "quickstart.pkl"
    run = subprocess.run(
        [sys.executable, str(WORKER), str(out), "curated-10,curated-160,curated-640,synthetic-160", str(result)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    outputs, lines = pickle.loads(result.read_bytes())
    text = "\n".join(lines)
    pace, source, size = outputs.findings.findings
    assert "finding: pace: shown" in text and "finding: data source: shown" in text and "finding: size: shown" in text
    # pace: code reaches 90% of its best by 160 examples, Chinese cloze only at 640 (0.66M).
    assert pace.numbers["0.66m"]["code"] == 160 and pace.numbers["0.66m"]["chinese"] == 640
    assert "0.66m: 90% of best at" in text and "code 160" in text
    # data source: curated beats synthetic at equal volume, for both sizes.
    assert set(source.numbers) == {"0.09m", "0.66m"} and all(d[160] > 5 for d in source.numbers.values())
    # size: the larger model beats the smaller where the quickstart's sizes separate (160 and 640 examples).
    assert (size.numbers["larger"], size.numbers["smaller"]) == ("0.66m", "0.09m")
    assert size.numbers["differences"][160] > 5 and size.numbers["differences"][640] > 5
    assert "0.66m - 0.09m overall (curated) at" in text

    result = outputs.findings.budget
    saved = json.loads((out / "budget" / "budget.json").read_text())
    assert result["total"] == 640 and sum(saved["counts"].values()) == 640 and saved["counts"] == result["counts"]
    assert [v for v, _ in result["abilities"]["code"]["points"]] == [1.0, 16.0]  # the curves of 10 and 160 only
    assert result["chosen"] == "uniform" and set(result["counts"].values()) == {64}
    assert result["measured_overall"] == result["uniform_overall"]
    assert "chosen: uniform (kept uniform:" in text and "its run is that run" in text
    assert not list((out / "runs" / "0.66m").glob("budget-*"))  # uniform kept: nothing trained for it

    summaries = [read_summary(p) for p in find_summaries([out / "runs"]) if "report" not in p.parts]
    cells = {(s.suite, s.run.model_size, s.run.data_source, s.run.data_volume) for s in summaries}
    assert cells == {
        (suite, size, source, volume)
        for suite in ("doit", "ceval")
        for size in ("0.09m", "0.66m")
        for source, volume in (("curated", 10), ("curated", 160), ("curated", 640), ("synthetic", 160))
    }
    ceval = [s for s in summaries if s.suite == "ceval"]
    assert all(s.variant == "3-shot" and [a.name for a in s.abilities] == sorted(SUBJECTS) for s in ceval)
    report = out / "runs" / "report"
    assert (report / "doit-test.png").is_file() and (report / "ceval-3-shot.png").is_file()
    with (report / "doit-test.scores.csv").open(encoding="utf-8") as f:
        assert next(csv.reader(f))[1:4] == ["0.09m curated 10", "0.09m curated 160", "0.09m curated 640"]
    fig = draw_group([s for s in summaries if s.suite == "doit"], "doit-test")
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert styles["0.66m curated"] == "-" and styles["0.66m synthetic"] == "--"

    best = max((s for s in summaries if s.suite == "doit"), key=lambda s: s.overall)
    assert outputs.best_checkpoint == Path(best.run.checkpoint)
    summary = outputs.summary()
    assert "from transformers import AutoModelForCausalLM" in summary and "finding: size: shown" in summary
    assert f"AutoModelForCausalLM.from_pretrained({str(out / 'hf')!r})" in summary
    check = check_hf(out / "hf", num_tokens=8, max_new_tokens=2, tolerance=1e-4)
    assert check.ok, check.summary()
