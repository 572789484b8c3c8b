"""The study's selections of jaxtune/data/mixtures.py, checked against a literal re-run of make_data.py's logic."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from doit_fixtures import make_doit_layout
from make_data_reference import make_data

from jaxtune.data.mixtures import SelectionError, read_manifest, select_records, write_manifest
from jaxtune.data.records import DataError
from jaxtune.demo.records import write_jsonl


def _read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf8")]


def _study(root: Path, data_type: str) -> list[tuple[str, int]]:
    """make_data.py's selections over parsed records; (file ability, idx) in output order."""
    chosen = make_data(root, data_type, read=_read_records)
    return [(name, d["idx"]) for name, records in chosen.items() for d in records]


@pytest.fixture(scope="module")
def big_root(tmp_path_factory) -> Path:
    # Enough lines that reconstruct's and maximum's caps (64, 1000, 1305, 1306) bite on some abilities.
    return make_doit_layout(
        tmp_path_factory.mktemp("doit") / "root",
        per_1000=40,
        per_full=1400,
        per_valid=1,
        synthetic=200,
        user_len=3,
        reply_len=3,
    )


def _ids(selection) -> list[tuple[str, int]]:
    return [(r.ability, int(r.id)) for r in selection.records]


@pytest.mark.parametrize(
    "data_type",
    ["curated-10", "curated-160", "curated-400", "synthetic-40", "synthetic-200", "reconstruct", "maximum", "mix-160"],
)
def test_selection_equals_the_study(big_root, data_type):
    got = _ids(select_records(big_root, data_type))
    assert got == _study(big_root, data_type)
    assert len(got) == len(set(got))


def test_selection_sizes(big_root):
    assert select_records(big_root, "curated-160").counts() == {
        a: 16 for a in select_records(big_root, "curated-10").counts()
    }
    rec = select_records(big_root, "reconstruct").counts()
    assert rec["ethics"] == 64 and rec["creative_writing"] == 1000 and rec["chinese"] == 1306
    assert rec["biology"] == 1400 and rec["math"] == 1305
    assert select_records(big_root, "mix-0").counts() == select_records(big_root, "maximum").counts()
    assert select_records(big_root, "synthetic-40").counts() == {"general_instruction_gpt4": 40}


def test_baseline_is_curated_10000(tmp_path):
    root = make_doit_layout(
        tmp_path / "r", per_1000=1000, per_full=1, per_valid=1, synthetic=1, user_len=1, reply_len=1
    )
    base = select_records(root, "baseline")
    assert _ids(base) == _study(root, "curated-10000")
    assert len(base.records) == 10000


def test_count_map_takes_first_lines(big_root):
    sel = select_records(big_root, "biology:3,math:all")
    assert sel.counts() == {"biology": 3, "math": 1400}
    assert [int(r.id) for r in sel.records[:3]] == [0, 1, 2]
    with_others = select_records(big_root, "ethics:2,others:1")
    assert with_others.counts()["ethics"] == 2 and with_others.counts()["code"] == 1
    with pytest.raises(SelectionError, match="no curated/full file for physics"):
        select_records(big_root, "physics:3")


def test_selection_errors(doit_root, tmp_path):
    with pytest.raises(SelectionError, match="multiple of 10"):
        select_records(doit_root, "curated-15")
    with pytest.raises(SelectionError, match="draws 100 records from this file but it has 12"):
        select_records(doit_root, "curated-1000")
    with pytest.raises(SelectionError, match="unknown selection"):
        select_records(doit_root, "everything")
    with pytest.raises(SelectionError, match="has no curated/ folder"):
        select_records(doit_root / "curated" / "1000", "curated-10")
    assert select_records(doit_root / "curated", "curated-10").counts()["math"] == 1  # curated/ itself is accepted


def test_invalid_line_is_drawn_where_the_study_draws_it(doit_root):
    path = doit_root / "curated" / "1000" / "biology_1000.json"
    lines = path.read_text(encoding="utf-8").splitlines()
    clean = [int(json.loads(line)["idx"]) for line in lines]
    expected = [clean[i] for i in random.Random(0).sample(range(len(lines)), 5)]
    bad_position = random.Random(0).sample(range(len(lines)), 5)[2]
    lines[bad_position] = '{"messages": []}'
    write_jsonl(path, lines)
    with pytest.raises(DataError, match=r"biology_1000.json:\d+: messages"):
        select_records(doit_root, "curated-50")
    sel = select_records(doit_root, "curated-50", on_error="skip")
    biology = [int(r.id) for r in sel.records if r.ability == "biology"]
    assert biology == expected[:2] + expected[3:]
    assert sel.skipped.skipped == 1 and sel.skipped.seen == 50


def test_all_reads_one_split_folder(doit_root):
    sel = select_records(doit_root / "curated" / "valid", "all")
    assert len(sel.records) == 30 and sel.name == "all"


def test_manifest_roundtrip(doit_root, tmp_path):
    sel = select_records(doit_root, "curated-20")
    n = write_manifest(tmp_path / "run" / "manifest.jsonl", sel.records)
    entries = read_manifest(tmp_path / "run" / "manifest.jsonl")
    assert n == 20 == len(entries)
    assert entries[0] == {
        "id": sel.records[0].id,
        "ability": "biology",
        "source": sel.records[0].source,
        "line": sel.records[0].line,
    }


def _budget_file(path: Path, counts: dict) -> str:
    path.write_text(json.dumps({"total": sum(counts.values()), "counts": counts}), encoding="utf-8")
    return f"budget:{path}"


def test_budget_selection_with_uniform_counts_is_curated_n(big_root, tmp_path):
    abilities = select_records(big_root, "curated-10").counts()
    selection = _budget_file(tmp_path / "budget.json", {a: 4 for a in abilities})
    assert _ids(select_records(big_root, selection)) == _ids(select_records(big_root, "curated-40"))


def test_budget_selection_draws_the_studys_way(big_root, tmp_path):
    counts = {"biology": 3, "code": 0, "math": 7, "ethics": 1}
    sel = select_records(big_root, _budget_file(tmp_path / "b.json", counts), seed=5)
    assert sel.counts() == {"biology": 3, "ethics": 1, "math": 7}
    # By hand: one random.Random(seed), files in sorted name order, random.sample of each named ability's count.
    rng = random.Random(5)
    want = []
    for ability in sorted(counts):
        if counts[ability] == 0:
            continue
        lines = _read_records(big_root / "curated" / "1000" / f"{ability}_1000.json")
        want += [(ability, lines[i]["idx"]) for i in rng.sample(range(len(lines)), counts[ability])]
    assert [(r.ability, int(r.id)) for r in sel.records] == want
    manifest = tmp_path / "manifest.jsonl"
    assert write_manifest(manifest, sel.records) == 11
    assert [(e["ability"], e["line"]) for e in read_manifest(manifest)] == [(r.ability, r.line) for r in sel.records]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ('{"total": 3}', "'counts'"),
        ('{"counts": {"biology": -1}}', "counts.biology"),
        ('{"counts": {"biology": 2.5}}', "counts.biology"),
        ('{"counts": {"astrology": 2}}', "astrology"),
        ('{"counts": {"biology": 999}}', "biology_1000.json"),
    ],
)
def test_budget_selection_errors_name_file_and_key(big_root, tmp_path, content, message):
    path = tmp_path / "budget.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SelectionError, match=message):
        select_records(big_root, f"budget:{path}")
    with pytest.raises(SelectionError, match="is not a file"):
        select_records(big_root, f"budget:{tmp_path / 'missing.json'}")
