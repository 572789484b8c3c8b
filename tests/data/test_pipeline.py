"""The grain pipeline of jaxtune/data/pipeline.py: batch contents, epochs, sharding, padding, resumption."""

from __future__ import annotations

import json
from pathlib import Path

import grain
import numpy as np
import pytest
from doit_fixtures import make_hf_tokenizer_folder

from jaxtune.config.schema import DataConfig
from jaxtune.data.mixtures import read_manifest, select_records
from jaxtune.data.pipeline import BATCH_KEYS, PipelineError, build_eval_pipeline, build_train_pipeline
from jaxtune.data.records import DataError
from jaxtune.data.templates import make_template, template_backend
from jaxtune.data.tokenizer import load_tokenizer
from jaxtune.demo.records import write_jsonl

ONE_HOST = grain.sharding.ShardOptions(shard_index=0, shard_count=1)


def _cfg(root: Path, tokenizer_path: Path, **kw) -> DataConfig:
    values = dict(
        path=str(root),
        selection="curated-40",
        tokenizer=str(tokenizer_path),
        max_len=128,
        valid_path=str(root / "curated" / "valid"),
    )
    values.update(kw)
    return DataConfig(**values)


def _reference(cfg: DataConfig, tokenizer_path: Path):
    """Every selected record's (truncated) encoding, keyed by its token ids, from the template directly."""
    template = make_template(cfg.template, load_tokenizer(tokenizer_path, template_backend(cfg.template)))
    records = select_records(cfg.path, cfg.selection, format=cfg.format, seed=cfg.selection_seed).records
    table = {}
    for r in records:
        enc = template.encode(r.messages, cfg.mask).truncated(cfg.max_len)
        table[tuple(enc.input_ids.tolist())] = (r, enc)
    return table


def _segments(batch: dict, row: int):
    seg = batch["segment_ids"][row]
    for s in np.unique(seg[seg > 0]):
        idx = np.flatnonzero(seg == s)
        assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)), "a segment must be contiguous"
        yield idx


def _check_batch(batch: dict, reference: dict, ability_names, seen: list) -> None:
    for key in BATCH_KEYS:
        assert batch[key].dtype == (np.float32 if key == "loss_weights" else np.int32), key
    for row in range(batch["input_ids"].shape[0]):
        pad = batch["segment_ids"][row] == 0
        assert (batch["loss_weights"][row][pad] == 0).all() and (batch["ability_ids"][row][pad] == -1).all()
        assert (batch["targets"][row][pad] == 0).all()
        for idx in _segments(batch, row):
            ids = tuple(batch["input_ids"][row][idx].tolist())
            record, enc = reference[ids]
            seen.append(record.id + "@" + record.ability)
            assert batch["positions"][row][idx].tolist() == list(range(len(idx)))
            assert batch["targets"][row][idx][:-1].tolist() == enc.input_ids[1:].tolist()
            assert batch["targets"][row][idx][-1] == 0  # the last token of an example predicts nothing
            assert batch["loss_weights"][row][idx][:-1].tolist() == enc.loss_mask[1:].astype(np.float32).tolist()
            assert batch["loss_weights"][row][idx][-1] == 0
            assert (batch["ability_ids"][row][idx] == ability_names.index(record.ability)).all()


def test_packed_batches_hold_every_example_once_per_epoch(doit_root, doit_tokenizer_path, tmp_path):
    cfg = _cfg(doit_root, doit_tokenizer_path)
    data = build_train_pipeline(
        cfg, global_batch_size=4, epochs=2, shard_options=ONE_HOST, manifest_path=tmp_path / "manifest.jsonl"
    )
    info = data.info
    reference = _reference(cfg, doit_tokenizer_path)
    assert info.num_examples == 40 == len(reference) and info.vocab_size == 49957
    assert info.ability_names == tuple(sorted({r.ability for r, _ in reference.values()}))
    assert info.steps_per_epoch == -(-info.rows_per_epoch // 4) and info.total_steps == 2 * info.steps_per_epoch
    assert info.rows_per_epoch < 40  # packed: several examples per row
    batches = list(data.iterator)
    assert len(batches) == info.total_steps
    assert all(b["input_ids"].shape == (4, 128) for b in batches)
    epochs = [batches[: info.steps_per_epoch], batches[info.steps_per_epoch :]]
    orders = []
    for epoch in epochs:
        seen: list = []
        for b in epoch:
            _check_batch(b, reference, list(info.ability_names), seen)
        assert sorted(seen) == sorted(f"{r.id}@{r.ability}" for r, _ in reference.values())
        orders.append(seen)
        empty_rows = sum(int((b["segment_ids"][i] == 0).all()) for b in epoch for i in range(4))
        assert empty_rows == info.steps_per_epoch * 4 - info.rows_per_epoch
    assert orders[0] != orders[1]  # rows are reshuffled every epoch
    tokens = sum(int((b["segment_ids"] > 0).sum()) for b in epochs[0])
    assert tokens == info.tokens_per_epoch
    assert info.packing_efficiency == pytest.approx(tokens / (info.steps_per_epoch * 4 * 128))
    assert sum(float(b["loss_weights"].sum()) for b in epochs[0]) == info.supervised_tokens_per_epoch
    manifest = read_manifest(tmp_path / "manifest.jsonl")
    assert sorted(f"{e['id']}@{e['ability']}" for e in manifest) == sorted(orders[0])


def test_same_seed_same_batches_other_seed_other_order(doit_root, doit_tokenizer_path):
    cfg = _cfg(doit_root, doit_tokenizer_path)
    first = [b["input_ids"] for b in build_train_pipeline(cfg, global_batch_size=4, shard_options=ONE_HOST).iterator]
    again = [b["input_ids"] for b in build_train_pipeline(cfg, global_batch_size=4, shard_options=ONE_HOST).iterator]
    other = [
        b["input_ids"] for b in build_train_pipeline(cfg, global_batch_size=4, seed=7, shard_options=ONE_HOST).iterator
    ]
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_resume_from_iterator_state_sees_the_same_batches(doit_root, doit_tokenizer_path, tmp_path):
    import orbax.checkpoint as ocp

    cfg = _cfg(doit_root, doit_tokenizer_path)
    full = [
        b["input_ids"]
        for b in build_train_pipeline(cfg, global_batch_size=2, epochs=2, shard_options=ONE_HOST).iterator
    ]
    data = build_train_pipeline(cfg, global_batch_size=2, epochs=2, shard_options=ONE_HOST)
    for _ in range(5):
        next(data.iterator)
    state = data.iterator.get_state()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(5, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(data.iterator)))
        mngr.wait_until_finished()
    resumed = build_train_pipeline(cfg, global_batch_size=2, epochs=2, shard_options=ONE_HOST)
    resumed.iterator.set_state(state)
    assert all(np.array_equal(a, b["input_ids"]) for a, b in zip(full[5:8], [next(resumed.iterator) for _ in range(3)]))
    restored = build_train_pipeline(cfg, global_batch_size=2, epochs=2, shard_options=ONE_HOST)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(5, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored.iterator)))
    rest = [b["input_ids"] for b in restored.iterator]
    assert len(rest) == len(full) - 5 and all(np.array_equal(a, b) for a, b in zip(full[5:], rest))


def test_hosts_split_each_global_batch(doit_root, doit_tokenizer_path):
    cfg = _cfg(doit_root, doit_tokenizer_path, packing=False)
    single = list(build_train_pipeline(cfg, global_batch_size=4, shard_options=ONE_HOST).iterator)
    hosts = [
        build_train_pipeline(
            cfg, global_batch_size=4, shard_options=grain.sharding.ShardOptions(shard_index=h, shard_count=2)
        )
        for h in range(2)
    ]
    per_host = [list(h.iterator) for h in hosts]
    assert hosts[0].info.host_batch_size == 2 and hosts[0].info.total_steps == len(single) == len(per_host[1])
    for step, batch in enumerate(single):
        for key in BATCH_KEYS:
            interleaved = np.empty_like(batch[key])
            interleaved[0::2] = per_host[0][step][key]
            interleaved[1::2] = per_host[1][step][key]
            assert np.array_equal(interleaved, batch[key]), (step, key)


def test_unpacked_left_padding_to_a_multiple(doit_root, doit_tokenizer_path):
    cfg = _cfg(doit_root, doit_tokenizer_path, packing=False, padding_side="left", pad_to_multiple=8, max_len=512)
    data = build_train_pipeline(cfg, global_batch_size=4, shard_options=ONE_HOST)
    reference = _reference(cfg, doit_tokenizer_path)
    pad_id = 49956
    seen: list = []
    for batch in data.iterator:
        length = batch["input_ids"].shape[1]
        real = (batch["segment_ids"] > 0).sum(axis=1)
        assert length % 8 == 0 and length - 8 < real.max() <= length  # the batch's longest row, rounded up to 8
        for row in range(4):
            n = real[row]
            assert (batch["segment_ids"][row][length - n :] == 1).all()  # tokens sit at the right end
            assert (batch["input_ids"][row][: length - n] == pad_id).all()
        _check_batch(batch, reference, list(data.info.ability_names), seen)
    assert len(seen) == 40 and data.info.rows_per_epoch == 40


def test_length_buckets_pad_each_batch_to_the_smallest_that_holds_it(doit_root, doit_tokenizer_path):
    cfg = _cfg(doit_root, doit_tokenizer_path, packing=False, padding_side="left", max_len=512)
    cfg.length_buckets = [64, 128, 256]
    data = build_train_pipeline(cfg, global_batch_size=4, shard_options=ONE_HOST)
    reference = _reference(cfg, doit_tokenizer_path)
    seen: list = []
    lengths: list[int] = []
    for batch in data.iterator:
        length = batch["input_ids"].shape[1]
        longest = int((batch["segment_ids"] > 0).sum(axis=1).max())
        smallest = next((b for b in (64, 128, 256) if b >= longest), 512)
        assert length == smallest, (length, longest)
        lengths.append(length)
        _check_batch(batch, reference, list(data.info.ability_names), seen)
    assert len(seen) == 40
    counts = data.info.batches_per_length
    assert counts == {n: lengths.count(n) for n in sorted(set(lengths))} and sum(counts.values()) == 10
    assert set(counts) <= {64, 128, 256, 512} and len(counts) > 1
    assert "train-step programs" in data.info.summary()


def test_hf_chat_template_through_the_pipeline(tmp_path):
    folder = make_hf_tokenizer_folder(tmp_path / "hf")
    records = [
        {
            "messages": [
                {"role": "user", "content": f"question {i}: what is {i} plus {i}?"},
                {"role": "assistant", "content": f"it is {2 * i}."},
                {"role": "user", "content": "and the world?"},
                {"role": "assistant", "content": "hello world"},
            ],
            "id": f"r{i}",
        }
        for i in range(10)
    ]
    write_jsonl(tmp_path / "d" / "chat.jsonl", records)
    cfg = DataConfig(
        path=str(tmp_path / "d"), format="messages", tokenizer=str(folder), template="hf_chat", max_len=256
    )
    data = build_train_pipeline(cfg, global_batch_size=2, shard_options=ONE_HOST)
    assert data.info.vocab_size == len(load_tokenizer(folder).hf) and data.info.added_tokens == {}
    reference = _reference(cfg, folder)
    seen: list = []
    for batch in data.iterator:
        _check_batch(batch, reference, list(data.info.ability_names), seen)
    assert sorted(seen) == sorted(f"r{i}@general" for i in range(10))


def test_examples_with_nothing_supervised_are_reported_and_left_out(tmp_path, doit_tokenizer_path):
    long_question = "请详细地回答下面这个非常长的问题" * 20
    records = [
        {
            "messages": [
                {"role": "user", "content": long_question if i % 3 == 0 else "短问题"},
                {"role": "assistant", "content": "回答"},
            ],
            "type": "math",
            "idx": i,
        }
        for i in range(9)
    ]
    write_jsonl(tmp_path / "d" / "math_1000.json", records)
    cfg = DataConfig(path=str(tmp_path / "d"), tokenizer=str(doit_tokenizer_path), max_len=64)
    data = build_train_pipeline(
        cfg, global_batch_size=2, shard_options=ONE_HOST, manifest_path=tmp_path / "manifest.jsonl"
    )
    assert data.info.num_unsupervised == 3 and data.info.num_examples == 6 and data.info.num_truncated == 3
    assert (
        data.info.unsupervised_examples[0].startswith("0 (")
        and "math_1000.json:1" in data.info.unsupervised_examples[0]
    )
    assert "left out 3 examples" in data.info.summary()
    assert sorted(int(e["id"]) for e in read_manifest(tmp_path / "manifest.jsonl")) == [1, 2, 4, 5, 7, 8]


def test_invalid_records_raise_or_are_summarised(doit_root, doit_tokenizer_path):
    path = doit_root / "curated" / "valid" / "math_valid.json"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]})
    write_jsonl(path, lines)
    cfg = _cfg(doit_root, doit_tokenizer_path, selection="all", path=str(doit_root / "curated" / "valid"))
    with pytest.raises(DataError, match=r"math_valid.json:2: messages\[1\].content: empty assistant turn"):
        build_train_pipeline(cfg, global_batch_size=2, shard_options=ONE_HOST)
    cfg.on_error = "skip"
    data = build_train_pipeline(cfg, global_batch_size=2, shard_options=ONE_HOST)
    assert data.info.skipped.skipped == 1 and data.info.num_examples == 29
    assert "math_valid.json:2" in data.info.summary()


def test_eval_pipeline_one_ordered_pass_per_ability(doit_root, doit_tokenizer_path):
    cfg = _cfg(doit_root, doit_tokenizer_path)
    train = build_train_pipeline(cfg, global_batch_size=4, shard_options=ONE_HOST)
    names = list(train.info.ability_names) + ["extra"]
    evaluation = build_eval_pipeline(cfg, global_batch_size=4, shard_options=ONE_HOST, ability_names=names)
    first = [b["input_ids"] for b in evaluation]
    second = [b["input_ids"] for b in evaluation]
    assert len(first) == evaluation.info.total_steps and all(np.array_equal(a, b) for a, b in zip(first, second))
    counts = {}
    for batch in evaluation:
        for row in range(4):
            for idx in _segments(batch, row):
                name = names[batch["ability_ids"][row][idx[0]]]
                counts[name] = counts.get(name, 0) + 1
    assert counts == {a: 3 for a in train.info.ability_names}
    assert evaluation.info.examples_per_ability["extra"] == 0


def test_configuration_errors(doit_root, doit_tokenizer_path):
    cfg = _cfg(doit_root, doit_tokenizer_path)
    with pytest.raises(PipelineError, match="multiple of the 2 processes"):
        build_train_pipeline(cfg, global_batch_size=3, shard_options=grain.sharding.ShardOptions(0, 2))
    with pytest.raises(PipelineError, match="data.tokenizer is not set"):
        build_train_pipeline(
            _cfg(doit_root, doit_tokenizer_path, tokenizer=None), global_batch_size=2, shard_options=ONE_HOST
        )
    with pytest.raises(PipelineError, match="data.valid_path is not set"):
        build_eval_pipeline(
            _cfg(doit_root, doit_tokenizer_path, valid_path=None), global_batch_size=2, shard_options=ONE_HOST
        )


def test_study_batching_examples_unpacked_left_padded(doit_root, doit_tokenizer_path):
    """The study's batching: one example per row, left padding to a multiple of 8, 64... here 16 examples per step:
    ceil(40 / 16) = 3 steps per epoch, the last one holding the 8 left over (its other rows empty, weight 0)."""
    cfg = _cfg(doit_root, doit_tokenizer_path, packing=False, padding_side="left", pad_to_multiple=8)
    data = build_train_pipeline(cfg, global_batch_size=16, epochs=2, shard_options=ONE_HOST, batch_unit="examples")
    info = data.info
    assert (info.steps_per_epoch, info.total_steps, info.global_batch_size) == (3, 6, 16)
    assert info.batch_unit == "examples" and info.examples_per_step == 16
    batches = list(data.iterator)
    per_step = [int((b["segment_ids"].max(axis=1) > 0).sum()) for b in batches]
    assert per_step == [16, 16, 8] * 2
    assert all(b["input_ids"].shape[1] % 8 == 0 for b in batches)
    rows = build_train_pipeline(cfg, global_batch_size=16, shard_options=ONE_HOST, batch_unit="rows").info
    assert rows.steps_per_epoch == info.steps_per_epoch  # without packing rows are examples


def test_packing_with_the_batch_counted_in_examples(doit_root, doit_tokenizer_path):
    """Packing as a speed option keeps the study's ceil(N / B) steps: each epoch's rows are dealt over them."""
    cfg = _cfg(doit_root, doit_tokenizer_path)
    reference = _reference(cfg, doit_tokenizer_path)
    rows_info = build_train_pipeline(cfg, global_batch_size=8, shard_options=ONE_HOST).info
    data = build_train_pipeline(
        cfg, global_batch_size=8, epochs=2, shard_options=ONE_HOST, batch_unit="examples", row_multiple=2
    )
    info = data.info
    assert rows_info.steps_per_epoch == -(-rows_info.rows_per_epoch // 8) < 5
    assert info.steps_per_epoch == 5 and info.rows_per_epoch == rows_info.rows_per_epoch
    step_rows = -(-(-(-info.rows_per_epoch // 5)) // 2) * 2
    assert info.global_batch_size == step_rows
    batches = list(data.iterator)
    assert len(batches) == 10 and all(b["input_ids"].shape == (step_rows, 128) for b in batches)
    for epoch in (batches[:5], batches[5:]):
        seen: list = []
        for b in epoch:
            assert (b["segment_ids"] > 0).any()  # every step has something to learn from
            _check_batch(b, reference, list(info.ability_names), seen)
        assert sorted(seen) == sorted(f"{r.id}@{r.ability}" for r, _ in reference.values())
        used = [int((b["segment_ids"].max(axis=1) > 0).sum()) for b in epoch]
        assert sum(used) == info.rows_per_epoch and max(used) - min(used) <= 1  # dealt evenly
    assert [b["input_ids"].tolist() for b in batches[:5]] != [b["input_ids"].tolist() for b in batches[5:]]
    with pytest.raises(PipelineError, match="fewer than the 40 steps"):
        build_train_pipeline(cfg, global_batch_size=1, shard_options=ONE_HOST, batch_unit="examples")
    with pytest.raises(PipelineError, match="train.batch_unit must be one of rows, examples"):
        build_train_pipeline(cfg, global_batch_size=8, shard_options=ONE_HOST, batch_unit="tokens")


def test_packing_in_examples_resumes_on_the_same_batches(doit_root, doit_tokenizer_path):
    cfg = _cfg(doit_root, doit_tokenizer_path)
    full = [
        b["input_ids"]
        for b in build_train_pipeline(
            cfg, global_batch_size=8, epochs=2, shard_options=ONE_HOST, batch_unit="examples"
        ).iterator
    ]
    data = build_train_pipeline(cfg, global_batch_size=8, epochs=2, shard_options=ONE_HOST, batch_unit="examples")
    for _ in range(3):
        next(data.iterator)
    state = data.iterator.get_state()
    fresh = build_train_pipeline(cfg, global_batch_size=8, epochs=2, shard_options=ONE_HOST, batch_unit="examples")
    fresh.iterator.set_state(state)
    rest = [b["input_ids"] for b in fresh.iterator]
    assert len(rest) == len(full) - 3 and all(np.array_equal(a, b) for a, b in zip(rest, full[3:]))


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited and waits only to be reaped by its new parent


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_grain_workers_exit_when_the_trainer_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from tiny_demo_run import demo_run_config

    from jaxtune.demo import DEMO_TOKENIZER

    config = demo_run_config(
        tmp_path,
        eval_per_ability=1,
        data=dict(num_workers=1),
        train=dict(global_batch_size=8, epochs=1000, log_every=1),
        checkpoint=dict(save_every=None),
        mesh=dict(fsdp=1),
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    with open(tmp_path / "train.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxtune.cli", "train", str(tmp_path / "config.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(DEMO_TOKENIZER.parents[2]),
        )
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "run" / "metrics.jsonl").exists():  # training steps: the workers are running
            assert proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "timed out waiting for the first logged step"
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert workers, "no grain worker process found"
        proc.send_signal(signal.SIGKILL)  # as the OOM killer does: no cleanup runs in the trainer
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [w for w in workers if _alive(w)]
        assert not left, f"worker processes {left} outlived the killed trainer"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in _children(proc.pid) + [w for w in locals().get("workers", []) if _alive(w)]:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
