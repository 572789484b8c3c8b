"""jaxtune budget: the growth fit against known curves, the hold-out check by hand, the allocation against brute
force, budget.json from a grid written as evaluations write it, the CLI and its errors, budget:PATH through
jaxtune select, and the report's table of budget runs."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from jaxtune.cli import main
from jaxtune.data.mixtures import SelectionError
from jaxtune.demo.abilities import write_demo_dataset
from jaxtune.results import RunInfo, SuiteResult, ability_score, make_summary, write_result
from jaxtune.study.budget import budget
from jaxtune.study.budget_alloc import AllocationError, allocate, parse_weights, scaled_rule
from jaxtune.study.budget_data import BudgetError
from jaxtune.study.budget_guard import (
    extrapolation_caps,
    extrapolation_floors,
    guard,
    is_saturated,
    uniform_counts,
)
from jaxtune.study.budget_report import budget_comparison
from jaxtune.study.growth_fit import GrowthCurve, fit_growth, holdout_check
from jaxtune.study.report import report
from jaxtune.study.select import select_study_data

TRUE = {
    "code": GrowthCurve(100 / 3, 95.0, math.log(3.0), 0.6),  # saturates early
    "chinese": GrowthCurve(0.0, 80.0, math.log(40.0), 0.35),  # jumps late
    "math": GrowthCurve(0.0, 6.0, math.log(200.0), 0.5),  # stays near zero
}
PER_ABILITY = [1, 4, 16, 64, 256]
N_ITEMS = 400


def test_fit_recovers_a_known_curve() -> None:
    true = GrowthCurve(25.0, 88.0, math.log(20.0), 0.7)
    fit = fit_growth(PER_ABILITY, true(PER_ABILITY), 25.0)
    assert fit.upper == pytest.approx(88.0, abs=0.5)
    assert fit.midpoint == pytest.approx(math.log(20.0), abs=0.05)
    assert fit.scale == pytest.approx(0.7, abs=0.05)
    assert float(fit(0)) == 25.0  # no records: chance


def test_fit_is_robust_to_one_outlier() -> None:
    true = GrowthCurve(0.0, 70.0, math.log(10.0), 0.8)
    volumes = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    scores = true(volumes)
    scores[4] += 35.0
    fit = fit_growth(volumes, scores, 0.0)
    others = [v for i, v in enumerate(volumes) if i != 4]
    assert np.max(np.abs(fit(others) - true(others))) < 2.0


def test_fit_stays_within_chance_and_100() -> None:
    fit = fit_growth([1, 4, 16], [10.0, 100.0, 100.0], 25.0)
    assert 25.0 <= fit.upper <= 100.0 and float(fit(1e9)) <= 100.0


def test_holdout_is_the_fit_without_the_largest_volume_by_hand() -> None:
    true = TRUE["chinese"]
    scores = true(PER_ABILITY) + np.array([0.0, 1.0, -2.0, 3.0, -1.0])
    h = holdout_check(PER_ABILITY, scores, 0.0)
    by_hand = fit_growth(PER_ABILITY[:-1], scores[:-1], 0.0)
    assert h.volume == 256 and h.measured == pytest.approx(scores[-1])
    assert h.predicted == pytest.approx(float(by_hand(256)))
    assert h.error == pytest.approx(float(by_hand(256)) - scores[-1])
    assert holdout_check([1, 4], [0.0, 10.0], 0.0) is None


def _brute_force(curves, total, caps, weights):
    names = list(curves)
    best, arg = -math.inf, None
    for counts in itertools.product(*(range(caps[a] + 1) for a in names)):
        if sum(counts) != total:
            continue
        value = sum(weights.get(a, 1.0) * float(curves[a](n)) for a, n in zip(names, counts))
        if value > best + 1e-9:
            best, arg = value, dict(zip(names, counts))
    return best, arg


@pytest.mark.parametrize("total", [5, 12, 19])
def test_allocation_equals_brute_force_on_s_shaped_curves(total: int) -> None:
    curves = {
        "a": GrowthCurve(0.0, 90.0, math.log(6.0), 0.15),  # a steep S: greedy stops at its foot
        "b": GrowthCurve(20.0, 40.0, math.log(1.5), 0.5),
        "c": GrowthCurve(0.0, 60.0, math.log(3.0), 0.3),
    }
    caps = {"a": 9, "b": 8, "c": 7}
    weights = {"c": 1.5}
    counts = allocate(curves, total, caps, weights)
    best, _ = _brute_force(curves, total, caps, weights)
    assert sum(counts.values()) == total and all(counts[a] <= caps[a] for a in caps)
    assert sum(weights.get(a, 1.0) * float(curves[a](n)) for a, n in counts.items()) == pytest.approx(best, abs=2e-3)


def test_ties_go_to_the_uniform_allocation() -> None:
    flat = GrowthCurve(50.0, 50.0, 0.0, 1.0)  # stays at chance: every count predicts the same
    counts = allocate({"a": flat, "b": flat, "c": flat, "d": GrowthCurve(0.0, 60.0, math.log(2.0), 0.3)}, 40)
    assert counts["a"] == counts["b"] == counts["c"] and counts["d"] >= 10 and sum(counts.values()) == 40


def test_greedy_would_not_find_it() -> None:
    # One record at a time to the best marginal gain takes b's early points and never reaches a's rise.
    curves = {"a": GrowthCurve(0.0, 90.0, math.log(6.0), 0.15), "b": GrowthCurve(0.0, 30.0, math.log(1.2), 0.6)}
    counts = allocate(curves, 8, {"a": 8, "b": 8})
    greedy = {"a": 0, "b": 0}
    for _ in range(8):
        gain = {k: float(curves[k](greedy[k] + 1) - curves[k](greedy[k])) for k in greedy}
        greedy[max(gain, key=gain.get)] += 1
    value = lambda c: sum(float(curves[k](n)) for k, n in c.items())  # noqa: E731
    assert value(counts) > value(greedy) + 10 and counts["a"] >= 6


def test_allocation_errors() -> None:
    with pytest.raises(AllocationError, match="exceeds the records available"):
        allocate(TRUE, 100, {"code": 10, "chinese": 10, "math": 10})
    with pytest.raises(AllocationError, match="--weights"):
        parse_weights("poetry=2", list(TRUE))
    with pytest.raises(AllocationError, match="not a number"):
        parse_weights("code=x", list(TRUE))


def test_large_totals_use_a_grid_and_still_sum() -> None:
    counts = allocate(TRUE, 10001, {"code": 9000, "chinese": 9000, "math": 9000})
    assert sum(counts.values()) == 10001 and max(counts.values()) <= 9000


def test_scaled_rule_keeps_the_studys_proportions() -> None:
    names = ["biology", "chinese", "creative_writing", "ethics", "role_play"]
    counts = scaled_rule(names, 374)
    assert sum(counts.values()) == 374 and counts["ethics"] == counts["role_play"] < counts["creative_writing"]
    capped = scaled_rule(names, 374, {"creative_writing": 10})
    assert sum(capped.values()) == 374 and capped["creative_writing"] == 10


def write_grid(root: Path, sizes=("s",), noise: float = 0.0, items: bool = True) -> Path:
    """curated-N runs (N/3 per ability) with scores on TRUE (per item: the first round(score) % of items correct,
    shuffled), as the sweep writes them: run/eval/epoch-1/doit-test.summary.json + .items.jsonl."""
    rng = np.random.default_rng(0)
    for size in sizes:
        for per in PER_ABILITY:
            scores, all_items = [], []
            for name, curve in TRUE.items():
                k = int(round(float(curve(per)) / 100 * N_ITEMS + rng.normal(0, noise)))
                correct = np.zeros(N_ITEMS)
                correct[: min(max(k, 0), N_ITEMS)] = 1
                rng.shuffle(correct)
                chance = curve.chance / 100
                scores.append(ability_score(name, correct.tolist(), [chance] * N_ITEMS))
                all_items += [{"ability": name, "correct": bool(c), "chance": chance} for c in correct]
            run = RunInfo(
                run_name=f"curated-{3 * per}", model_size=size, data_source="curated", data_volume=3 * per, epoch=1
            )
            summary = make_summary("doit", "test", "study", scores, run)
            out = root / size / f"curated-{3 * per}" / "eval" / "epoch-1"
            write_result(out, SuiteResult(summary, all_items if items else []))
            if not items:
                (out / "doit-test.items.jsonl").unlink()
    return root


def test_budget_end_to_end(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "runs")
    outputs = budget([grid], 192, tmp_path / "out", replicates=30)
    result = json.loads((tmp_path / "out" / "budget.json").read_text())
    assert result == outputs.result
    counts = result["optimised"]["counts"]
    assert sum(counts.values()) == 192 and set(counts) == set(TRUE)
    # The exact allocation of the fitted curves, checked against brute force over every split.
    fits = {
        a: GrowthCurve(**{k if k != "midpoint_log" else "midpoint": v for k, v in r["fit"].items()})
        for a, r in result["abilities"].items()
    }
    floors = [r["floor"] for r in result["abilities"].values()]
    assert floors == [1, 1, 1]  # the smallest fitted volume: no ability is left below its data
    best = max(
        sum(float(fits[a](n)) for a, n in zip(fits, split))
        for split in itertools.product(range(1, 193), repeat=2)
        for split in [(*split, 192 - sum(split))]
        if split[2] >= 1
    )
    assert sum(float(fits[a](n)) for a, n in counts.items()) == pytest.approx(best, abs=2e-3)
    for a, r in result["abilities"].items():
        assert r["band"][0] <= r["predicted"] + 1e-6 and r["predicted"] <= r["band"][1] + 1e-6
        volumes = [v for v, _ in r["points"]]
        assert volumes == PER_ABILITY
        h = holdout_check(volumes, [s for _, s in r["points"]], r["chance"])
        assert r["holdout"]["predicted"] == pytest.approx(h.predicted) and r["holdout"]["error"] == h.error
    overall = result["holdout"]
    assert overall["run_volume"] == 768
    assert overall["overall_predicted"] == pytest.approx(
        np.mean([r["holdout"]["predicted"] for r in result["abilities"].values()])
    )
    assert result["optimised"]["overall"] >= result["uniform"]["overall"] - 1e-9
    # The optimum gains clear of the bootstrap, but the fit without 256 records per ability missed Chinese's rise by
    # 16 points (overall by 6.2): a gain of 4.6 is within that, so the uniform counts are kept and said to be.
    gain = result["gain"]
    assert gain["band"][0] > 0 and gain["predicted"] < abs(overall["overall_error"])
    assert result["chosen"] == "uniform" and result["counts"] == {"code": 64, "chinese": 64, "math": 64}
    assert "hold-out" in result["decision"] and "chosen: uniform" in (tmp_path / "out" / "budget.md").read_text()
    assert result["predicted"]["overall"] == result["uniform"]["overall"]
    p = result["predicted"]
    assert p["overall_band"][0] <= p["overall"] <= p["overall_band"][1]
    assert {f.name for f in outputs.files} >= {"budget.json", "rule.json", "budget.md", "budget.png", "budget.svg"}
    assert "hold-out" in outputs.summary()
    assert sum(json.loads((tmp_path / "out" / "rule.json").read_text())["counts"].values()) == 192


def test_the_guard_keeps_uniform_unless_the_gain_is_clear() -> None:
    clear = guard(60.0, 50.0, [8.0, 9.0, 11.0, 12.0], -3.0, (5.0, 95.0))
    assert clear.chosen == "optimised" and clear.gain == 10.0 and "bootstrap and hold-out" in clear.reason
    assert (
        guard(60.0, 50.0, [-3.0, -2.0, 9.0, 11.0, 21.0], -3.0, (5.0, 95.0)).chosen == "uniform"
    )  # band not clear of 0
    assert guard(60.0, 50.0, [8.0, 12.0], 10.5, (5.0, 95.0)).chosen == "uniform"  # within the hold-out error
    assert guard(50.2, 50.0, [], None, (5.0, 95.0)).chosen == "uniform"  # under MIN_GAIN
    assert guard(60.0, 50.0, [], None, (5.0, 95.0)).chosen == "optimised"


def test_an_unsaturated_curve_is_not_extrapolated_past_four_times_its_data() -> None:
    # The quickstart's failure: points at 1, 4, 16 records only; a fit whose rise is mostly beyond them must not
    # take the total on its word.
    rising = GrowthCurve(0.0, 90.0, math.log(60.0), 0.5)
    flat = fit_growth([1, 4, 16], [25.0, 25.0, 25.0], 25.0)
    saturated = fit_growth([1, 4, 16], [40.0, 88.0, 90.0], 25.0)
    fits = {"rising": rising, "flat": flat, "saturated": saturated}
    volumes = dict.fromkeys(fits, [1, 4, 16])
    caps = extrapolation_caps(volumes, fits, 150)
    assert caps == {"rising": 64, "flat": 64, "saturated": None}
    assert is_saturated(saturated, [1, 4, 16]) and not is_saturated(rising, [1, 4, 16])
    assert not is_saturated(flat, [1, 4, 16])
    assert allocate(fits, 150)["rising"] > 100  # uncapped
    counts = allocate(fits, 150, {a: 150 if c is None else c for a, c in caps.items()})
    assert counts["rising"] == 64 and sum(counts.values()) == 150
    unsaturated = {"rising": rising, "flat": flat}
    assert extrapolation_caps({a: volumes[a] for a in unsaturated}, unsaturated, 400) == {
        "rising": 256,
        "flat": 256,
    }  # 64 + 64 < 400: 16x
    # Below its smallest volume a curve says chance, where an untrained ability scores about 0: no ability goes there.
    floors = extrapolation_floors({"rising": [1, 4, 16], "flat": [2.5, 10]}, 150)
    assert floors == {"rising": 1, "flat": 3}
    assert allocate(fits, 150, floors={"flat": 3, "rising": 1})["flat"] >= 3
    assert allocate(fits, 150)["flat"] == 0  # without the floor the flat curve gets nothing
    assert extrapolation_floors({"a": [8.0], "b": [8.0]}, 10) == {"a": 5, "b": 5}  # 16 > 10: lowered evenly
    assert uniform_counts(["a", "b", "c"], 11) == {"a": 4, "b": 4, "c": 3}
    assert uniform_counts(["a", "b", "c"], 11, {"a": 1}) == {"a": 1, "b": 5, "c": 5}


def test_budget_without_items_has_no_bands(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "runs", items=False)
    result = budget([grid], 60, tmp_path / "out", replicates=10).result
    assert result["bootstrap"] == 0 and result["predicted"]["overall_band"] is None
    assert all(r["band"] is None for r in result["abilities"].values())


def test_availability_caps_the_counts(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "runs")
    data = write_demo_dataset(tmp_path / "data", per_ability=20, eval_per_ability=1, synthetic=5)
    result = budget([grid], 50, tmp_path / "out", data_dir=data, replicates=0).result
    assert sum(result["counts"].values()) == 50 and all(n <= 20 for n in result["counts"].values())
    assert result["available"]["code"] == 20


def test_cli_and_errors_name_the_flag(tmp_path: Path, capsys) -> None:
    grid = write_grid(tmp_path / "runs", sizes=("s", "l"))
    assert (
        main(
            [
                "budget",
                str(grid),
                "--total",
                "30",
                "--out",
                str(tmp_path / "o"),
                "--size",
                "l",
                "--bootstrap",
                "5",
                "--weights",
                "math=0",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "o" / "budget.json").read_text())
    assert result["model_size"] == "l" and result["weights"]["math"] == 0
    assert result["optimised"]["counts"]["math"] == result["abilities"]["math"]["floor"] == 1  # weight 0: its floor
    assert main(["budget", str(grid), "--total", "30", "--out", str(tmp_path / "o2")]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["budget", str(grid), "--total", "30", "--out", str(tmp_path / "o2"), "--size", "xl"]) == 2
    assert "--size xl" in capsys.readouterr().err
    assert (
        main(
            [
                "budget",
                str(grid),
                "--total",
                "30",
                "--out",
                str(tmp_path / "o2"),
                "--size",
                "s",
                "--source",
                "synthetic",
            ]
        )
        == 2
    )
    assert "--source synthetic" in capsys.readouterr().err
    with pytest.raises(BudgetError, match="no doit-test.summary.json"):
        budget([tmp_path / "o"], 30, tmp_path / "o3")


def test_items_that_do_not_pair_name_the_folder(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "runs")
    items = grid / "s" / "curated-12" / "eval" / "epoch-1" / "doit-test.items.jsonl"
    items.write_text(items.read_text() + json.dumps({"ability": "code"}) + "\n")
    with pytest.raises(BudgetError, match="doit-test.items.jsonl:1201: an item needs the keys"):
        budget([grid], 30, tmp_path / "o")


def test_select_writes_a_budget(tmp_path: Path) -> None:
    data = write_demo_dataset(tmp_path / "data", per_ability=20, eval_per_ability=1, synthetic=5)
    path = tmp_path / "budget.json"
    path.write_text(json.dumps({"counts": {"code": 5, "math": 2}}))
    out = select_study_data(data, f"budget:{path}", tmp_path / "sel")
    assert out.counts == {"code.json": 5, "math.json": 2}
    assert len((tmp_path / "sel" / "code.json").read_text().splitlines()) == 5
    with pytest.raises(SelectionError, match="unknown data type"):
        select_study_data(data, "budget", tmp_path / "sel2")


def test_report_places_a_budget_run_beside_uniform_and_rule(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "runs")
    for source, shift in (("budget", 5.0), ("reconstruct-scaled", -5.0)):
        scores = [
            ability_score(n, [min(1.0, max(0.0, (float(c(64)) + shift) / 100))], [c.chance / 100])
            for n, c in TRUE.items()
        ]
        run = RunInfo(run_name=f"{source}-192", model_size="s", data_source=source, data_volume=192, epoch=1)
        write_result(
            tmp_path / "runs" / "s" / source / "eval",
            SuiteResult(make_summary("doit", "test", "study", scores, run), []),
        )
    files = report([grid], tmp_path / "report")
    table = (tmp_path / "report" / "doit-test.budget.md").read_text()
    assert tmp_path / "report" / "doit-test.budget.md" in files
    header = table.splitlines()[0]
    assert header == "| ability | s budget-192 | s curated-192 | s reconstruct-scaled-192 |"
    scores_csv = (tmp_path / "report" / "doit-test.scores.csv").read_text()
    assert "budget" not in scores_csv and "reconstruct-scaled" not in scores_csv
    assert budget_comparison([]) is None
