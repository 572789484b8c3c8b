"""jaxtune report: figures (log-4 axis, one colour per size, curated solid / synthetic dashed / chance dotted),
growth-pace tables and best epochs, from summaries written as evaluations write them."""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

import pytest

from jaxtune.results import RunInfo, ability_score, make_summary, write_summary
from jaxtune.study.report import ReportError, choose_epochs, draw_group, report

VOLUMES = {"curated": [10, 40, 160, 640], "synthetic": [10, 40, 160]}


def biology(size: str, source: str, volume: int, epoch: int) -> float:
    """5 points per 4x data; 13b 10 points higher; synthetic 3 lower; epoch 2 one point better."""
    return (
        20
        + 5 * math.log(volume / 10, 4)
        + (10 if size == "13b" else 0)
        - (3 if source == "synthetic" else 0)
        + (1 if epoch == 2 else 0)
    )


def ethics(volume: int) -> float:
    return 50.0 if volume >= 40 else 30.0


def summary(size: str, source: str, volume: int, epoch: int, suite: str = "doit"):
    abilities = [
        ability_score("biology", [biology(size, source, volume, epoch) / 100] * 1, [0.25]),
        ability_score("ethics", [ethics(volume) / 100], [0.2]),
    ]
    run = RunInfo(
        run_name=f"{size}-{source}-{volume}", model_size=size, data_source=source, data_volume=volume, epoch=epoch
    )
    return make_summary(suite, "test", "study", abilities, run)


def write_runs(root: Path) -> Path:
    for size in ("7b", "13b"):
        for source, volumes in VOLUMES.items():
            for v in volumes:
                for epoch in (1, 2):
                    write_summary(
                        root / f"{size}-{source}-{v}" / f"epoch{epoch}" / "doit-test.summary.json",
                        summary(size, source, v, epoch),
                    )
    orphan = make_summary("doit", "test", "study", [ability_score("biology", [1.0], [0.25])], RunInfo(epoch=1))
    write_summary(root / "orphan" / "doit-test.summary.json", orphan)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_report_files_and_tables(tmp_path: Path) -> None:
    out = tmp_path / "report"
    paths = report([write_runs(tmp_path / "runs")], out)
    names = {p.name for p in paths}
    assert {
        "doit-test.png",
        "doit-test.svg",
        "growth_pace.csv",
        "growth_pace.md",
        "best_epochs.csv",
        "report.md",
    } <= names
    assert (out / "doit-test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "doit-test.svg").read_text(encoding="utf-8")

    pace = {(r["model_size"], r["source"], r["ability"]): r for r in _rows(out / "growth_pace.csv")}
    assert len(pace) == 2 * 2 * 3  # sizes x sources x (biology, ethics, overall)
    assert float(pace[("7b", "curated", "biology")]["slope_per_4x_data"]) == pytest.approx(5.0)
    # best 36 at 640; 90% of it is 32.4, first reached at 640 (31 at 160 falls short)
    assert pace[("7b", "curated", "biology")]["volume_at_90pct_of_best"] == "640"
    assert float(pace[("7b", "curated", "biology")]["best_score"]) == pytest.approx(36.0)
    assert pace[("13b", "synthetic", "ethics")]["volume_at_90pct_of_best"] == "40"  # saturates after 40 examples

    best = _rows(out / "best_epochs.csv")
    assert len(best) == 14 + 1  # 14 runs with a volume, plus the orphan (volume unknown)
    assert {r["best_epoch"] for r in best if r["data_volume"]} == {"2"}

    index = (out / "report.md").read_text(encoding="utf-8")
    assert "orphan" in index and "no positive run.data_volume" in index


def test_figure_semantics(tmp_path: Path) -> None:
    summaries = [summary(size, source, v, 2) for size in ("7b", "13b") for source, vs in VOLUMES.items() for v in vs]
    fig = draw_group(summaries, "doit-test")
    ax = fig.axes[0]
    assert ax.get_title() == "STEM - Biology"
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 4
    styles = {line.get_label(): (line.get_linestyle(), line.get_color()) for line in ax.get_lines()}
    assert styles["7b curated"][0] == "-" and styles["7b synthetic"][0] == "--"
    assert styles["7b curated"][1] == styles["7b synthetic"][1] != styles["13b curated"][1]  # colour = size
    assert styles["chance"][0] == ":"
    chance_line = next(line for line in ax.get_lines() if line.get_label() == "chance")
    assert list(chance_line.get_ydata()) == [25.0, 25.0]
    curated_7b = next(line for line in ax.get_lines() if line.get_label() == "7b curated")
    assert list(curated_7b.get_xdata()) == [10, 40, 160, 640]
    assert [round(y, 6) for y in curated_7b.get_ydata()] == [21.0, 26.0, 31.0, 36.0]
    assert [a.get_title() for a in fig.axes if a.get_visible()] == ["STEM - Biology", "Ethics", "Overall"]


def test_epoch_choice() -> None:
    runs = [summary("7b", "curated", 10, e) for e in (1, 2, 3)]
    runs[2].overall = 0.0
    assert choose_epochs(runs, "last")[0].run.epoch == 3
    assert choose_epochs(runs, "best")[0].run.epoch == 2
    assert choose_epochs(runs, 1)[0].run.epoch == 1
    assert choose_epochs(runs, 7) == []


def test_nothing_to_report(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no \\*.summary.json"):
        report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="neither a summary file nor a directory"):
        report([tmp_path / "missing"], tmp_path / "out")


@pytest.mark.parametrize("choice, biology_7b_curated_10", [("1", 20.0), ("2", 21.0), ("last", 21.0), ("best", 21.0)])
def test_cli_epoch_choice(tmp_path: Path, capsys, choice: str, biology_7b_curated_10: float) -> None:
    from jaxtune.cli import main

    code = main(["report", str(write_runs(tmp_path / "runs")), "--out", str(tmp_path / "out"), "--epoch", choice])
    out = capsys.readouterr().out
    assert code == 0 and "doit-test.png" in out and f"epoch choice: {choice}" in out
    rows = _rows(tmp_path / "out" / "doit-test.scores.csv")
    biology_row = next(r for r in rows if r["ability"] == "STEM - Biology")
    assert float(biology_row["7b curated 10"]) == pytest.approx(biology_7b_curated_10)


def test_cli_epoch_must_be_a_number_or_last_or_best(tmp_path: Path, capsys) -> None:
    from jaxtune.cli import main

    with pytest.raises(SystemExit):
        main(["report", str(tmp_path), "--out", str(tmp_path / "out"), "--epoch", "ten"])
    assert "expected 'last', 'best' or an epoch number" in capsys.readouterr().err


def test_the_data_construction_table_covers_every_construction_at_each_size(tmp_path: Path) -> None:
    """baseline (curated at 10k), reconstruct, maximum and mix-N per size, in the study's order; the constructions
    are tabled, not drawn as one-point curves."""
    runs = tmp_path / "runs"
    constructions = [
        ("curated", 10000, "curated-10000"),
        ("mix", 39564 + 40960, "mix-40960"),
        ("maximum", 39564, "maximum"),
        ("reconstruct", 10000, "reconstruct"),
        ("mix", 39564 + 2560, "mix-2560"),
        ("curated", 640, "curated-640"),
    ]
    for size, bonus in (("33b", 20.0), ("7b", 0.0)):
        for i, (source, volume, name) in enumerate(constructions):
            score = 40.0 + i + bonus
            s = make_summary(
                "doit",
                "test",
                "study",
                [ability_score("biology", [score / 100], [0.25])],
                RunInfo(run_name=name, model_size=size, data_source=source, data_volume=volume, epoch=10),
            )
            write_summary(runs / size / name / "doit-test.summary.json", s)
    paths = report([runs], tmp_path / "report")
    table = list(csv.reader((tmp_path / "report" / "doit-test.constructions.csv").open(encoding="utf-8")))
    assert table[0] == ["ability"] + [
        f"{size} {c}" for size in ("7b", "33b") for c in ("baseline", "reconstruct", "maximum", "mix-2560", "mix-40960")
    ]
    assert table[1] == ["training examples"] + ["10,000", "10,000", "39,564", "42,124", "80,524"] * 2
    assert table[2] == ["STEM - Biology"] + [f"{v:.1f}" for v in (40, 43, 42, 44, 41, 60, 63, 62, 64, 61)]
    assert table[3][0] == "Overall" and table[3][1:] == table[2][1:]
    # The curves hold the curated runs only (both volumes), not the constructions.
    scores = list(csv.reader((tmp_path / "report" / "doit-test.scores.csv").open(encoding="utf-8")))
    assert scores[0][1:-1] == ["7b curated 640", "7b curated 10k", "33b curated 640", "33b curated 10k"]
    assert tmp_path / "report" / "doit-test.constructions.md" in paths


def test_a_suites_report_hooks_title_its_abilities_and_draw_its_own_figure(tmp_path, monkeypatch):
    """report.py names no suite: a suite's registered figure is called for its groups only, with the chosen
    summaries (one epoch per run), and its registered titles label the rows."""
    import dataclasses

    from jaxtune.eval.suites import registry
    from jaxtune.study import report as report_module

    calls = []

    def figure(summaries, out_stem):
        calls.append((out_stem.name, sorted({s.run.epoch for s in summaries}), len(summaries)))
        path = out_stem.parent / f"{out_stem.name}.own.txt"
        path.write_text("drawn", encoding="utf-8")
        return [path]

    suites = registry.load_suites()
    cmmlu = dataclasses.replace(
        suites["cmmlu"], report=registry.ReportHooks(titles={"ethics": "Ethics (as cmmlu titles it)"}, figure=figure)
    )
    monkeypatch.setattr(registry, "SUITES", {**registry.SUITES, "cmmlu": cmmlu})
    monkeypatch.setattr(report_module, "_titles", functools.cache(report_module._titles.__wrapped__))
    for v in (10, 40):
        for epoch in (1, 2):
            write_summary(tmp_path / "runs" / f"c{v}-{epoch}.summary.json", summary("7b", "curated", v, epoch, "cmmlu"))
            write_summary(tmp_path / "runs" / f"d{v}-{epoch}.summary.json", summary("7b", "curated", v, epoch))
    written = report([tmp_path / "runs"], tmp_path / "out")
    assert calls == [("cmmlu-test", [2], 2)]
    assert tmp_path / "out" / "cmmlu-test.own.txt" in written
    assert "| Ethics (as cmmlu titles it) |" in (tmp_path / "out" / "cmmlu-test.scores.md").read_text(encoding="utf-8")
