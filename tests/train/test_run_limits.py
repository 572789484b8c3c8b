"""Rows longer than the model's positions are one line before anything is built, in ``jaxtune train`` and
``jaxtune validate`` (a data.max_len of 10**9 once grew memory to the kernel's OOM kill, or blamed the warmup)."""

from __future__ import annotations

import pytest
import yaml
from tiny_demo_run import demo_run_config

from jaxtune.cli import main


@pytest.mark.parametrize("command, warmup", [("train", 0), ("train", 2), ("validate", 0)])
def test_a_max_len_beyond_the_positions_is_one_line(tmp_path, capsys, command, warmup):
    config = demo_run_config(tmp_path, train=dict(global_batch_size=8, max_steps=1), optim=dict(warmup_steps=warmup))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config))
    code = main([command, str(cfg), "data.max_len=1000000000"])
    out, err = capsys.readouterr()
    problem = (
        "data.max_len=1000000000 is longer than the model's positions (model.max_position_embeddings=256): "
        "lower data.max_len"
    )
    assert "Traceback" not in err and "warmup" not in err + out
    if command == "train":
        lines = [
            ln for ln in err.strip().splitlines() if not ln.startswith("start-up: ")
        ]  # the process's start-up line
        assert code == 2 and lines == [f"jaxtune train: error: {problem}"]
        assert not (tmp_path / "run" / "manifest.jsonl").exists()
    else:
        assert code == 1 and f"  {problem}" in out.splitlines()
