"""jaxtune/study/grid.py: the sweep file's schema and errors, the study's grid, and a tiny grid run end to end (cells
trained once, an interrupted cell resumed, the dry run's planned steps against the steps the runs took, the report
covering the constructions)."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

from jaxtune.cli import main
from jaxtune.results import read_summary
from jaxtune.study.grid import (
    DATA_TYPES,
    GridError,
    cell_states,
    cells,
    format_states,
    is_sweep_file,
    load_grid,
    run_grid,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_TOKENIZER = REPO / "jaxtune" / "demo" / "tokenizer"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_study_grid_is_three_sizes_by_nineteen_data_types():
    path = REPO / "configs" / "sweeps" / "doit.yaml"
    assert is_sweep_file(path) and not is_sweep_file(REPO / "configs" / "doit-7b.yaml")
    spec = load_grid(path)
    assert [m.label for m in spec.models] == ["7b", "13b", "33b"]
    assert spec.data_types == DATA_TYPES and len(DATA_TYPES) == 19
    grid = cells(spec)
    assert len(grid) == 57
    by_type = {(c.model.label, c.data_type): c for c in grid}
    # The study's aliases share their target's run: 17 runs per size.
    assert by_type[("7b", "baseline")].run_dir == by_type[("7b", "curated-10000")].run_dir
    assert by_type[("33b", "mix-0")].run_dir == by_type[("33b", "maximum")].run_dir
    assert len({c.run_dir for c in grid}) == 51
    assert by_type[("13b", "synthetic-40960")].run_dir == Path("runs/doit/13b/synthetic-40960")


@pytest.mark.parametrize(
    "body, message",
    [
        ("sweep:\n  run_dir: r\n  modles: {a: c.yaml}\n  data_types: all\n", "unknown key(s) ['modles']"),
        (
            "sweep:\n  run_dir: r\n  models: {a: c.yaml}\n  data_types: [curated-10, curatd-40]\n",
            "sweep.data_types: unknown data type 'curatd-40'",
        ),
        ("sweep:\n  run_dir: r\n  models: {a: missing.yaml}\n  data_types: all\n", "sweep.models.a.config"),
        (
            "sweep:\n  run_dir: r\n  models: {a: {config: c.yaml, overide: []}}\n  data_types: all\n",
            "sweep.models.a: unknown key(s) ['overide']",
        ),
        ("sweep:\n  run_dir: r\n  models: {a: c.yaml}\n", "sweep.data_types is required"),
        ("sweep:\n  run_dir: r\n  models: {a: c.yaml}\n  data_types: all\n  eval_epochs: 16\n", "sweep.eval_epochs"),
        (
            "sweep:\n  run_dir: r\n  models: {a: c.yaml}\n  data_types: all\n  eval_epochs: '5,15'\n",
            "checkpoint.keep_epoch_checkpoints",
        ),
        (
            "sweep:\n  run_dir: r\n  models: {a: {config: c.yaml, overrides: [train.epoch=3]}}\n  data_types: all\n",
            "sweep.models.a",
        ),
    ],
)
def test_bad_sweep_files_name_the_file_and_key(tmp_path, body, message):
    _write(tmp_path / "c.yaml", "train:\n  epochs: 15\ncheckpoint:\n  keep_epoch_checkpoints: false\n")
    path = _write(tmp_path / "grid.yaml", body)
    with pytest.raises(GridError) as e:
        cell_states(load_grid(path), measure=False)
    assert message in str(e.value) and str(path) in str(e.value)


def test_a_key_repeated_in_a_sweep_file_is_refused_naming_the_file_and_both_lines(tmp_path, capsys):
    # Plain YAML keeps the second data_types silently: the grid would run all 19 data types, not curated-10.
    _write(tmp_path / "c.yaml", "train:\n  epochs: 2\n")
    path = _write(
        tmp_path / "grid.yaml",
        "sweep:\n  run_dir: r\n  models: {a: c.yaml}\n  data_types: [curated-10]\n  data_types: all\n",
    )
    with pytest.raises(GridError) as e:
        load_grid(path)
    assert e.value.problems == [
        f"{path}: duplicate key 'sweep.data_types' at lines 4 and 5 (YAML would keep only the last; keep one)"
    ]
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert f"{path}: duplicate key 'sweep.data_types' at lines 4 and 5" in capsys.readouterr().err


def test_the_cli_tells_a_sweep_file_from_a_run_config(tmp_path, capsys):
    _write(tmp_path / "c.yaml", "train:\n  epochs: 2\n")
    grid = _write(tmp_path / "grid.yaml", "sweep:\n  run_dir: r\n  models: {a: c.yaml}\n  data_types: all\n")
    assert main(["sweep", str(grid), "--selections", "curated-10"]) == 2
    assert "is a sweep file" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "c.yaml"), "--dry-run"]) == 2
    assert "is a run config: give --selections" in capsys.readouterr().err


def _tiny_grid(tmp_path: Path) -> Path:
    from jaxtune.demo.abilities import write_demo_dataset

    data = write_demo_dataset(tmp_path / "data", per_ability=6, eval_per_ability=1, synthetic=20)
    _write(
        tmp_path / "tiny.yaml",
        f"""
model: {{vocab_size: 1004, hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2,
         max_position_embeddings: 128, param_dtype: float32, compute_dtype: float32}}
data: {{format: doit, path: {data}, tokenizer: {DEMO_TOKENIZER}, template: doit, max_len: 64}}
optim: {{learning_rate: 1.0e-3}}
train: {{global_batch_size: 8, epochs: 2, log_every: 100}}
checkpoint: {{save_every: null, max_to_keep: 1, async_save: false}}
eval: {{data_dir: {data}, split: test, batch_size: 8, max_new_tokens: 4, max_prompt_len: 128}}
""",
    )
    return _write(
        tmp_path / "grid.yaml",
        f"""
sweep:
  run_dir: {tmp_path / 'runs'}
  models:
    t1: tiny.yaml
  data_types: [curated-10, maximum, mix-0]
  eval_epochs: last
  suites: [doit]
""",
    )


def _heartbeats(monkeypatch) -> list[tuple[str, str, int]]:
    """(heartbeat.json path, phase, step) of every heartbeat beat from now on (the beats still go to the file)."""
    from jaxtune.train.heartbeat import Heartbeat

    seen: list[tuple[str, str, int]] = []
    beat = Heartbeat.beat

    def recording(self, phase=None, step=None):
        beat(self, phase, step)
        if self.enabled:
            seen.append((str(self.path), self.phase, self.step))

    monkeypatch.setattr(Heartbeat, "beat", recording)
    return seen


def test_a_grid_runs_each_cell_once_resumes_a_partial_one_and_reports_them_all(tmp_path, monkeypatch):
    spec = load_grid(_tiny_grid(tmp_path))
    before = {s.cell.data_type: s for s in cell_states(spec)}
    assert [s.state for s in before.values()] == ["not started"] * 3
    # 60 curated/full records (ethics/role_play/creative_writing capped above 6) -> packed rows of 64 tokens.
    planned = {k: s.steps_per_epoch * s.total_epochs for k, s in before.items() if not s.cell.alias}
    assert planned["curated-10"] == 2 * 1 and planned["maximum"] > planned["curated-10"]

    lines: list[str] = []
    outputs = run_grid(spec, print_fn=lines.append)
    assert outputs.skipped == []
    runs = spec.run_dir / "t1"
    # The dry run planned exactly the steps each run took (its final checkpoint's step).
    for selection, steps in planned.items():
        assert (runs / selection / "checkpoints" / str(steps)).is_dir(), selection
    maximum = read_summary(runs / "maximum" / "eval" / "epoch-2" / "doit-test.summary.json")
    assert (maximum.run.data_source, maximum.run.data_volume, maximum.run.model_size) == ("maximum", 60, "t1")

    # The report covers every cell: curated on the curves, the maximum construction in the construction table.
    report = spec.run_dir / "report"
    with (report / "doit-test.constructions.csv").open(encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["ability", "t1 maximum"] and table[1] == ["training examples", "60"]
    assert float(table[-1][1]) == pytest.approx(maximum.overall, abs=0.05)
    with (report / "doit-test.scores.csv").open(encoding="utf-8") as f:
        assert next(csv.reader(f))[1] == "t1 curated 10"

    # Interrupt one cell's evaluation: it becomes partial, and only it is evaluated again.
    done = runs / "curated-10" / "eval" / "epoch-2" / "doit-test.summary.json"
    stamp = os.stat(done).st_mtime_ns
    for p in (runs / "maximum" / "eval" / "epoch-2").iterdir():
        p.unlink()
    states = {s.cell.data_type: s for s in cell_states(spec, measure=False)}
    assert states["curated-10"].state == "done"
    # A cell is done only once its run's completion marker exists too.
    marker = runs / "curated-10" / "completed.json"
    assert json.loads(marker.read_text())["total_steps"] == planned["curated-10"]
    marker.rename(marker.with_suffix(".kept"))
    assert {s.cell.data_type: s for s in cell_states(spec, measure=False)}["curated-10"].state == "partial"
    marker.with_suffix(".kept").rename(marker)
    assert states["maximum"].describe() == (
        f"partial (epochs evaluated: none of 2; checkpoint at step {planned['maximum']})"
    )
    listing = format_states(spec, list(states.values()))
    assert re.search(r"\nt1 +mix-0 += maximum \(same run\)\n", listing), listing
    assert "1 done, 1 partial, 0 not started" in listing
    lines.clear()
    beats = _heartbeats(monkeypatch)
    outputs = run_grid(spec, print_fn=lines.append)
    assert outputs.skipped == ["t1/curated-10"]
    # The re-evaluation announced itself in the cell's heartbeat.json, then the cell was done again.
    cell = str(runs / "maximum" / "heartbeat.json")
    assert [p for path, p, _ in beats if path == cell][-2:] == ["evaluating", "done"]
    assert json.loads((runs / "maximum" / "heartbeat.json").read_text())["phase"] == "done"
    assert not any("training (" in line and "curated-10" in line for line in lines)
    assert any("maximum: evaluating epoch 2" in line for line in lines)
    assert not any("maximum: training" in line and "step 1/" in line for line in lines)
    assert os.stat(done).st_mtime_ns == stamp
    assert read_summary(runs / "maximum" / "eval" / "epoch-2" / "doit-test.summary.json").overall == maximum.overall
    assert {s.state for s in cell_states(spec, measure=False)} == {"done"}
