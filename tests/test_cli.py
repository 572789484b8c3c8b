from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from tiny_demo_run import TINY_DEMO_MODEL

from jaxtune.cli import build_parser, main
from jaxtune.demo import DEMO_TOKENIZER


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_subcommand_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {
        "quickstart",
        "train",
        "eval",
        "report",
        "sweep",
        "prepare",
        "import-hf",
        "export-hf",
        "check-hf",
        "info",
        "validate",
    }


def test_the_command_line_parses_without_the_numerical_libraries():
    """Each worker of a slice starts a `jaxtune` process at every (re)start: parsing the command imports only what
    the chosen command needs (in a fresh process; this one has them all loaded)."""
    code = "import sys, jaxtune.cli; print(*sorted(m for m in HEAVY if m in sys.modules))"
    heavy = "jax flax orbax matplotlib scipy torch transformers grain".split()
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {heavy!r}; {code}"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.split() == [], done.stdout + done.stderr[-2000:]


def test_unknown_override_key_names_it_and_the_closest_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  preset: tiny\n")
    code, _, err = _run(capsys, "train", str(cfg), "train.epoch=3")
    assert code == 2
    assert "train.epoch" in err and "train.epochs" in err and "Traceback" not in err


def test_ill_typed_value_in_file_names_file_and_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  learning_rate: fast\n")
    code, _, err = _run(capsys, "train", str(cfg))
    assert code == 2
    assert str(cfg) in err and "optim.learning_rate" in err and "number" in err


def test_missing_config_file_is_a_clear_error(capsys, tmp_path):
    code, _, err = _run(capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == 2 and "does not exist" in err


def test_no_subcommand_prints_help(capsys):
    code, out, _ = _run(capsys)
    assert code == 2 and "quickstart" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "--preset", "doit-33b", "--seq-len", "2048"],
        ["info", "model.preset=doit-7b"],
        ["info", "--preset", "bloomz-7b1-mt"],
    ],
)
def test_info_prints_parameter_count_flops_and_memory(capsys, argv):
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    low = out.lower()
    assert "param" in low and "flop" in low and "adam" in low


def test_info_prints_steps_per_epoch_for_a_config_with_data(capsys, tmp_path):
    """The quickstart's curated-40 packs into a handful of rows of 128: counted in rows (the quickstart's setting,
    for speed) that is 2 steps per epoch at batch 8; counted in examples (the study's count) ceil(40 / 8) = 5."""
    from pathlib import Path

    from jaxtune.demo.abilities import write_demo_dataset

    root = write_demo_dataset(tmp_path / "data", per_ability=4, eval_per_ability=1, synthetic=10)
    config = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    common = [
        "info",
        str(config),
        f"data.path={root}",
        f"data.tokenizer={DEMO_TOKENIZER}",
        "data.selection=curated-40",
        "train.batch_unit=examples",
    ]
    code, out, _ = _run(capsys, *common)
    assert code == 0 and "steps per epoch: 5 (train.batch_unit=examples, packed)" in out
    code, out, _ = _run(capsys, *common, "train.batch_unit=rows")
    rows = int(out.split(" rows of 128 per epoch")[0].rsplit("\n", 1)[-1].strip())
    assert code == 0 and f"steps per epoch: {-(-rows // 8)} (train.batch_unit=rows, packed)" in out
    assert "with train.batch_unit=examples: 5 steps/epoch" in out
    code, out, _ = _run(capsys, *common, "data.packing=false")
    assert code == 0 and "steps per epoch: 5 (train.batch_unit=examples, one example per row)" in out
    code, _, err = _run(capsys, *common, "train.batch_unit=tokens")
    assert code == 2 and "train.batch_unit" in err
    buckets = [
        "data.packing=false",
        "data.max_len=256",
        "data.length_buckets=[32,40,48,56,64]",
        "data.padding_side=left",
    ]
    code, out, _ = _run(capsys, *common, *buckets)
    line = out.split("batches per row length (first epoch): ")[1].split("\n")[0]
    counts = {int(length): int(n) for n, length in (part.split(" x ") for part in line.split(":")[0].split(", "))}
    assert code == 0 and set(counts) <= {32, 40, 48, 56, 64, 256} and len(counts) > 1 and sum(counts.values()) == 5, (
        line
    )
    assert f"{len(counts)} train-step programs to compile" in line


def test_validate_prints_every_problem_with_its_key_and_exits_1(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model:\n  preset: doit-33b\n  vocab_size: 49957\n  vocab_pad_multiple: 128\nmesh:\n  fsdp: 1\n  tensor: 8\n"
    )
    code, out, err = _run(capsys, "validate", str(cfg), "train.global_batch_size=63", "--accelerator", "v5p-16")
    assert code == 1 and "Traceback" not in err
    assert out.startswith(
        "4 problems:\n  data.path is not set (a training run needs it)\n"
        "  data.tokenizer is not set (a training run needs it)\n"
        "  63 rows per microbatch (train.global_batch_size=63 / train.microbatches=1) cannot be split "
        "evenly over 2 processes\n  model.num_heads = 52"
    )
    assert "checked for 8 devices in 2 processes: v5p-16 (8 chips, 2 hosts)\n  mesh data=1 x fsdp=1 x tensor=8" in out


def test_validate_lists_all_value_problems_and_exits_2(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: -1\ntrain:\n  seed: 3\n")
    code, _, err = _run(capsys, "validate", str(cfg), "--devices", "8")
    assert (
        code == 2
        and err.strip()
        == f"jaxtune validate: error: {cfg}: duplicate key 'train' at lines 1 and 3 "
        "(YAML would keep only the last; keep one)"
    )
    cfg.write_text("train:\n  epochs: -1\noptim:\n  learning_rate: .nan\n  eps: 0\n")
    code, _, err = _run(capsys, "validate", str(cfg), "model.rms_norm_eps=-1")
    assert code == 2 and err.splitlines() == [
        "jaxtune validate: error: 4 problems in the config:",
        "  command-line override 'model.rms_norm_eps=-1': model.rms_norm_eps must be positive, got -1.0",
        f"  {cfg}: optim.learning_rate must be a finite number, got nan",
        f"  {cfg}: optim.eps must be positive, got 0.0",
        f"  {cfg}: train.epochs must be at least 1, got -1",
    ]
    with pytest.raises(SystemExit):
        main(["validate", str(cfg), "--devices", "8", "--accelerator", "v5p-16"])


def test_info_on_bloomz_7b1_mt_counts_the_release(capsys):
    code, out, _ = _run(capsys, "info", "--preset", "bloomz-7b1-mt")
    assert code == 0 and "model bloomz-7b1-mt" in out and "7,069,016,064" in out


@pytest.fixture(scope="module")
def damaged_run(tmp_path_factory):
    """RUN/checkpoints/{4,8}: a tiny model with the demo tokenizer as a run's complete steps, step 8's params
    file truncated."""
    from damage import truncate_data_file
    from flax import nnx

    from jaxtune.checkpoint.params import save_params
    from jaxtune.config.loading import model_config_from_dict
    from jaxtune.demo.abilities import write_demo_dataset
    from jaxtune.models.llama import Llama

    root = tmp_path_factory.mktemp("damaged")
    cfg = model_config_from_dict(TINY_DEMO_MODEL)
    tokenizer = DEMO_TOKENIZER / "tokenizer.model"
    added = {"<user>": 1000, "<assistant>": 1001, "<eot>": 1002, "<pad>": 1003}
    for step in (4, 8):
        # random weights: their compressed bytes fill data files of their own
        path = save_params(
            root / "run" / "checkpoints" / str(step),
            nnx.state(Llama(cfg, nnx.Rngs(step)), nnx.Param),
            cfg,
            tokenizer_dir=tokenizer,
            added_tokens=added,
        )
        (path / "commit_success.txt").write_text("done")
    truncate_data_file(root / "run" / "checkpoints" / "8" / "params")
    write_demo_dataset(root / "data" / "doit", per_ability=1, eval_per_ability=1, synthetic=1)
    return root


@pytest.mark.parametrize("command", ["export-hf", "eval"])
def test_a_damaged_step_ends_in_one_line_naming_the_folder_and_the_damage(capsys, damaged_run, command):
    step = damaged_run / "run" / "checkpoints" / "8"
    out = damaged_run / f"out-{command}"
    args = (
        [command, str(step), str(out)]
        if command == "export-hf"
        else [command, str(step), "--out", str(out), f"eval.data_dir={damaged_run / 'data'}", "eval.max_new_tokens=2"]
    )
    code, _, err = _run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"jaxtune {command}: error: {step}: damaged checkpoint, cannot read params/: ")
    assert "Requested byte range" in lines[0] or "Truncated" in lines[0] or "OUT_OF_RANGE" in lines[0]
    assert lines[0].endswith(f"; the previous complete step is {damaged_run / 'run' / 'checkpoints' / '4'}")
    assert not (out / "model.safetensors").exists()


def _broken_train(monkeypatch, result=None, signal_self=False):
    """``jaxtune.train.trainer.train`` replaced: it raises an injected failure, or returns ``result`` (after sending
    this process SIGTERM, outside any training, with ``signal_self``)."""
    import jaxtune.train.trainer as trainer

    def train(cfg, data=None, **_):
        if result is None:
            raise RuntimeError("injected failure")
        if signal_self:
            os.kill(os.getpid(), signal.SIGTERM)
        return trainer.TrainResult(str(cfg.run_dir), **result)

    monkeypatch.setattr(trainer, "train", train)


def test_an_unexpected_failure_exits_1_in_one_line_with_the_traceback_in_the_log(capsys, tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nmodel:\n  preset: tiny\n")
    _broken_train(monkeypatch)
    code, _, err = _run(capsys, "train", str(cfg))
    assert code == 1
    [line] = err.strip().splitlines()
    assert line.startswith("jaxtune train: failed: RuntimeError: injected failure (traceback in ")
    log = open(line.split("(traceback in ")[1].rstrip(")"), encoding="utf-8").read()
    assert "Traceback (most recent call last)" in log and "RuntimeError: injected failure" in log


@pytest.mark.parametrize("how", ["preempted run", "sigterm between runs"])
def test_a_preempted_sweep_exits_75(capsys, tmp_path, monkeypatch, how):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'runs'}\nmodel:\n  preset: tiny\n")
    stopped = "preempted" if how == "preempted run" else "completed"
    result = dict(step=3, total_steps=6, stopped=stopped, resumed_from=None, last_loss=None, last_eval={})
    _broken_train(monkeypatch, dict(result, skipped_steps=0, checkpoint_steps=[3]), signal_self=stopped == "completed")
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = _run(capsys, "sweep", str(cfg), "--selections", "curated-10,curated-40")
    assert code == 75 and "rerun" in err and "Traceback" not in err
    assert ("stopped early (preempted)" in err) == (how == "preempted run")
    assert signal.getsignal(signal.SIGTERM) == before  # the sweep's handler is gone with it
