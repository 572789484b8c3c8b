"""jaxtune.data.jsonl: the one JSON Lines reader (line numbers, blank lines, BOM, bare NaN, bad lines, byte ranges)."""

from __future__ import annotations

import itertools
import math

import pytest

from jaxtune.data.jsonl import JsonLinesError, is_json_array_file, read_json_array, read_json_lines
from jaxtune.data.records import DataError


def _file(tmp_path, data: bytes):
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    return path


def test_values_come_with_the_editors_line_numbers_blank_lines_and_bom_passed_over(tmp_path):
    path = _file(tmp_path, b'\xef\xbb\xbf{"a": 1}\n\n  \t\r\n[2, "\xc3\xa9"]\n"x"\r\n')
    assert list(read_json_lines(path)) == [(1, {"a": 1}), (4, [2, "é"]), (5, "x")]


def test_bare_nan_is_refused_unless_allowed(tmp_path):
    path = _file(tmp_path, b'{"a": 1}\n{"score": NaN, "b": -Infinity}\n')
    with pytest.raises(JsonLinesError, match=r"f\.jsonl:2: bare NaN is not valid JSON") as info:
        list(read_json_lines(path))
    assert (info.value.source, info.value.line) == (str(path), 2)
    (_, first), (_, second) = read_json_lines(path, allow_nan=True)
    assert first == {"a": 1} and math.isnan(second["score"]) and second["b"] == -math.inf


def test_a_bad_line_raises_naming_file_line_and_column_or_is_yielded_and_reading_goes_on(tmp_path):
    path = _file(tmp_path, b'{"a": 1}\n{"a": 2\n\xff\xfe\n{"a": 3}\n')
    with pytest.raises(JsonLinesError, match=r"f\.jsonl:2: not valid JSON \(Expecting ',' delimiter at column 8\)"):
        list(read_json_lines(path))
    got = list(read_json_lines(path, bad="yield"))
    assert [line for line, _ in got] == [1, 2, 3, 4]
    assert got[0][1] == {"a": 1} and got[3][1] == {"a": 3}
    assert isinstance(got[1][1], JsonLinesError) and got[1][1].line == 2
    assert isinstance(got[2][1], JsonLinesError) and got[2][1].problem.startswith("not valid UTF-8 (invalid start byte")


def test_byte_ranges_read_each_line_once_with_its_number(tmp_path):
    lines = [b'{"i": %d}\n' % i for i in range(6)]
    path = _file(tmp_path, b"".join(lines))
    cut = sum(len(x) for x in lines[:3])
    head = list(read_json_lines(path, stop=cut))
    tail = list(read_json_lines(path, start=cut, first_line=4))
    assert head + tail == [(i + 1, {"i": i}) for i in range(6)]


def test_json_array_elements_come_with_their_first_line_and_a_bad_one_is_an_entry(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'\xef\xbb\xbf[\n  {"a": 1},\n  {"a": NaN},\n  ,\n  [2]\n]\n')
    assert is_json_array_file(path) and not is_json_array_file(_file(tmp_path, b'\n {"a": 1}\n'))
    entries = list(read_json_array(path))
    assert [(e.line, e.value) for e in entries if e.error is None] == [(2, {"a": 1}), (5, [2])]
    bad = [(e.line, e.error.field, e.error.problem.split(":")[0]) for e in entries if e.error is not None]
    assert bad == [(3, "[1]", "not valid JSON"), (4, "[2]", "an empty array element (two commas)")]


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ('[{"a": 1},\n {"a": 2}', 2, "JSON array is not closed with ']'"),
        ('[{"a": 1}]\n{"b": 2}', 1, "unexpected text after the closing ']'"),
        ('[{"a": 1},\n]', 2, "a ',' after the last element"),
    ],
)
def test_json_array_text_that_cannot_be_split_raises_after_the_elements_before_it(tmp_path, text, line, problem):
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    entries = read_json_array(path)
    assert next(entries).value == {"a": 1}
    with pytest.raises(DataError) as info:
        list(entries)
    assert info.value.line == line and info.value.problem.startswith(problem)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("text, values", [("[1}\n\n]", [1]), ('[{"a": 1}}, {"a": 2}]', [{"a": 1}, {"a": 2}])])
def test_a_stray_closer_where_a_comma_belongs_is_one_bad_entry_and_reading_goes_on(tmp_path, text, values):
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    entries = list(itertools.islice(read_json_array(path), 10))  # the old reader yielded the same entry forever
    assert [e.value for e in entries if e.error is None] == values
    assert [e.error.problem for e in entries if e.error is not None] == [
        "expected ',' before this array element, got '}'"
    ]
