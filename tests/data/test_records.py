"""jaxtune.data.records: the record types, their JSON form, and the report of skipped records."""

from __future__ import annotations

import json
import pickle

from jaxtune.data.records import DataError, Message, Record, SkipReport, record_from_json, record_to_json


def test_record_json_roundtrip() -> None:
    record = Record(
        messages=(Message("user", "问题"), Message("assistant", "回答")),
        ability="code",
        id="7",
        source="code_1000.json",
        line=3,
        question_format=1,
        choices=("a", "b", "c"),
        answer="3",
    )
    assert record_from_json(record_to_json(record)) == record
    plain = Record(messages=record.messages, ability="general", id="x:1")
    assert set(json.loads(record_to_json(plain))) == {"messages", "ability", "id", "source", "line"}
    assert record_from_json(record_to_json(plain)) == plain


def test_data_errors_name_file_line_field_and_survive_pickling() -> None:
    error = DataError("a.jsonl", 4, "messages[1].role", "unknown role 'bot'")
    assert str(error) == "a.jsonl:4: messages[1].role: unknown role 'bot'"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert str(DataError("a.jsonl", 0, "", "empty")) == "a.jsonl: empty"


def test_skip_reports_merge_and_keep_the_first_examples() -> None:
    first, second = SkipReport(max_examples=2), SkipReport()
    first.seen, second.seen = 3, 4
    first.add(DataError("a.jsonl", 1, "", "not valid JSON"))
    for line in (2, 3):
        second.add(DataError("b.jsonl", line, "output", "empty assistant turn"))
    second.unreadable.append("b.jsonl:9: the rest is unreadable")
    first.merge(second)
    assert (first.seen, first.skipped, len(first.examples)) == (7, 3, 2)
    assert first.by_source == {"a.jsonl": 1, "b.jsonl": 2} and first.by_field == {"(line)": 1, "output": 2}
    summary = first.summary(show=1)
    assert summary.startswith("skipped 3 invalid records of 7") and "... and 2 more" in summary
    assert "b.jsonl:9: the rest is unreadable" in summary
    assert first.to_dict()["examples"] == ["a.jsonl:1: not valid JSON", "b.jsonl:2: output: empty assistant turn"]
