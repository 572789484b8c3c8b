"""jaxtune.data.jsonl: the one JSON Lines reader (line numbers, blank lines, BOM, bare NaN, bad lines, byte ranges)."""

from __future__ import annotations

import math

import pytest

from jaxtune.data.jsonl import JsonLinesError, read_json_lines


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
