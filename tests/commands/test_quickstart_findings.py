"""The quickstart's findings (pace, data source, size) on a seeded grid of summaries with known numbers, and its
budget step end to end on a small grid: budget.json sums to the total, the budget run is trained on exactly those
counts (its manifest), evaluated, and tabled beside the uniform curated run."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from jaxtune.commands.quickstart import quickstart
from jaxtune.data.mixtures import read_manifest
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


def test_quickstart_budget_step_in_small(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    write_demo_dataset(out / "data", per_ability=6, eval_per_ability=2, synthetic=20)
    write_demo_ceval(out / "data" / "ceval", dev=3, val=2)
    lines: list[str] = []
    outputs = quickstart(
        out,
        overrides=["train.epochs=1", "eval.max_new_tokens=4", "eval.batch_size=8", "eval.suites=doit"],
        selections="curated-10,curated-20,curated-30",
        print_fn=lines.append,
    )
    text = "\n".join(lines)
    assert "finding: pace:" in text and "finding: data source:" in text and "finding: size:" in text
    result = outputs.findings.budget
    assert result["total"] == 30 and sum(result["counts"].values()) == 30
    assert all(n <= 6 for n in result["counts"].values())
    assert [v for v, _ in result["abilities"]["code"]["points"]] == [1.0, 2.0]  # the curves of 10 and 20 only
    saved = json.loads((out / "budget" / "budget.json").read_text())
    assert saved["counts"] == result["counts"]
    size = result["model_size"]
    assert size == "0.66m"  # the larger size's curves choose the budget
    manifest = read_manifest(out / "runs" / size / "budget-30" / "manifest.jsonl")
    assert Counter(e["ability"] for e in manifest) == Counter({a: n for a, n in result["counts"].items() if n})
    assert "budget run: overall predicted" in text and "uniform curated-30" in text
    table = (out / "runs" / "report" / "doit-test.budget.md").read_text()
    assert table.splitlines()[0] == f"| ability | {size} budget-30 | {size} curated-30 |"
