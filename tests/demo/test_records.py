"""jaxtune.demo.records: the DoIT record builder and the JSON Lines writer, read back by the data readers
(jaxtune.data.formats) and by json line by line."""

from __future__ import annotations

import json

from jaxtune.data.formats import read_records
from jaxtune.data.records import Message
from jaxtune.demo.records import doit_record, write_jsonl


def test_records_read_back_as_the_doit_reader_sees_them(tmp_path):
    plain = doit_record("math", "1+1=？", "2", answer="2", idx=3)
    ranked = doit_record("code", "写函数", "好", fmt=1, choices=("好", "差", "坏"), history=[("你好", "你好！")], idx=4)
    path = write_jsonl(tmp_path / "d" / "math_1000.json", [plain, ranked])
    records, report = read_records(path, "doit")
    assert report.seen == 2 and report.skipped == 0
    a, b = records
    assert a.messages == (Message("user", "1+1=？"), Message("assistant", "2"))
    assert (a.ability, a.id, a.answer, a.question_format, a.choices) == ("math", "3", "2", 0, ())
    assert b.messages == (
        Message("user", "你好"),
        Message("assistant", "你好！"),
        Message("user", "写函数"),
        Message("assistant", "好"),
    )
    assert (b.ability, b.id, b.question_format, b.choices, b.answer) == ("code", "4", 1, ("好", "差", "坏"), None)


def test_optional_keys_only_when_given_in_the_study_order():
    assert list(doit_record("x", "q", "r")) == ["messages", "type", "question_format", "choices"]
    assert list(doit_record("x", "q", "r", answer="a", idx=0)) == [
        "messages",
        "type",
        "question_format",
        "choices",
        "answer",
        "idx",
    ]


def test_writer_streams_a_generator_and_writes_str_lines_as_they_stand(tmp_path):
    def rows():
        yield {"k": "中文"}
        yield '{"broken": '
        yield ""

    path = write_jsonl(tmp_path / "a" / "b" / "x.jsonl", rows())
    assert path.read_bytes() == '{"k": "中文"}\n{"broken": \n\n'.encode("utf-8")
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == {"k": "中文"}
