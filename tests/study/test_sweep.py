"""jaxtune/study/sweep.py: the data source and volume each selection's results are plotted under, and a budget:PATH
selection (its folder, :mod:`jaxtune.study.budget_run`) trained by a sweep file and by ``--selections``."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from jaxtune.cli import main
from jaxtune.data.mixtures import SelectionError, read_manifest, write_manifest
from jaxtune.data.records import Message, Record
from jaxtune.demo import DEMO_TOKENIZER
from jaxtune.demo.abilities import write_demo_dataset
from jaxtune.results import read_summary
from jaxtune.study.budget_run import selection_folder
from jaxtune.study.grid import GridError, load_grid, run_grid
from jaxtune.study.sweep import selection_source_and_volume


def test_sources_and_volumes(tmp_path) -> None:
    assert selection_source_and_volume("curated-160", tmp_path) == ("curated", 160)
    assert selection_source_and_volume("mix-640", tmp_path) == ("mix", None)
    assert selection_source_and_volume("belle-600k+alpaca", tmp_path) == ("belle+alpaca", 600_000)
    assert selection_source_and_volume("belle-2m", tmp_path) == ("belle", 2_000_000)
    assert selection_source_and_volume("belle-all", tmp_path) == ("belle", None)  # no manifest yet
    turn = (Message("user", "q"), Message("assistant", "a"))
    records = [Record(turn, "belle", f"b{i}") for i in range(3)] + [Record(turn, "alpaca", f"a{i}") for i in range(2)]
    write_manifest(tmp_path / "manifest.jsonl", records)
    assert selection_source_and_volume("belle-all+alpaca", tmp_path) == ("belle+alpaca", 3)


def test_volumes_that_depend_on_the_data_are_counted_from_the_manifest(tmp_path) -> None:
    """maximum, reconstruct and mix-N runs get their data volume (the report used to leave them out without one)."""
    assert selection_source_and_volume("baseline", tmp_path) == ("curated", 10000)
    assert selection_source_and_volume("mix-0", tmp_path) == ("maximum", None)
    turn = (Message("user", "q"), Message("assistant", "a"))
    write_manifest(tmp_path / "manifest.jsonl", [Record(turn, "ethics", f"e{i}") for i in range(7)])
    assert selection_source_and_volume("maximum", tmp_path) == ("maximum", 7)
    assert selection_source_and_volume("mix-2560", tmp_path) == ("mix", 7)
    assert selection_source_and_volume("reconstruct", tmp_path) == ("reconstruct", 7)
    assert selection_source_and_volume("curated-40", tmp_path) == ("curated", 40)


def _budget_file(path: Path, counts: dict, **extra) -> Path:
    path.write_text(json.dumps({"counts": counts, **extra}), encoding="utf-8")
    return path


def test_a_budget_selection_is_labelled_by_its_file(tmp_path) -> None:
    budget = _budget_file(tmp_path / "budget.json", {"code": 3, "math": 1})
    source, volume = selection_source_and_volume(f"budget:{budget}", tmp_path)
    assert (source, volume) == ("budget", 4)
    folder = selection_folder(f"budget:{budget}")
    assert re.fullmatch(r"budget-4-[0-9a-f]{8}", folder)
    rule = _budget_file(tmp_path / "rule.json", {"code": 3, "math": 1}, rule="reconstruct")
    assert selection_source_and_volume(f"budget:{rule}", tmp_path) == ("reconstruct-scaled", 4)
    assert selection_folder(f"budget:{rule}") == "reconstruct-scaled" + folder[len("budget") :]
    _budget_file(budget, {"code": 2, "math": 2})  # new counts, same total: a new run, never the old one reused
    assert selection_folder(f"budget:{budget}") not in (folder, "budget-4")
    assert selection_folder("curated-40") == "curated-40"
    with pytest.raises(SelectionError, match="is not a file"):
        selection_folder(f"budget:{tmp_path / 'missing.json'}")


def test_sweep_trains_a_budget_cell_on_exactly_its_counts(tmp_path, capsys) -> None:
    """A sweep file's data type budget:PATH (relative to the file) and `jaxtune sweep CONFIG --selections
    budget:PATH` train the same run, on the budget's counts, labelled for the report's budget table."""
    write_demo_dataset(tmp_path / "data", per_ability=6, eval_per_ability=1, synthetic=20)
    counts = {"code": 3, "math": 1, "ethics": 2}
    _budget_file(tmp_path / "budget.json", counts)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"""
model: {{vocab_size: 1004, hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2,
         max_position_embeddings: 128, param_dtype: float32, compute_dtype: float32}}
data: {{format: doit, path: {tmp_path / "data"}, tokenizer: {DEMO_TOKENIZER}, template: doit, max_len: 64}}
optim: {{learning_rate: 1.0e-3}}
train: {{global_batch_size: 8, epochs: 1, log_every: 100}}
checkpoint: {{save_every: null, max_to_keep: 1, async_save: false}}
eval: {{data_dir: {tmp_path / "data"}, split: test, batch_size: 8, max_new_tokens: 2, max_prompt_len: 128, suites: [doit]}}
""",
        encoding="utf-8",
    )
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"sweep:\n  run_dir: {tmp_path / 'runs'}\n  models: {{t: tiny.yaml}}\n  data_types: [budget:budget.json]\n",
        encoding="utf-8",
    )
    spec = load_grid(grid)
    assert spec.data_types == (f"budget:{tmp_path / 'budget.json'}",)
    run_grid(spec, print_fn=lambda line: None)
    run_dir = spec.run_dir / "t" / selection_folder(spec.data_types[0])
    assert Counter(e["ability"] for e in read_manifest(run_dir / "manifest.jsonl")) == Counter(counts)
    summary = read_summary(run_dir / "eval" / "epoch-1" / "doit-test.summary.json")
    assert (summary.run.data_source, summary.run.data_volume, summary.run.model_size) == ("budget", 6, "t")
    assert summary.run.run_name == run_dir.name
    assert (spec.run_dir / "report" / "doit-test.budget.md").read_text().splitlines()[0] == "| ability | t budget-6 |"

    # The run config route: the same folder, found done (nothing trained again).
    args = ["sweep", str(config), "--selections", f"budget:{tmp_path / 'budget.json'}", f"run_dir={spec.run_dir / 't'}"]
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "evaluating" not in out and "| t budget-6 |" not in out
    assert read_summary(run_dir / "eval" / "epoch-1" / "doit-test.summary.json").overall == summary.overall

    grid.write_text(grid.read_text().replace("budget.json", "nothing.json"), encoding="utf-8")
    with pytest.raises(GridError, match=r"grid.yaml: sweep.data_types: budget selection: .*nothing.json is not a file"):
        load_grid(grid)
