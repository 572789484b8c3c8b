"""The quickstart's findings (pace, data source, size): on a seeded grid of summaries with known numbers, and on the
quickstart's own grid (a subset of its data types, fewer test items) with its budget step: budget.json sums to the
total and keeps the uniform counts. Training a budget's counts is tested with the sweep (tests/study/test_sweep.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from jaxtune.commands.quickstart import quickstart
from jaxtune.commands.quickstart_findings import budget_lines
from jaxtune.demo.abilities import write_demo_dataset
from jaxtune.demo.ceval_ood import write_demo_ceval
from jaxtune.results import RunInfo, ability_score, make_summary, write_summary
from jaxtune.study.findings import findings, format_findings

pytestmark = pytest.mark.long  # minutes: scheduled first (tests/conftest.py)

VOLUMES = [10, 40, 160, 640, 2560]
CURVES = {  # records in all -> score; chance 25 / 0 / 0
    "code": (25.0, lambda v: 90.0 if v >= 160 else 40.0),
    "chinese": (0.0, lambda v: 80.0 if v >= 640 else 5.0),
    "math": (0.0, lambda v: 1.0),
}


def _write(root: Path, size: str, source: str, volume: int, bonus: float, n: int = 100) -> None:
    rng = random.Random(f"{size}{source}{volume}")
    abilities = []
    for name, (chance, curve) in CURVES.items():
        k = max(0, min(n, round((curve(volume) + bonus) * n / 100) + rng.choice((-1, 0, 1))))
        abilities.append(ability_score(name, [1.0] * k + [0.0] * (n - k), [chance / 100] * n))
    run = RunInfo(run_name=f"{source}-{volume}", model_size=size, data_source=source, data_volume=volume, epoch=10)
    summary = make_summary("doit", "test", "study", abilities, run)
    write_summary(root / size / f"{source}-{volume}" / "eval" / "epoch-10" / "doit-test.summary.json", summary)


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    for size, bonus in (("0.1m", 0.0), ("1m", 6.0)):
        for v in VOLUMES:
            _write(tmp_path, size, "curated", v, bonus)
        for v in (160, 640):
            _write(tmp_path, size, "synthetic", v, bonus - 30.0)
    return tmp_path


def test_the_three_findings_with_their_numbers(grid: Path) -> None:
    pace, source, size = findings([grid])
    assert pace.shown and pace.numbers["0.1m"]["code"] == 160 and pace.numbers["0.1m"]["chinese"] == 640
    assert pace.numbers["0.1m"]["math"] is None
    assert source.shown and all(d > 0 for per in source.numbers.values() for d in per.values())
    assert set(source.numbers["1m"]) == {160, 640}
    assert size.shown and size.numbers["larger"] == "1m" and size.numbers["smaller"] == "0.1m"
    assert size.numbers["mean"] == pytest.approx(6.0, abs=1.0)
    text = format_findings([pace, source, size])
    assert "finding: size: shown" in text and "1m - 0.1m overall (curated)" in text


def test_findings_that_do_not_show_say_so(tmp_path: Path) -> None:
    for size, bonus in (("0.1m", 0.0), ("1m", -6.0)):  # the larger model worse; synthetic better
        for v in VOLUMES:
            _write(tmp_path, size, "curated", v, bonus)
        _write(tmp_path, size, "synthetic", 160, bonus + 10.0)
    _, source, size = findings([tmp_path])
    assert not source.shown and not size.shown
    assert "finding: size: NOT shown" in format_findings([size])


def test_the_findings_on_the_quickstarts_own_grid(tmp_path: Path) -> None:
    """The quickstart itself (its sizes, corpus, recipe and budget step) on a subset of its grid: four of its seven
    data types, and 10 of the 40 test items per ability (evaluation is most of a run's cost). Each finding shows as
    the full quickstart prints it; the budget sums to the total and, from curves of 1 and 16 records per ability,
    keeps the uniform counts (the caps allow no more than 64 per ability), so curated-640 is its run."""
    out = tmp_path / "qs"
    data = write_demo_dataset(out / "data")  # the quickstart's own corpus, as it writes it
    for f in (data / "curated" / "test").glob("*.json"):
        f.write_text("".join(f.read_text(encoding="utf-8").splitlines(keepends=True)[:10]), encoding="utf-8")
    write_demo_ceval(data / "ceval", dev=3, val=2)
    lines: list[str] = []
    outputs = quickstart(out, selections="curated-10,curated-160,curated-640,synthetic-160", print_fn=lines.append)
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


def test_an_optimised_budget_is_printed_against_uniform() -> None:
    r = {
        "total": 30,
        "holdout": None,
        "chosen": "optimised",
        "decision": "optimised: gain +4.0 clears bootstrap",
        "optimised": {"counts": {"a": 20, "b": 10}, "overall": 60.0, "overall_band": [58.0, 62.0]},
        "uniform": {"counts": {"a": 15, "b": 15}, "overall": 56.0, "overall_band": None},
        "predicted": {"overall": 60.0, "overall_band": [58.0, 62.0]},
        "measured_overall": 57.0,
        "uniform_overall": 59.5,
    }
    text = budget_lines(r, "1m")
    assert "  optimised: predicted overall 60.0 [58.0, 62.0] (a 20, b 10)" in text
    assert "  uniform: predicted overall 56.0 (a 15, b 15)" in text
    assert "measured 57.0; uniform curated-30: 59.5 (budget -2.5)" in text
