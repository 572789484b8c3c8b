"""BELLE volume selections of jaxtune/data/belle_volumes.py on generated records: nesting, determinism, the same
records from JSON Lines and from the prepared dataset, independence from the process count, the Alpaca mix and a
manifest that lists every record trained on."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import grain
import numpy as np
import pytest

from jaxtune.config.schema import DataConfig
from jaxtune.data.belle_volumes import STUDY_VOLUMES, nested_indices, parse_belle_selection, select_belle
from jaxtune.data.mixtures import SelectionError, read_manifest
from jaxtune.data.pipeline import BATCH_KEYS, build_train_pipeline
from jaxtune.data.prepare import prepare_dataset
from jaxtune.data.records import DataError
from jaxtune.demo.records import write_jsonl

DEMO_TOKENIZER = Path(__file__).resolve().parents[2] / "jaxtune" / "demo" / "tokenizer"
POPULATION = 240


def _belle_records(n: int, start: int = 0) -> list[dict]:
    return [
        {"instruction": f"第{i}条指令：", "input": f"内容{i}" if i % 3 else "", "output": f"回答{i}。", "id": f"b{i}"}
        for i in range(start, start + n)
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two JSON Lines files (the folder's population: 150 + 90 records, blank lines between some)."""
    root = tmp_path_factory.mktemp("belle")
    records = _belle_records(POPULATION)
    write_jsonl(
        root / "corpus" / "a.json",
        [json.dumps(r, ensure_ascii=False) + ("\n" if i % 40 == 0 else "") for i, r in enumerate(records[:150])],
    )
    write_jsonl(root / "corpus" / "b.json", records[150:])
    return root / "corpus"


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("alpaca") / "alpaca_data.json"
    rows = [
        {"instruction": f"Give example {i}.", "input": "" if i % 2 else f"case {i}", "output": f"Example {i}."}
        for i in range(30)
    ]
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")  # a JSON array, as the Alpaca release is
    return path


def _ids(path, selection, **kw) -> list[str]:
    data = select_belle(path, selection, **kw)
    return [r.id for r in data.source.__getitems__(range(len(data.source)))]


def test_names_parse_and_the_study_volumes_are_declared() -> None:
    assert list(STUDY_VOLUMES.values()) == [200_000, 600_000, 1_000_000, 2_000_000]
    assert [parse_belle_selection(n).belle for n in STUDY_VOLUMES] == list(STUDY_VOLUMES.values())
    mixed = parse_belle_selection("belle-600k+alpaca")
    assert (mixed.belle, mixed.alpaca, mixed.alpaca_count, mixed.source_label) == (600_000, True, None, "belle+alpaca")
    assert parse_belle_selection("belle-all+alpaca-5k").alpaca_count == 5000
    assert parse_belle_selection("belle-40").source_label == "belle"
    for bad in ("belle-12x", "belle-", "belle-2m+alpaka", "belle-0"):
        with pytest.raises(SelectionError, match="belle-"):
            parse_belle_selection(bad)


def test_volumes_are_nested_seeded_and_in_corpus_order(corpus) -> None:
    volumes = [20, 60, 100, POPULATION]
    chosen = [_ids(corpus, f"belle-{n}", seed=3) for n in volumes]
    assert [len(c) for c in chosen] == volumes
    for small, large in zip(chosen, chosen[1:]):
        assert set(small) < set(large)
    assert sorted(chosen[-1], key=lambda i: int(i[1:])) == [f"b{i}" for i in range(POPULATION)]
    for c in chosen:  # read back in corpus order
        assert c == sorted(c, key=lambda i: int(i[1:]))
    assert _ids(corpus, "belle-60", seed=3) == chosen[1]
    assert set(_ids(corpus, "belle-60", seed=4)) != set(chosen[1])
    # The permutation is numpy's frozen legacy stream: the same ids on every numpy version.
    want = np.sort(np.random.RandomState(3).permutation(POPULATION)[:20])
    assert chosen[0] == [f"b{i}" for i in want]


def test_the_study_volumes_nest_in_a_2m_corpus() -> None:
    chosen = [nested_indices(2_000_000, n, seed=0, where="2M") for n in STUDY_VOLUMES.values()]
    assert [len(c) for c in chosen] == list(STUDY_VOLUMES.values())
    for small, large in zip(chosen, chosen[1:]):
        assert np.isin(small, large).all()
    assert np.array_equal(chosen[-1], np.arange(2_000_000))


def test_prepared_dataset_gives_the_same_records(corpus, tmp_path) -> None:
    prepared = tmp_path / "prepared"
    prepare_dataset(corpus, prepared, format="belle", part_bytes=4096)  # several TFDS splits
    for n in (20, 100):
        data = select_belle(prepared, f"belle-{n}", seed=3)
        files = select_belle(corpus, f"belle-{n}", seed=3)
        got = data.source.__getitems__(range(len(data.source)))
        want = files.source.__getitems__(range(len(files.source)))
        assert got == want and len(got) == n
        assert {r.ability for r in got} == {"belle"} and data.abilities == ["belle"]
    with pytest.raises(SelectionError, match=f"draws 300 records but it holds {POPULATION}"):
        select_belle(prepared, "belle-300")


def test_alpaca_mix_and_its_errors(corpus, alpaca) -> None:
    data = select_belle(corpus, "belle-50+alpaca", seed=0, alpaca_path=alpaca)
    records = data.source.__getitems__(range(len(data.source)))
    assert data.counts == {"belle": 50, "alpaca": 30} and data.abilities == ["alpaca", "belle"]
    tail = records[50:]
    assert all(r.ability == "alpaca" and r.source == str(alpaca) for r in tail)
    # BELLE's training code concatenates instruction and input: "Human: " + instruction + input
    assert tail[0].messages[0].content == "Give example 0.case 0" and tail[1].messages[0].content == "Give example 1."
    part = select_belle(corpus, "belle-50+alpaca-10", seed=0, alpaca_path=alpaca)
    assert part.counts["alpaca"] == 10
    assert set(_ids(corpus, "belle-50+alpaca-10", alpaca_path=alpaca)) < set(
        _ids(corpus, "belle-50+alpaca", alpaca_path=alpaca)
    )
    with pytest.raises(SelectionError, match="set data.alpaca_path"):
        select_belle(corpus, "belle-50+alpaca")
    with pytest.raises(SelectionError, match="draws 31 records but it holds 30"):
        select_belle(corpus, "belle-50+alpaca-31", alpaca_path=alpaca)


def test_selections_pickle_for_grain_workers(corpus, alpaca, tmp_path) -> None:
    prepared = tmp_path / "prepared"
    prepare_dataset(corpus, prepared, format="belle")
    for path in (corpus, prepared):
        source = select_belle(path, "belle-30+alpaca-5", alpaca_path=alpaca).source
        copy = pickle.loads(pickle.dumps(source))
        assert copy.__getitems__([0, 29, 30, 34, 3]) == source.__getitems__([0, 29, 30, 34, 3])
        with pytest.raises(IndexError):
            copy.__getitems__([35])


def test_a_drawn_invalid_line_is_named_or_skipped(tmp_path) -> None:
    rows = [json.dumps(r, ensure_ascii=False) for r in _belle_records(10)]
    rows[4] = '{"instruction": "缺少输出"}'
    path = write_jsonl(tmp_path / "bad.json", rows)
    with pytest.raises(DataError, match=r"bad\.json:5: output: missing required field"):
        select_belle(path, "belle-10")
    skipped = select_belle(path, "belle-10", on_error="skip")
    assert len(skipped.source) == 9 and skipped.skipped.skipped == 1 and skipped.skipped.seen == 10


def _cfg(corpus: Path, alpaca: Path, **kw) -> DataConfig:
    values = dict(
        format="belle",
        path=str(corpus),
        selection="belle-64+alpaca",
        alpaca_path=str(alpaca),
        tokenizer=str(DEMO_TOKENIZER),
        template="belle",
        max_len=64,
        packing=False,
        selection_seed=5,
    )
    values.update(kw)
    return DataConfig(**values)


def test_the_manifest_lists_every_record_and_hosts_see_the_same_selection(corpus, alpaca, tmp_path) -> None:
    cfg = _cfg(corpus, alpaca)
    single = build_train_pipeline(
        cfg,
        global_batch_size=8,
        shard_options=grain.sharding.ShardOptions(0, 1),
        manifest_path=tmp_path / "manifest.jsonl",
    )
    manifest = read_manifest(tmp_path / "manifest.jsonl")
    expected = select_belle(corpus, cfg.selection, seed=5, alpaca_path=alpaca)
    want = [(r.id, r.ability, r.source, r.line) for r in expected.source.__getitems__(range(len(expected.source)))]
    assert [(m["id"], m["ability"], m["source"], m["line"]) for m in manifest] == want
    assert len(manifest) == 64 + 30 == single.info.num_examples
    assert single.info.examples_per_ability == {"alpaca": 30, "belle": 64}
    batches = list(single.iterator)
    rows_with_data = sum(int((b["segment_ids"] > 0).any(axis=1).sum()) for b in batches)
    assert rows_with_data == 94  # one example per row, each selected record exactly once

    # Two and four hosts: the same manifest, and host batches that interleave into the single host's batches.
    for count in (2, 4):
        hosts = [
            build_train_pipeline(
                cfg,
                global_batch_size=8,
                manifest_path=tmp_path / f"m{count}-{h}.jsonl",
                shard_options=grain.sharding.ShardOptions(h, count),
            )
            for h in range(count)
        ]
        for h in range(count):
            assert read_manifest(tmp_path / f"m{count}-{h}.jsonl") == manifest
        per_host = [list(p.iterator) for p in hosts]
        for step, batch in enumerate(batches):
            for key in BATCH_KEYS:
                merged = np.empty_like(batch[key])
                for h in range(count):
                    merged[h::count] = per_host[h][step][key]
                assert np.array_equal(merged, batch[key]), (count, step, key)


def test_prepared_corpus_through_the_pipeline(corpus, alpaca, tmp_path) -> None:
    prepared = tmp_path / "prepared"
    prepare_dataset(corpus, prepared, format="belle")
    files = build_train_pipeline(_cfg(corpus, alpaca), global_batch_size=8, manifest_path=tmp_path / "f.jsonl")
    arrays = build_train_pipeline(_cfg(prepared, alpaca), global_batch_size=8, manifest_path=tmp_path / "p.jsonl")
    assert read_manifest(tmp_path / "f.jsonl") == read_manifest(tmp_path / "p.jsonl")
    assert arrays.info.selection.startswith("belle-64+alpaca of prepared:")
    for a, b in zip(files.iterator, arrays.iterator, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in BATCH_KEYS)
