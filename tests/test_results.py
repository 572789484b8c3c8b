"""The summary schema: building, strict JSON round trip, validation errors naming file and field, tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from jaxtune.results import (
    ResultsError,
    RunInfo,
    ability_score,
    find_summaries,
    format_table,
    make_summary,
    parse_selection,
    read_summary,
    summary_stem,
    write_summary,
)


def _summary():
    abilities = [
        ability_score("biology", [1, 0, 1, 1], [0.25] * 4, study_total=3.0),
        ability_score("math", [0, 1], [0.0, 0.0]),
    ]
    run = RunInfo(run_name="r", model_size="7b", data_source="curated", data_volume=160, epoch=10)
    return make_summary("doit", "test", "study", abilities, run, max_new_tokens=1024, note=math.nan)


def test_scores_and_means() -> None:
    s = _summary()
    assert [(a.n, a.correct, a.score, a.chance) for a in s.abilities] == [(4, 3.0, 75.0, 25.0), (2, 1.0, 50.0, 0.0)]
    assert s.overall == 62.5 and s.overall_chance == 12.5
    fraction = ability_score("qa", [0.5, 1.0], unit="fraction")
    assert fraction.score == 0.75 and fraction.chance is None
    with pytest.raises(ValueError, match="no scored items"):
        ability_score("x", [])


def test_round_trip_is_strict_json(tmp_path: Path) -> None:
    path = write_summary(tmp_path / "a" / "doit-test.summary.json", _summary())
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and json.loads(text)["details"]["note"] is None
    back = read_summary(path)
    assert back.run == _summary().run and back.ability("biology").details == {"study_total": 3.0}
    assert back.overall == 62.5 and back.stem == "doit-test"
    assert find_summaries([tmp_path, path]) == [path.resolve()]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("suite"), "missing field 'suite'"),
        (lambda d: d["run"].update(data_volume="160"), "run: field 'data_volume' must be int"),
        (lambda d: d["abilities"][1].update(score=True), r"abilities\[1\]: field 'score' must be int/float"),
        (lambda d: d.update(unit="points"), "field 'unit' must be 'percent' or 'fraction'"),
        (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
    ],
)
def test_validation_names_file_and_field(tmp_path: Path, mutate, message: str) -> None:
    path = write_summary(tmp_path / "s.summary.json", _summary())
    d = json.loads(path.read_text(encoding="utf-8"))
    mutate(d)
    path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ResultsError, match=f"s.summary.json: {message}"):
        read_summary(path)


def test_selection_names_and_stems() -> None:
    assert parse_selection("curated-160") == ("curated", 160)
    assert parse_selection("synthetic-40960") == ("synthetic", 40960)
    assert parse_selection("mix-2560") == ("mix", None)
    assert parse_selection("maximum") == ("maximum", None)
    assert summary_stem("doit", "test", "corrected") == "doit-test-corrected"
    assert summary_stem("belle", "eval_set", "judge") == "belle-eval_set"


def test_table() -> None:
    lines = format_table(_summary()).splitlines()
    assert lines[0] == "doit test [study scorer, percent]"
    assert lines[3].split() == ["biology", "4", "3", "75.00", "25.00"]
    assert lines[-1].split() == ["overall", "(mean)", "6", "62.50", "12.50"]


def test_where_it_ran_round_trips_and_old_summaries_still_read(tmp_path: Path) -> None:
    summary = _summary()
    summary.run.mesh, summary.run.device_count, summary.run.process_count = {"data": 2, "fsdp": 2, "tensor": 2}, 8, 2
    path = write_summary(tmp_path / "new.summary.json", summary)
    back = read_summary(path)
    assert (back.run.mesh, back.run.device_count, back.run.process_count) == ({"data": 2, "fsdp": 2, "tensor": 2}, 8, 2)
    # A summary written before the mesh was recorded has none of the three fields.
    d = json.loads(path.read_text(encoding="utf-8"))
    for key in ("mesh", "device_count", "process_count"):
        del d["run"][key]
    old = tmp_path / "old.summary.json"
    old.write_text(json.dumps(d), encoding="utf-8")
    assert (read_summary(old).run.mesh, read_summary(old).run.process_count) == (None, None)
    d["run"]["mesh"] = {"data": "2"}
    old.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ResultsError, match=r"old.summary.json: run: field 'mesh' must map axis names to integer sizes"):
        read_summary(old)
