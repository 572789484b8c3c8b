"""``jaxtune prepare`` (jaxtune/data/prepare.py): ArrayRecord datasets through a TFDS builder, read by random access."""

from __future__ import annotations

import json
import pickle

import grain
import numpy as np
import pytest

from jaxtune.config.schema import DataConfig
from jaxtune.data.formats import read_records
from jaxtune.data.pipeline import PipelineError, build_train_pipeline
from jaxtune.data.prepare import PreparedRecords, is_prepared_dataset, plan_parts, prepare_dataset
from jaxtune.data.records import DataError
from jaxtune.demo.records import write_jsonl

ONE_HOST = grain.sharding.ShardOptions(shard_index=0, shard_count=1)


def test_prepare_keeps_every_record_in_order(doit_root, tmp_path):
    source = doit_root / "curated" / "full"
    result = prepare_dataset(source, tmp_path / "prepared", "doit")
    expected, _ = read_records(source, "doit")
    assert result.num_records == len(expected) == 200 and result.abilities["math"] == 20
    assert is_prepared_dataset(tmp_path / "prepared")
    records = PreparedRecords(tmp_path / "prepared")
    assert len(records) == 200 and records[0] == expected[0] and records[199] == expected[199]
    assert records.__getitems__([5, 3]) == [expected[5], expected[3]]
    assert list(pickle.loads(pickle.dumps(records))) == expected  # reopened lazily after pickling
    with pytest.raises(FileExistsError):
        prepare_dataset(source, tmp_path / "prepared", "doit")
    assert prepare_dataset(source / "math_full.json", tmp_path / "prepared", "doit", overwrite=True).num_records == 20


def test_prepare_in_parts_keeps_input_order_and_lines(doit_root, tmp_path):
    source = doit_root / "curated" / "full"
    parts = plan_parts(source, part_bytes=3000)
    assert len(parts) > 10 and any(p.start > 0 for part in parts for p in part)  # files cut inside
    prepare_dataset(source, tmp_path / "prepared", "doit", part_bytes=3000)
    expected, _ = read_records(source, "doit")
    got = list(PreparedRecords(tmp_path / "prepared"))
    assert got == expected  # same order, same file and line of every record


def test_prepare_invalid_records(tmp_path):
    lines = [
        json.dumps({"instruction": f"问题{i}", "input": "", "output": f"答案{i}"}, ensure_ascii=False) for i in range(6)
    ]
    lines[4] = '{"instruction": "q"}'
    path = write_jsonl(tmp_path / "belle.json", lines)
    with pytest.raises(DataError, match=r"belle.json:5: output: missing required field"):
        prepare_dataset(path, tmp_path / "out", "belle")
    assert not is_prepared_dataset(tmp_path / "out")
    result = prepare_dataset(path, tmp_path / "out2", "belle", on_error="skip")
    assert result.num_records == 5 and result.skipped.skipped == 1
    meta = json.loads((tmp_path / "out2" / "jaxtune_prepared.json").read_text())
    assert meta["skipped"]["skipped"] == 1 and meta["abilities"] == {"general": 5}


def test_prepared_dataset_feeds_the_same_batches(doit_root, doit_tokenizer_path, tmp_path):
    folder = doit_root / "curated" / "full"
    prepare_dataset(folder, tmp_path / "prepared", "doit")
    common = dict(tokenizer=str(doit_tokenizer_path), max_len=256)
    from_files = build_train_pipeline(
        DataConfig(path=str(folder), **common), global_batch_size=4, epochs=2, shard_options=ONE_HOST
    )
    from_prepared = build_train_pipeline(
        DataConfig(path=str(tmp_path / "prepared"), **common), global_batch_size=4, epochs=2, shard_options=ONE_HOST
    )
    assert from_prepared.info.ability_names == from_files.info.ability_names
    assert from_prepared.info.total_steps == from_files.info.total_steps
    for a, b in zip(from_files.iterator, from_prepared.iterator):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(PipelineError, match="prepared dataset"):
        build_train_pipeline(
            DataConfig(path=str(tmp_path / "prepared"), selection="curated-10", **common),
            global_batch_size=4,
            shard_options=ONE_HOST,
        )


def test_worker_processes_give_the_same_batches(doit_root, doit_tokenizer_path, tmp_path):
    prepare_dataset(doit_root / "curated" / "full", tmp_path / "prepared", "doit")
    cfg = DataConfig(path=str(tmp_path / "prepared"), tokenizer=str(doit_tokenizer_path), max_len=256)
    inline = [b["input_ids"] for b in build_train_pipeline(cfg, global_batch_size=4, shard_options=ONE_HOST).iterator]
    cfg.num_workers = 2
    data = build_train_pipeline(cfg, global_batch_size=4, shard_options=ONE_HOST)
    try:
        workers = [b["input_ids"] for b in data.iterator]
    finally:
        data.iterator.close()
    assert len(workers) == len(inline) and all(np.array_equal(a, b) for a, b in zip(inline, workers))
