"""Host batches that cannot fit in the host's memory are one line before anything is built, in ``jaxtune train`` and
``jaxtune validate`` (jaxtune/data/host_memory.py)."""

from __future__ import annotations

import pytest
import yaml
from tiny_demo_run import demo_run_config

from jaxtune.cli import main
from jaxtune.config.loading import load_config
from jaxtune.data.host_memory import available_host_memory, host_batch_bytes, host_memory_problem

HUGE = ["data.max_len=1000000000", "model.max_position_embeddings=1000000000"]  # within the positions: memory decides


def test_the_bytes_of_a_host_batch(tmp_path):
    cfg = load_config(None, ["data.max_len=1000", "train.global_batch_size=8", "data.prefetch=2"])
    assert host_batch_bytes(cfg, processes=2) == (4 * 1000 * 6 * 4, 3)
    assert host_memory_problem(cfg, 2, available=3 * 96_000) is None
    problem = host_memory_problem(cfg, 2, available=3 * 96_000 - 1)
    assert problem is not None and problem.startswith("data.max_len=1000 x train.global_batch_size=8 over 2 processes")
    assert available_host_memory() > 0


@pytest.mark.parametrize("command", ["train", "validate"])
def test_a_batch_beyond_the_host_memory_is_one_line(tmp_path, capsys, command):
    # Before: train grew memory until the kernel's OOM kill (24 GB); validate said every check passed.
    config = demo_run_config(tmp_path, train=dict(global_batch_size=8, max_steps=1))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config))
    code = main([command, str(cfg), *HUGE])
    out, err = capsys.readouterr()
    problem = "data.max_len=1000000000 x train.global_batch_size=8 over 1 process: host batches of 178.8 GiB"
    assert "Traceback" not in err
    if command == "train":
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("start-up: ")]
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"jaxtune train: error: {problem}"), err
        assert "cannot fit in this host's available memory" in lines[0]
        assert not (tmp_path / "run" / "manifest.jsonl").exists()
    else:
        assert code == 1 and any(ln.startswith(f"  {problem}") for ln in out.splitlines()), out
        assert "every check a run makes before computing passed" not in out
