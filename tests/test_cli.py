from __future__ import annotations

from pathlib import Path

import pytest

import jaxtune
from jaxtune.cli import build_parser, main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_subcommand_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"quickstart", "train", "eval", "report", "sweep", "prepare", "import-hf",
                                "export-hf", "check-hf", "info"}


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


@pytest.mark.parametrize("argv", [["info", "--preset", "doit-33b", "--seq-len", "2048"],
                                  ["info", "model.preset=doit-7b"]])
def test_info_prints_parameter_count_flops_and_memory(capsys, argv):
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    low = out.lower()
    assert "param" in low and "flop" in low and "adam" in low


@pytest.fixture(scope="module")
def damaged_run(tmp_path_factory):
    """RUN/checkpoints/{4,8}: a tiny model with the demo tokenizer as a run's complete steps, step 8's params
    file truncated."""
    from damage import truncate_data_file
    from flax import nnx

    from jaxtune.checkpoint import save_params
    from jaxtune.config import model_config_from_dict
    from jaxtune.demo.abilities import write_demo_dataset
    from jaxtune.models.llama import Llama

    root = tmp_path_factory.mktemp("damaged")
    cfg = model_config_from_dict(dict(vocab_size=1004, hidden_size=32, intermediate_size=64, num_layers=2,
                                      num_heads=4, max_position_embeddings=256))
    tokenizer = Path(jaxtune.__file__).parent / "demo" / "tokenizer" / "tokenizer.model"
    added = {"<user>": 1000, "<assistant>": 1001, "<eot>": 1002, "<pad>": 1003}
    for step in (4, 8):
        # random weights: their compressed bytes fill data files of their own
        path = save_params(root / "run" / "checkpoints" / str(step), nnx.state(Llama(cfg, nnx.Rngs(step)), nnx.Param),
                           cfg, tokenizer_dir=tokenizer, added_tokens=added)
        (path / "commit_success.txt").write_text("done")
    truncate_data_file(root / "run" / "checkpoints" / "8" / "params")
    write_demo_dataset(root / "data" / "doit", per_ability=1, eval_per_ability=1, synthetic=1)
    return root


@pytest.mark.parametrize("command", ["export-hf", "eval"])
def test_a_damaged_step_ends_in_one_line_naming_the_folder_and_the_damage(capsys, damaged_run, command):
    step = damaged_run / "run" / "checkpoints" / "8"
    out = damaged_run / f"out-{command}"
    args = [command, str(step), str(out)] if command == "export-hf" else [
        command, str(step), "--out", str(out), f"eval.data_dir={damaged_run / 'data'}", "eval.max_new_tokens=2"]
    code, _, err = _run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"jaxtune {command}: error: {step}: damaged checkpoint, cannot read params/: ")
    assert "Requested byte range" in lines[0] or "Truncated" in lines[0] or "OUT_OF_RANGE" in lines[0]
    assert lines[0].endswith(f"; the previous complete step is {damaged_run / 'run' / 'checkpoints' / '4'}")
    assert not (out / "model.safetensors").exists()
