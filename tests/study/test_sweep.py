"""jaxtune/study/sweep.py: the data source and volume each selection's results are plotted under."""

from __future__ import annotations

from jaxtune.data.mixtures import write_manifest
from jaxtune.data.records import Message, Record
from jaxtune.study.sweep import selection_source_and_volume


def test_sources_and_volumes(tmp_path) -> None:
    assert selection_source_and_volume("curated-160", tmp_path) == ("curated", 160)
    assert selection_source_and_volume("mix-640", tmp_path) == ("mix", None)
    assert selection_source_and_volume("belle-600k+alpaca", tmp_path) == ("belle+alpaca", 600_000)
    assert selection_source_and_volume("belle-2m", tmp_path) == ("belle", 2_000_000)
    assert selection_source_and_volume("belle-all", tmp_path) == ("belle", None)  # no manifest yet
    turn = (Message("user", "q"), Message("assistant", "a"))
    records = [Record(turn, "belle", f"b{i}") for i in range(3)] + [Record(turn, "alpaca", f"a{i}") for i in range(2)]
    write_manifest(tmp_path / "manifest.jsonl", records)
    assert selection_source_and_volume("belle-all+alpaca", tmp_path) == ("belle+alpaca", 3)


def test_volumes_that_depend_on_the_data_are_counted_from_the_manifest(tmp_path) -> None:
    """maximum, reconstruct and mix-N runs get their data volume (the report used to leave them out without one)."""
    assert selection_source_and_volume("baseline", tmp_path) == ("curated", 10000)
    assert selection_source_and_volume("mix-0", tmp_path) == ("maximum", None)
    turn = (Message("user", "q"), Message("assistant", "a"))
    write_manifest(tmp_path / "manifest.jsonl", [Record(turn, "ethics", f"e{i}") for i in range(7)])
    assert selection_source_and_volume("maximum", tmp_path) == ("maximum", 7)
    assert selection_source_and_volume("mix-2560", tmp_path) == ("mix", 7)
    assert selection_source_and_volume("reconstruct", tmp_path) == ("reconstruct", 7)
    assert selection_source_and_volume("curated-40", tmp_path) == ("curated", 40)
