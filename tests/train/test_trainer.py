"""jaxtune.train.trainer: a whole run (logging, per-ability evaluation, checkpoints, params export), the guard
against runs of non-finite steps, exact resume after SIGKILL and the SIGTERM save, on 8 simulated CPU devices."""

from __future__ import annotations

import dataclasses
import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_demo_run import demo_run_config

from jaxtune.checkpoint.params import load_params
from jaxtune.config.loading import load_config
from jaxtune.config.schema import ConfigError
from jaxtune.data.mixtures import STUDY_ABILITIES
from jaxtune.errors import JaxtuneError
from jaxtune.models.llama import Llama
from jaxtune.train.trainer import TrainingDivergedError, train

from . import subprocess_runs as runs
from .event_files import scalar_events
from .reference_loss import token_cross_entropy
from .synthetic_stream import ABILITIES, TINY_MODEL, make_row, synthetic_data, tiny_config

pytestmark = pytest.mark.long  # minutes: scheduled first (tests/conftest.py)


@pytest.fixture(autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")


def _eval_loss_reference(params, rows: list[dict]) -> dict[str, float]:
    """Token-weighted validation loss overall and per ability, from the eager unsharded model."""
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    ce = token_cross_entropy(tiny_config("unused").model, params, batch)
    w = batch["loss_weights"].astype(np.float64)
    out = {"loss": float((ce * w).sum() / w.sum())}
    for i, name in enumerate(ABILITIES):
        m = w * (batch["ability_ids"] == i)
        if m.sum():
            out[f"loss/{name}"] = float((ce * m).sum() / m.sum())
    return out


def _heartbeat_phases(monkeypatch) -> list[tuple[str, int]]:
    """The (phase, step) of every heartbeat beat from now on, in order (the beats still go to heartbeat.json; its
    writer keeps only the newest record when beats come faster than writes, so the file alone cannot list them)."""
    from jaxtune.train.heartbeat import Heartbeat

    seen: list[tuple[str, int]] = []
    beat = Heartbeat.beat

    def recording(self, phase=None, step=None):
        beat(self, phase, step)
        if self.enabled:
            seen.append((self.phase, self.step))

    monkeypatch.setattr(Heartbeat, "beat", recording)
    return seen


def test_a_run_logs_evaluates_checkpoints_and_exports_params(tmp_path, monkeypatch, own_compilation_cache):
    cfg = tiny_config(
        tmp_path,
        train=dict(epochs=2, eval_every=2),
        checkpoint=dict(save_every=4, max_to_keep=1, keep_epoch_checkpoints=True),
    )
    data = synthetic_data(num_rows=24, seq_len=32, global_batch=8, epochs=2, valid_rows=16)
    lines: list[str] = []
    phases = _heartbeat_phases(monkeypatch)
    result = train(cfg, data, print_fn=lines.append)

    assert (result.step, result.total_steps, result.stopped, result.skipped_steps) == (6, 6, "completed", 0)
    # The heartbeat announced the compile before it, then each phase; completed.json came with the final state kept.
    order = [p for i, (p, _) in enumerate(phases) if i == 0 or phases[i - 1][0] != p]
    assert order[:3] == ["starting", "compiling", "training"] and phases[-1] == ("done", 6)
    assert phases.index(("compiling", 0)) < phases.index(("training", 1))
    assert {"evaluating", "saving"} <= {p for p, _ in phases} and result.exit_code == 0
    assert json.loads((tmp_path / "completed.json").read_text())["epoch_checkpoints"] == [1, 2]
    assert result.checkpoint_steps == [6]  # full train states: steps 3 and 4 fell to max_to_keep=1
    assert result.epoch_checkpoints == [1, 2]  # params only, in the compute dtype (float32 here)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    peak = cfg.optim.learning_rate
    for r in train_recs:  # the study's schedule: the peak at the first update, then linear to 0 at step 6
        assert r["learning_rate"] == pytest.approx(peak * (1 - (r["step"] - 1) / 6), rel=1e-6)
        assert np.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["epoch"] == pytest.approx(r["step"] / 3)
    assert all("tokens_per_s" in r and "eta_s" in r for r in train_recs[1:])
    # one shape: the train step compiled once; the eval-loss step once (both counted before the first eval at step 2)
    assert (train_recs[-1]["compiles/train_step"], train_recs[-1]["compiles/eval_loss"]) == (1, 1)
    assert train_recs[0]["compiles/train_step"] == 1 and train_recs[0]["compile_s/train_step"] > 0
    assert "compiles: eval_loss 1 (" in result.summary() and (tmp_path / "compilation_cache").is_dir()
    eval_recs = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in eval_recs] == [2, 3, 4, 6]
    assert all(f"loss/{a}" in r for r in eval_recs for a in ABILITIES)

    # The last evaluation, recomputed from the final checkpoint read as a params-only checkpoint.
    model_cfg, params = load_params(tmp_path / "checkpoints" / "6")
    assert model_cfg.hidden_size == TINY_MODEL["hidden_size"]
    want = _eval_loss_reference(params, [make_row(10_000 + i, 32, TINY_MODEL["vocab_size"], 0) for i in range(16)])
    for key, value in want.items():
        assert eval_recs[-1][key] == pytest.approx(value, rel=1e-5), key
    assert result.last_eval["loss"] == pytest.approx(want["loss"], rel=1e-5)
    # The last epoch's params-only checkpoint holds the same parameters (float32 compute: stored unchanged).
    epoch_cfg, epoch_params = load_params(tmp_path / "epochs" / "2")
    assert epoch_cfg.param_dtype == "float32" and not (tmp_path / "epochs" / "2" / "train_state").exists()
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(epoch_params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    tags = {tag for tag, _, _ in scalar_events(tmp_path / "tensorboard")}
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss/alpha"} <= tags
    assert load_config(tmp_path / "config.yaml") == cfg  # the resolved config, written at the start
    progress = [line for line in lines if line.startswith("step 6/6")]
    parts = ("epoch 2.00", "loss", "lr", "grad_norm", "tok/s", "compiles 2 (", "ETA")
    assert progress and all(part in progress[0] for part in parts)
    assert any(line.startswith("step 6 | eval loss") for line in lines)

    # A finished run resumes as finished; a fresh start into its directory is refused.
    again = train(cfg, synthetic_data(num_rows=24, seq_len=32, global_batch=8, epochs=2), print_fn=lines.append)
    assert (again.resumed_from, again.step) == (6, 6)
    cfg.checkpoint.resume = "never"
    with pytest.raises(JaxtuneError, match=r"already holds checkpoints \(steps \[6\]\)"):
        train(cfg, synthetic_data(num_rows=24, seq_len=32, global_batch=8, epochs=2))


def test_consecutive_non_finite_steps_stop_the_run_with_checkpoints_intact(tmp_path):
    cfg = tiny_config(
        tmp_path, train=dict(epochs=1, max_consecutive_bad_steps=2), checkpoint=dict(save_every=2, max_to_keep=3)
    )
    data = synthetic_data(num_rows=80, seq_len=32, global_batch=8, epochs=1, nan_from_step=4)
    with pytest.raises(TrainingDivergedError) as err:
        train(cfg, data, print_fn=lambda _: None)
    message = str(err.value)
    assert "2 consecutive steps (up to step 5) had a non-finite loss or gradient" in message
    assert "the last checkpoint before them is step 2" in message
    records = runs.train_records(tmp_path)
    assert [r["skipped_steps"] for r in records if r["step"] in (4, 5)] == [1.0, 1.0]
    # Checkpoint 4 was taken after the first skipped step: the update never reached it.
    _, at2 = load_params(tmp_path / "checkpoints" / "2")
    _, at4 = load_params(tmp_path / "checkpoints" / "4")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((at2, at4)))
    assert not (tmp_path / "checkpoints" / "6").exists()


def _spec(run_dir, data: dict, overrides=(), **config) -> dict:
    return {"run_dir": str(run_dir), "data": data, "overrides": list(overrides), "config": config, "devices": 8}


def test_resume_after_sigkill_reproduces_the_uninterrupted_run_bitwise(tmp_path, compile_cache):
    data = dict(num_rows=160, seq_len=32, global_batch=8, epochs=1)
    config = dict(train=dict(epochs=1), checkpoint=dict(save_every=4, max_to_keep=2, async_save=True))
    straight, broken = tmp_path / "straight", tmp_path / "broken"

    proc = runs.start(_spec(straight, data, **config), compile_cache, tmp_path / "straight.log")
    assert runs.finish([proc]) == [0], (tmp_path / "straight.log").read_text()[-3000:]

    proc = runs.start(_spec(broken, dict(data, sleep_s=0.03), **config), compile_cache, tmp_path / "killed.log")
    runs.wait_for(lambda: runs.committed(broken, 12), [proc], "checkpoint 12")
    runs.send(proc, signal.SIGKILL)
    assert runs.finish([proc]) == [-signal.SIGKILL]
    assert not runs.committed(broken, 20)

    proc = runs.start(_spec(broken, data, **config), compile_cache, tmp_path / "resumed.log")
    assert runs.finish([proc]) == [0], (tmp_path / "resumed.log").read_text()[-3000:]
    log = (tmp_path / "resumed.log").read_text()
    assert "resuming from step " in log and "training finished at step 20/20" in log

    a, b = runs.train_records(straight), runs.train_records(broken)
    assert [r["step"] for r in b] == list(range(1, 21))
    assert [(r["loss"], r["grad_norm"]) for r in a] == [(r["loss"], r["grad_norm"]) for r in b]
    _, final_a = load_params(straight / "checkpoints" / "20")
    _, final_b = load_params(broken / "checkpoints" / "20")
    for x, y in zip(jax.tree.leaves(final_a), jax.tree.leaves(final_b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl_c"])
def test_sigterm_finishes_the_step_saves_and_exits_75(tmp_path, compile_cache, sig):
    run_dir = tmp_path / "run"
    spec = _spec(
        run_dir,
        dict(num_rows=320, seq_len=32, global_batch=8, epochs=1, sleep_s=0.03),
        train=dict(epochs=1),
        checkpoint=dict(save_every=None, max_to_keep=2),
    )
    proc = runs.start(spec, compile_cache, tmp_path / "run.log")
    runs.wait_for(lambda: len(runs.train_records(run_dir)) >= 3, [proc], "three logged steps")
    runs.send(proc, sig)
    assert runs.finish([proc]) == [75]  # EX_TEMPFAIL: state saved, run again
    log = (tmp_path / "run.log").read_text()
    assert (
        "stop requested (SIGTERM or Ctrl-C): saved step " in log and "stopped on SIGTERM or Ctrl-C (resumable)" in log
    )
    stopped_at = int(log.split("stop requested (SIGTERM or Ctrl-C): saved step ")[1].split()[0])
    assert 3 <= stopped_at < 40
    assert runs.committed(run_dir, stopped_at)
    assert max(r["step"] for r in runs.train_records(run_dir)) == stopped_at
    assert json.loads((run_dir / "heartbeat.json").read_text())["phase"] == "preempted"
    assert not (run_dir / "completed.json").exists()
    if sig == signal.SIGTERM:  # the same command again: it resumes, completes with 0 and marks the run complete
        spec["data"]["sleep_s"] = 0.0
        proc = runs.start(spec, compile_cache, tmp_path / "rerun.log")
        assert runs.finish([proc]) == [0], (tmp_path / "rerun.log").read_text()[-3000:]
        assert json.loads((run_dir / "completed.json").read_text())["step"] == 40
        assert json.loads((run_dir / "heartbeat.json").read_text())["phase"] == "done"


def test_train_reads_the_data_pipeline_and_starts_from_init_from(tmp_path):
    """The default path of ``jaxtune train``: records in the DoIT layout through jaxtune.data.pipeline, parameters
    from a params-only checkpoint. With a learning rate of 0 the parameters must come out exactly as they went in."""
    from jaxtune.checkpoint.params import save_params
    from jaxtune.config.loading import config_from_dict

    config = demo_run_config(
        tmp_path,
        optim=dict(learning_rate=0.0),
        train=dict(global_batch_size=8, epochs=2, log_every=1, profile=True),
        checkpoint=dict(save_every=None, init_from=str(tmp_path / "base")),
        data=dict(valid_path=str(tmp_path / "data" / "curated" / "valid")),
    )
    cfg = config_from_dict(config)
    source = nnx.to_pure_dict(nnx.state(Llama(cfg.model, nnx.Rngs(7))))
    save_params(tmp_path / "base", source, cfg.model)

    lines: list[str] = []
    result = train(cfg, print_fn=lines.append)
    assert result.stopped == "completed" and result.step == 6  # 21 packed rows of 64 -> 3 steps x 2 epochs
    assert lines[0].startswith("data: curated-40: 40 examples")
    evals = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"eval"' in line
    ]
    assert [r["step"] for r in evals] == [3, 6] and evals[0]["loss"] == evals[1]["loss"]
    assert {k[5:] for k in evals[0] if k.startswith("loss/")} == set(STUDY_ABILITIES)
    step_dir = tmp_path / "run" / "checkpoints" / "6"
    _, final = load_params(step_dir)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(source)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    added = json.loads((step_dir / "tokenizer" / "added_tokens.json").read_text())
    assert added == {"<user>": 1000, "<assistant>": 1001, "<eot>": 1002, "<pad>": 1003}
    assert (step_dir / "tokenizer" / "tokenizer.model").is_file()
    assert len((tmp_path / "run" / "manifest.jsonl").read_text().splitlines()) == 40
    assert list((tmp_path / "run" / "profile").rglob("*.xplane.pb"))

    wrong = dict(config["model"], hidden_size=64)
    cfg_wrong = config_from_dict(
        {
            "run_dir": str(tmp_path / "r2"),
            "model": wrong,
            "data": dataclasses.asdict(cfg.data),
            "checkpoint": dict(init_from=str(tmp_path / "base")),
        }
    )
    with pytest.raises(JaxtuneError, match="do not match the model config"):
        train(cfg_wrong, print_fn=lambda _: None)


def test_train_counts_the_batch_in_examples_when_packing(tmp_path):
    """train.batch_unit=examples with packing: ceil(40 / 8) = 5 steps per epoch as the study counted them, the packed
    rows dealt over the 5 steps (8 row slots each: what 8 devices divide). Without packing the unit changes nothing
    (tests/data/test_pipeline.py)."""
    from jaxtune.config.loading import config_from_dict

    cfg = config_from_dict(
        demo_run_config(
            tmp_path,
            model=dict(num_layers=1),
            data=dict(packing=True),
            train=dict(global_batch_size=8, batch_unit="examples", epochs=2, log_every=5),
            checkpoint=dict(save_every=None, async_save=False),
        )
    )
    lines: list[str] = []
    result = train(cfg, print_fn=lines.append)
    assert result.stopped == "completed" and result.step == 10 and result.total_steps == 10
    assert "5 steps/epoch x 2 epochs = 10 steps of 8 rows" in lines[0]
    assert "batch counted in examples: 8 per step" in lines[0]
    assert sorted(result.checkpoint_steps)[-1] == 10


def test_a_finished_run_can_drop_its_full_train_states(tmp_path):
    cfg = tiny_config(
        tmp_path,
        train=dict(epochs=2),
        checkpoint=dict(save_every=None, max_to_keep=1, keep_train_state_when_done=False, epoch_dtype="bfloat16"),
    )
    result = train(cfg, synthetic_data(num_rows=24, seq_len=32, global_batch=8, epochs=2), print_fn=lambda _: None)
    assert (result.stopped, result.step, result.epoch_checkpoints) == ("completed", 6, [1, 2])
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert json.loads((tmp_path / "completed.json").read_text())["total_steps"] == 6
    epoch_cfg, params = load_params(tmp_path / "epochs" / "2")
    assert epoch_cfg.param_dtype == "bfloat16" and all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    records = (tmp_path / "metrics.jsonl").read_text()

    lines: list[str] = []  # a rerun trains nothing
    again = train(cfg, synthetic_data(num_rows=24, seq_len=32, global_batch=8, epochs=2), print_fn=lines.append)
    assert (again.stopped, again.step, again.resumed_from) == ("completed", 6, 6)
    assert any("is finished (completed.json" in line for line in lines)
    assert (tmp_path / "metrics.jsonl").read_text() == records
    with pytest.raises(JaxtuneError, match="cannot continue to 9 steps"):
        train(
            dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3)),
            synthetic_data(num_rows=24, seq_len=32, global_batch=8, epochs=3),
            print_fn=lambda _: None,
        )
    cfg.checkpoint.keep_epoch_checkpoints = False
    with pytest.raises(ConfigError, match="needs checkpoint.keep_epoch_checkpoints=true"):
        train(cfg, synthetic_data(num_rows=24, seq_len=32, global_batch=8, epochs=2), print_fn=lambda _: None)


def test_a_bloom_run_trains_sharded_over_tensor_and_checkpoints_a_bloom(tmp_path):
    """model.family=bloom through the whole trainer on a data x fsdp x tensor mesh (heads, the fused QKV and the MLP
    biases split over 'tensor'): the loss falls, and the last evaluation is what the checkpointed Bloom computes."""
    from jaxtune.checkpoint.params import restore_model
    from jaxtune.models.bloom import Bloom

    bloom = dict(family="bloom", num_kv_heads=None, intermediate_size=4 * TINY_MODEL["hidden_size"])
    cfg = tiny_config(
        tmp_path,
        model=bloom,
        mesh=dict(data=2, fsdp=2, tensor=2),
        train=dict(epochs=3),
        checkpoint=dict(save_every=100, max_to_keep=1),
    )
    data = synthetic_data(num_rows=16, seq_len=32, global_batch=8, epochs=3, valid_rows=8)
    result = train(cfg, data, print_fn=lambda _: None)
    assert (result.step, result.stopped) == (6, "completed")
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert losses[-1] < losses[0]

    model = restore_model(tmp_path / "checkpoints" / "6")
    assert isinstance(model, Bloom) and model.cfg.family == "bloom"
    rows = [make_row(10_000 + i, 32, TINY_MODEL["vocab_size"], 0) for i in range(8)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    logits, _ = model(jnp.asarray(batch["input_ids"]), segment_ids=jnp.asarray(batch["segment_ids"]))
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64))
    ce = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], axis=-1)[..., 0]
    w = batch["loss_weights"]
    assert result.last_eval["loss"] == pytest.approx(float((ce * w).sum() / w.sum()), rel=1e-5)


def test_a_qwen2_run_trains_its_biases_sharded_over_tensor(tmp_path):
    """model.family=qwen2 through the whole trainer on a data x fsdp x tensor mesh (the q/k/v biases split over
    'tensor' with their heads): the loss falls, the biases leave zero, and the checkpoint restores as a Qwen2."""
    from jaxtune.checkpoint.params import restore_model
    from jaxtune.models.qwen2 import Qwen2

    cfg = tiny_config(
        tmp_path,
        model=dict(family="qwen2"),
        mesh=dict(data=2, fsdp=2, tensor=2),
        train=dict(epochs=3),
        checkpoint=dict(save_every=100, max_to_keep=1),
    )
    result = train(cfg, synthetic_data(num_rows=16, seq_len=32, global_batch=8, epochs=3), print_fn=lambda _: None)
    assert (result.step, result.stopped) == (6, "completed")
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert losses[-1] < losses[0]
    model = restore_model(tmp_path / "checkpoints" / "6")
    assert isinstance(model, Qwen2)
    for name in ("q_bias", "k_bias", "v_bias"):
        assert np.abs(np.asarray(getattr(model.layers, name)[...])).max() > 0, name


def test_a_second_identical_run_reads_its_train_step_from_the_shared_compilation_cache(tmp_path):
    """Two runs into separate run directories, one ``train.compilation_cache_dir``: the second compiles no train
    step (a fresh jit, so only the persistent cache can serve it) and says so in metrics.jsonl and its summary."""
    before = jax.config.jax_compilation_cache_dir
    shared = dict(compilation_cache_dir=str(tmp_path / "cache"), compilation_cache_min_secs=0.0, epochs=1)
    figures = []
    try:
        for name in ("first", "second"):
            cfg = tiny_config(tmp_path / name, train=shared, checkpoint=dict(keep_epoch_checkpoints=False))
            result = train(cfg, synthetic_data(num_rows=16, seq_len=32, global_batch=8, epochs=1))
            records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            last = [r for r in records if r["kind"] == "train"][-1]
            figures.append((last["compiles/train_step"], last["compile_cache_hits/train_step"], result.summary()))
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    assert figures[0][:2] == (1, 0) and figures[1][:2] == (0, 1), figures
    assert "train_step 0 (0.0 s, 1 from the cache" in figures[1][2]
    assert not (tmp_path / "second" / "compilation_cache").exists()
