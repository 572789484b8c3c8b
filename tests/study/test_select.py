"""``jaxtune select`` (jaxtune/study/select.py): every one of make_data.py's 19 data types, byte for byte, against a literal
re-run of make_data.py's logic over the raw lines (module-level random, list slicing, its file naming)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from make_data_reference import make_data

from jaxtune.cli import main
from jaxtune.data.mixtures import (
    STUDY_ABILITIES,
    STUDY_DATA_TYPES,
    SelectionError,
    read_manifest,
    select_records,
    write_manifest,
)
from jaxtune.demo.records import doit_record
from jaxtune.study.select import select_study_data


def _line(rng: random.Random, ability: str, idx: int) -> bytes:
    record = doit_record(ability, f"问{ability}{idx}", "答" * rng.randint(1, 3), idx=idx)
    # Vary the bytes json.dumps would not reproduce: spacing, escapes, key order, CRLF endings.
    style = rng.randrange(4)
    if style == 0:
        text = json.dumps(record, ensure_ascii=False)
    elif style == 1:
        text = json.dumps(record, separators=(",", ":"))
    elif style == 2:
        text = json.dumps(dict(reversed(list(record.items()))), ensure_ascii=False, indent=None)
    else:
        text = json.dumps(record, ensure_ascii=False) + "  "
    return text.encode("utf-8") + (b"\r\n" if rng.random() < 0.1 else b"\n")


def _write(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The DoIT layout with enough lines for every data type (curated-10000 takes all 1000 of each ability file,
    synthetic-40960 the whole synthetic file, reconstruct 1306 of chinese)."""
    rng = random.Random(1)
    root = tmp_path_factory.mktemp("doit")
    for a in STUDY_ABILITIES:
        _write(root / "curated" / "1000" / f"{a}_1000.json", [_line(rng, a, i) for i in range(1000)])
        n_full = 1400 if a != "biology" else 900
        _write(root / "curated" / "full" / f"{a}_full.json", [_line(rng, a, i) for i in range(n_full)])
    _write(
        root / "synthetic" / "40960" / "general_instruction_gpt4_41k.json",
        [_line(rng, "synthetic", i) for i in range(40960)],
    )
    return root


def test_there_are_nineteen_data_types():
    assert len(STUDY_DATA_TYPES) == 19 == len(set(STUDY_DATA_TYPES))


@pytest.mark.parametrize("data_type", STUDY_DATA_TYPES)
def test_select_writes_make_data_files_byte_for_byte(root, tmp_path, data_type):
    expected = {f"{name}.json": lines for name, lines in make_data(root, data_type).items()}
    out = select_study_data(root, data_type, tmp_path / data_type)
    written = {p.name: p.read_bytes() for p in (tmp_path / data_type).iterdir()}
    assert sorted(written) == sorted(expected)
    for name, lines in expected.items():
        assert written[name] == b"".join(lines), name
    assert out.counts == {name: len(lines) for name, lines in expected.items()}


def test_select_file_names_follow_make_data(root, tmp_path):
    select_study_data(root, "mix-2560", tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "role_play.json" in names and "general_instruction_gpt4.json" in names and len(names) == 11


def test_cli_prints_counts_per_file(root, tmp_path, capsys):
    code = main(["select", str(root), "curated-40", str(tmp_path / "c40")])
    out = capsys.readouterr().out
    assert code == 0
    assert "curated-40: 40 records in 10 files" in out
    for a in STUDY_ABILITIES:
        assert any(line.split() == [f"{a}.json", "4"] for line in out.splitlines()), a


def test_cli_unknown_data_type_lists_the_valid_ones(root, tmp_path, capsys):
    code = main(["select", str(root), "curated-20", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "curated-20" in err
    assert all(t in err for t in STUDY_DATA_TYPES)
    assert not (tmp_path / "x").exists()


def test_seed_changes_the_sample(root, tmp_path):
    a = select_study_data(root, "curated-10", tmp_path / "a")
    b = select_study_data(root, "curated-10", tmp_path / "b", seed=1)
    assert a.counts == b.counts
    assert (tmp_path / "a" / "math.json").read_bytes() != (tmp_path / "b" / "math.json").read_bytes()


def test_a_selected_line_that_is_not_json_is_named(tmp_path):
    root = tmp_path / "root"
    for a in STUDY_ABILITIES:
        _write(root / "curated" / "1000" / f"{a}_1000.json", [b'{"idx": 0}\n', b"{broken\n"])
    assert random.Random(0).sample(range(2), 1) == [1]  # seed 0 draws line 2 of the first file, biology's
    with pytest.raises(
        SelectionError, match=r"biology_1000\.json:2: the selection takes this line, but it is not valid JSON"
    ):
        select_study_data(root, "curated-10", tmp_path / "out")


def test_training_manifest_traces_each_record_to_its_corpus_line(root, tmp_path):
    """The manifest's (source, line) of a selection trained on points at the very line select writes."""
    selection = select_records(root, "curated-160")
    write_manifest(tmp_path / "manifest.jsonl", selection.records)
    select_study_data(root, "curated-160", tmp_path / "sel")
    entries = read_manifest(tmp_path / "manifest.jsonl")
    assert len(entries) == 160
    by_file: dict[str, list[bytes]] = {}
    for e in entries:
        corpus_line = Path(e["source"]).read_bytes().splitlines(keepends=True)[e["line"] - 1]
        assert json.loads(corpus_line)["idx"] == int(e["id"])
        by_file.setdefault(e["ability"] + ".json", []).append(corpus_line)
    for name, lines in by_file.items():
        assert (tmp_path / "sel" / name).read_bytes() == b"".join(lines)
