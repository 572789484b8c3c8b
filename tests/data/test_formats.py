"""Readers and validation of jaxtune/data/formats.py."""

from __future__ import annotations

import json

import pytest

from jaxtune.data.formats import DEFAULT_ABILITY, ability_from_file_name, iter_records, read_records
from jaxtune.data.records import DataError, Message
from jaxtune.demo.records import write_jsonl


def _doit(content="回答", role="assistant", **extra):
    rec = {
        "messages": [{"role": "user", "content": "问题"}, {"role": role, "content": content}],
        "type": "math",
        "question_format": 0,
        "choices": [],
        "answer": "3",
        "idx": 7,
    }
    rec.update(extra)
    return rec


def test_doit_record_fields(tmp_path):
    path = write_jsonl(tmp_path / "math_1000.json", [_doit(extra_key="kept out"), _doit(idx=8, answer=4.5)])
    records, report = read_records(path, "doit")
    assert report.skipped == 0 and report.seen == 2
    r = records[0]
    assert r.messages == (Message("user", "问题"), Message("assistant", "回答"))
    assert (r.ability, r.id, r.answer, r.question_format, r.line, r.source) == ("math", "7", "3", 0, 1, str(path))
    assert records[1].answer == "4.5" and records[1].line == 2


def test_doit_ability_from_file_name_when_type_absent(tmp_path):
    rec = _doit()
    del rec["type"], rec["idx"]
    path = write_jsonl(tmp_path / "synthetic" / "general_instruction_gpt4_41k.json", [rec])
    (r,), _ = read_records(path, "doit")
    assert r.ability == "general_instruction_gpt4"
    assert r.id == "general_instruction_gpt4_41k:1"
    assert ability_from_file_name("role_play_1000.json") == "role_play"
    assert ability_from_file_name("creative_writing_valid.jsonl") == "creative_writing"


def test_belle_formats(tmp_path):
    belle = write_jsonl(tmp_path / "belle.json", [{"instruction": "翻译：", "input": "你好", "output": "Hello"}])
    (r,), _ = read_records(belle, "belle")
    assert r.messages == (Message("user", "翻译：你好"), Message("assistant", "Hello"))
    assert r.ability == DEFAULT_ABILITY and r.id == "belle:1"
    conv = write_jsonl(
        tmp_path / "conv.jsonl",
        [
            {
                "id": "c1",
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "assistant", "value": "b"},
                    {"from": "Human", "value": "c"},
                    {"from": "assistant", "value": "d"},
                ],
            }
        ],
    )
    (r,), _ = read_records(conv, "belle_conversations")
    assert [m.role for m in r.messages] == ["user", "assistant", "user", "assistant"] and r.id == "c1"


def test_alpaca_array_and_sharegpt(tmp_path):
    items = [
        {"instruction": "Add", "input": "1 and 2", "output": "3"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    records, _ = read_records(path, "alpaca")
    assert records[0].messages[0].content == "Add\n\n1 and 2" and records[1].messages[0].content == "Say hi"
    assert records[0].line == 2 and records[1].line == 7  # the line each object starts on
    share = write_jsonl(
        tmp_path / "share.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "be brief"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                ]
            }
        ],
    )
    (r,), _ = read_records(share, "sharegpt")
    assert [m.role for m in r.messages] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    "line, field, phrase",
    [
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}', "", "not valid JSON"),
        ('{"type": "math"}', "messages", "missing required field"),
        ('{"messages": "hi"}', "messages", "expected a list"),
        ('{"messages": [{"role": "bot", "content": "a"}]}', "messages[0].role", "unknown role 'bot'"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}',
            "messages[1].content",
            "empty assistant turn",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]}',
            "messages[1].content",
            "expected a string, got int",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}',
            "messages[1].content",
            "missing required field",
        ),
        (
            '{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}',
            "messages[1]",
            "last turn must be the assistant",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "question_format": 2}',
            "question_format",
            "expected 0",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "question_format": 1,'
            ' "choices": ["a"]}',
            "choices",
            "at least 2 choices",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "choices": [1, 2]}',
            "choices[0]",
            "expected a string",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": NaN}',
            "",
            "NaN is not valid JSON",
        ),
        ('[1, 2]', "", "expected a JSON object"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "type": 3}',
            "type",
            "expected a string",
        ),
    ],
)
def test_doit_errors_name_file_line_field(tmp_path, line, field, phrase):
    good = json.dumps(_doit(), ensure_ascii=False)
    path = write_jsonl(tmp_path / "math_1000.json", [good, "", line])  # the bad record is on line 3
    with pytest.raises(DataError) as info:
        read_records(path, "doit")
    err = info.value
    assert (err.source, err.line, err.field) == (str(path), 3, field)
    assert phrase in str(err) and f"{path}:3" in str(err)


@pytest.mark.parametrize(
    "fmt, obj, field",
    [
        ("belle", {"instruction": "q"}, "output"),
        ("belle", {"instruction": "q", "input": 3, "output": "a"}, "input"),
        ("belle", {"instruction": "q", "output": ""}, "output"),
        ("belle_conversations", {"conversations": [{"from": "robot", "value": "x"}]}, "conversations[0].from"),
        ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}, "conversations[1].value"),
        ("sharegpt", {"conversations": [{"from": "human", "value": "q"}]}, "conversations[0]"),
        (
            "messages",
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "id": [1]},
            "id",
        ),
    ],
)
def test_other_format_errors(tmp_path, fmt, obj, field):
    path = write_jsonl(tmp_path / "data.jsonl", [obj])
    with pytest.raises(DataError) as info:
        read_records(path, fmt)
    assert (info.value.line, info.value.field) == (1, field)


def test_skip_collects_and_summarises(tmp_path):
    lines = [json.dumps(_doit(idx=i), ensure_ascii=False) for i in range(5)]
    lines[1] = "{broken"
    lines[3] = json.dumps(_doit(content=""), ensure_ascii=False)
    path = write_jsonl(tmp_path / "math_1000.json", lines)
    records, report = read_records(path, "doit", on_error="skip")
    assert [r.id for r in records] == ["0", "2", "4"]
    assert (report.seen, report.skipped) == (5, 2)
    summary = report.summary()
    assert "skipped 2 invalid records of 5" in summary
    assert f"{path}:2" in summary and f"{path}:4: messages[1].content: empty assistant turn" in summary


def test_invalid_utf8_and_broken_array(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(_doit()).encode() + b"\n" + b'{"messages": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid UTF-8"):
        read_records(path, "doit")
    arr = tmp_path / "arr.json"
    arr.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": \n]', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(arr, "alpaca")
    assert info.value.line == 3 and info.value.field == "[1]"
    records, report = read_records(arr, "alpaca", on_error="skip")
    assert len(records) == 1 and report.skipped == 1


def test_directory_reads_sorted_files_and_reports_empty(tmp_path):
    write_jsonl(tmp_path / "d" / "b_1.json", [_doit(idx=2)])
    write_jsonl(tmp_path / "d" / "a_1.jsonl", [_doit(idx=1)])
    (tmp_path / "d" / "notes.txt").write_text("not data")
    assert [r.id for r in iter_records(tmp_path / "d", "doit")] == ["1", "2"]
    (tmp_path / "root" / "curated").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="curated/"):
        list(iter_records(tmp_path / "root", "doit"))


def _array_with_one_bad_element(tmp_path, damage, indent):
    """A JSON array of 30 alpaca records whose element [10] is damaged by ``damage`` (text -> text)."""
    elements = [
        json.dumps({"instruction": f"q{i}", "output": f"a{i}", "id": i}, indent=indent, ensure_ascii=False)
        for i in range(30)
    ]
    elements[10] = damage(elements[10])
    sep = ",\n" if indent is None else ",\n"
    body = sep.join(e if indent is None else "\n".join("  " + ln for ln in e.splitlines()) for e in elements)
    path = tmp_path / f"arr-{indent}.json"
    path.write_bytes(("[\n" + body + "\n]\n").encode("utf-8", errors="surrogateescape"))
    return path


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize(
    "damage",
    [
        lambda e: e.replace('"a10"', "nan"),  # a bare word
        lambda e: e.replace('"a10"', '"a10'),  # a string left open
        lambda e: e.replace('"a10"', '["a10"'),  # a bracket left open
        lambda e: e.rstrip().rstrip("}"),  # the element's closing brace missing
        lambda e: e.replace('"q10",', '"q10"'),  # a comma missing inside
        lambda e: e.replace('"a10"', '"a\udcff10"'),  # invalid UTF-8 inside a string
        lambda e: "," + e,  # an empty element before it
    ],
    ids=["bare-word", "open-string", "open-bracket", "no-closing-brace", "no-comma", "bad-utf8", "empty-element"],
)
def test_one_bad_array_element_loses_only_itself(tmp_path, damage, indent):
    # Before: a bad element ended the file (10 of 29 good records read, "skipped 1 invalid records of 11").
    path = _array_with_one_bad_element(tmp_path, damage, indent)
    records, report = read_records(path, "alpaca", on_error="skip")
    ids = [int(r.id) for r in records]
    assert report.skipped == 1 and report.seen == len(ids) + 1
    if ids != [i for i in range(30) if i != 10]:  # an empty element is one more element; record 10 itself survives
        assert ids == list(range(30))
    (example,) = report.examples
    assert example.source == str(path) and example.field in ("[10]", "[11]")
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    start_line = text[: text.index('"q10"')].count("\n") + 1
    assert example.line in (start_line, start_line - 1, start_line - 2)  # the element's first line
    assert f"skipped 1 invalid records of {report.seen}" in report.summary()
    with pytest.raises(DataError) as info:  # on_error=raise names the same element
        read_records(path, "alpaca")
    assert (info.value.line, info.value.field) == (example.line, example.field)


def test_an_array_that_cannot_be_split_names_what_is_unreadable(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(
        '[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": {"x": [1, 2}, '
        '{"instruction": "d", "output": "e"}',
        encoding="utf-8",
    )  # one line, never closed
    records, report = read_records(path, "alpaca", on_error="skip")
    assert [r.messages[0].content for r in records] == ["a"]
    assert report.skipped == 1 and report.seen == 2
    assert report.unreadable == [
        f"{path}:1: the JSON array from element [1] on cannot be split into elements (a "
        f"string or bracket left open?); the rest of the file (lines 1-1) is unreadable"
    ]
    assert "unreadable" in report.summary()
    trailing = tmp_path / "trailing.json"
    trailing.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": "d"},\n]\n')
    records, report = read_records(trailing, "alpaca", on_error="skip")
    assert len(records) == 2 and report.skipped == 0 and report.seen == 2
    assert report.unreadable == [
        f"{trailing}:3: a ',' after the last element of the JSON array (every element before it was read)"
    ]
    with pytest.raises(DataError, match=r"trailing.json:3: a ',' after the last element"):
        read_records(trailing, "alpaca")


def test_upper_case_suffixes_in_a_folder_are_read(tmp_path):
    # Before: `.JSONL`/`.JSON` files in a data folder were ignored without a word.
    write_jsonl(tmp_path / "d" / "a_1.JSONL", [_doit(idx=1, type=None)])
    write_jsonl(tmp_path / "d" / "b_2.Json", [_doit(idx=2)])
    write_jsonl(tmp_path / "d" / "role_play_1000.json", [_doit(idx=3, type=None)])
    (tmp_path / "d" / "notes.txt").write_text("not data")
    records = list(iter_records(tmp_path / "d", "doit"))
    assert [(r.id, r.ability) for r in records] == [("1", "a"), ("2", "math"), ("3", "role_play")]
    assert ability_from_file_name("role_play_full.JSON") == "role_play"


def test_study_folders_read_upper_case_suffixes_too(tmp_path):
    from jaxtune.data.mixtures import select_records

    full = tmp_path / "curated" / "full"
    write_jsonl(full / "math_full.JSON", [_doit(idx=i, type=None) for i in range(3)])
    write_jsonl(full / "code_full.jsonl", [_doit(idx=10 + i, type=None) for i in range(2)])
    chosen = select_records(tmp_path, "math:2,code:all")
    assert sorted((r.ability, r.id) for r in chosen.records) == [
        ("code", "10"),
        ("code", "11"),
        ("math", "0"),
        ("math", "1"),
    ]
