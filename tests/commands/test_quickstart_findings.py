"""The quickstart's findings (pace, data source, size) on a seeded grid of summaries with known numbers, and what it
prints of a budget. The findings and the budget step on the quickstart's own grid are in test_quickstart.py;
training a budget's counts is tested with the sweep (tests/study/test_sweep.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from jaxtune.commands.quickstart_findings import budget_lines
from jaxtune.results import RunInfo, ability_score, make_summary, write_summary
from jaxtune.study.findings import findings, format_findings

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
