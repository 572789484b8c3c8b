"""The BELLE study's figure (jaxtune/eval/suites/belle_figure.py, the BELLE suite's report hook) through `jaxtune report`: bars per use case and volume from
BELLE summaries, overall and overall without math and code, and the paper's Figure 1 beside them, labelled."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from jaxtune.cli import main
from jaxtune.eval.suites.belle_figure import (
    OVERALL,
    OVERALL_RELIABLE,
    PAPER_FIG1,
    BelleReportError,
    draw_study,
    evaluation_panels,
    read_paper_scores,
)
from jaxtune.results import RunInfo, ability_score, make_summary, write_summary

CLASSES = ["open qa", "math", "code", "generation", "closed qa"]


def belle_summary(volume: int, source: str = "belle+alpaca", size: str = "tiny", bump: float = 0.0):
    """Scores that grow with volume (math and code flat), as the study found."""
    grow = {200_000: 0.0, 600_000: 0.1, 2_000_000: 0.2}.get(volume, 0.05)
    abilities = []
    for i, cls in enumerate(CLASSES):
        score = 0.3 if cls in ("math", "code") else 0.4 + grow + 0.02 * i + bump
        abilities.append(ability_score(cls, [score, score], unit="fraction"))
    reliable = np.mean([a.score for a in abilities if a.name not in ("math", "code")])
    return make_summary(
        "belle",
        "eval_set",
        "judge",
        abilities,
        RunInfo(run_name=f"v{volume}", model_size=size, data_source=source, data_volume=volume, epoch=2),
        unit="fraction",
        overall_without_math_code=float(reliable),
        judge={"model": "judge-x", "temperature": 0.0},
    )


def test_the_shipped_copy_is_the_shared_file(shared_data) -> None:
    assert PAPER_FIG1.read_bytes() == (shared_data / "belle_eval" / "paper_fig1_scores.csv").read_bytes()


def test_paper_scores_are_figure_1() -> None:
    paper = read_paper_scores()
    with PAPER_FIG1.open(encoding="utf-8") as f:
        rows = {r["category"]: r for r in csv.DictReader(f)}
    columns = {200_000: "BELLE-7B-0.2M", 600_000: "BELLE-7B-0.6M", 1_000_000: "BELLE-7B-1M", 2_000_000: "BELLE-7B-2M"}
    for volume, column in columns.items():
        assert paper.scores["open qa"][volume] == float(rows["Open QA"][column])
        assert paper.scores[OVERALL][volume] == float(rows["Overall"][column])
        others = [float(r[column]) for name, r in rows.items() if name not in ("Math", "Code", "Overall")]
        assert len(others) == 10 and paper.scores[OVERALL_RELIABLE][volume] == pytest.approx(np.mean(others))
    assert paper.scores[OVERALL][200_000] == 0.6759 and paper.scores[OVERALL][2_000_000] == 0.7367
    assert "different item set" in paper.title


def test_bad_paper_file_names_file_and_line(tmp_path) -> None:
    bad = tmp_path / "fig.csv"
    bad.write_text("category,BELLE-7B-0.2M\nMath,0.35\nPoetry,0.5\n", encoding="utf-8")
    with pytest.raises(BelleReportError, match=r"fig\.csv:3: unknown use case 'Poetry'"):
        read_paper_scores(bad)
    bad.write_text("category,BELLE-7B-0.2M\nMath,high\n", encoding="utf-8")
    with pytest.raises(BelleReportError, match=r"fig\.csv:2: expected a score"):
        read_paper_scores(bad)


def test_bars_hold_the_scores_in_the_papers_order() -> None:
    summaries = [belle_summary(v) for v in (200_000, 2_000_000)] + [belle_summary(2_000_000, bump=0.1)]
    (panel,) = evaluation_panels(summaries)
    assert panel.scores["open qa"] == {200_000: pytest.approx(0.4), 2_000_000: pytest.approx(0.65)}  # averaged
    fig = draw_study([panel, read_paper_scores()], "t")
    ours, paper = fig.axes[:2]
    labels = [t.get_text() for t in ours.get_xticklabels()]
    assert labels == ["Math", "Code", "Open QA", "Closed QA", "Generation", "Overall", "Overall w/o math & code"]
    heights = [b.get_height() for b in ours.containers[0]]  # the 0.2M bars
    assert heights == pytest.approx(
        [0.3, 0.3, 0.4, 0.48, 0.46, np.mean([0.3, 0.3, 0.4, 0.48, 0.46]), np.mean([0.4, 0.48, 0.46])]
    )
    assert [t.get_text() for t in ours.get_legend().get_texts()] == ["0.2M", "2M"]
    assert [t.get_text() for t in paper.get_legend().get_texts()] == ["0.2M", "0.6M", "1M", "2M"]
    assert [len(c) for c in paper.containers] == [14] * 4 and "paper, Figure 1" in paper.get_title()
    # The same volume has the same colour in both panels.
    assert ours.containers[1][0].get_facecolor() == paper.containers[3][0].get_facecolor()
    assert ours.containers[0][0].get_facecolor() != paper.containers[3][0].get_facecolor()


def test_jaxtune_report_draws_the_study_figure(tmp_path, capsys) -> None:
    for v in (200_000, 600_000, 2_000_000):
        write_summary(
            tmp_path / "runs" / f"belle-{v}" / "eval" / "epoch-2" / "belle-eval_set.summary.json", belle_summary(v)
        )
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    for name in (
        "belle-eval_set.study.png",
        "belle-eval_set.study.svg",
        "belle-eval_set.study.csv",
        "belle-eval_set.png",
    ):
        assert (tmp_path / "report" / name).stat().st_size > 0 and name in printed
    with (tmp_path / "report" / "belle-eval_set.study.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ours = {(r["use_case"], int(r["volume"])): float(r["score"]) for r in rows if r["panel"].startswith("this")}
    assert ours[("Open QA", 600_000)] == 0.5 and ours[("Math", 2_000_000)] == 0.3
    assert ours[("Overall w/o math & code", 2_000_000)] == pytest.approx(np.mean([0.6, 0.68, 0.66]), abs=1e-4)
    paper = [r for r in rows if r["panel"].startswith("paper")]
    assert len(paper) == 14 * 4 and all("judge judge-x" in r["panel"] for r in rows if r["panel"].startswith("this"))
