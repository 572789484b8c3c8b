from __future__ import annotations

import pytest

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
                                  ["info", "model.preset=doit-7b"], ["info", "--preset", "bloomz-7b1-mt"]])
def test_info_prints_parameter_count_flops_and_memory(capsys, argv):
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    low = out.lower()
    assert "param" in low and "flop" in low and "adam" in low


def test_info_on_bloomz_7b1_mt_counts_the_release(capsys):
    code, out, _ = _run(capsys, "info", "--preset", "bloomz-7b1-mt")
    assert code == 0 and "model bloomz-7b1-mt" in out and "7,069,016,064" in out
