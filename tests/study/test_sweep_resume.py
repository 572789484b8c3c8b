"""``jaxtune sweep`` rerun after a kill between an evaluation's files: only an epoch marked evaluated
(eval/epoch-E/evaluated.json, written after every suite's items and summary) is read back; anything else is
evaluated again, so the rerun's results equal an uninterrupted sweep's."""

from __future__ import annotations

from pathlib import Path

from jaxtune.cli import main
from jaxtune.demo.abilities import write_demo_dataset

REPO = Path(__file__).resolve().parents[2]


def test_a_rerun_after_a_kill_between_the_summary_and_the_items_evaluates_again(tmp_path, capsys):
    data = write_demo_dataset(tmp_path / "data", per_ability=4, eval_per_ability=1, synthetic=10)
    argv = [
        "sweep",
        str(REPO / "jaxtune" / "demo" / "quickstart.yaml"),
        "--selections",
        "curated-10",
        f"run_dir={tmp_path / 'runs'}",
        f"data.path={data}",
        f"data.tokenizer={REPO / 'jaxtune' / 'demo' / 'tokenizer'}",
        f"eval.data_dir={data}",
        "eval.max_new_tokens=4",
        "train.epochs=1",
    ]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    eval_dir = tmp_path / "runs" / "curated-10" / "eval" / "epoch-1"
    items = eval_dir / "doit-test.items.jsonl"
    full = items.read_text()
    assert (eval_dir / "evaluated.json").is_file()
    capsys.readouterr()

    # What a kill right after the summary left: the summary, a cut items file, no mark of a finished evaluation.
    lines = full.splitlines(keepends=True)
    items.write_text("".join(lines[: len(lines) // 2]))
    (eval_dir / "evaluated.json").unlink()
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert "curated-10: evaluating epoch 1" in out
    assert items.read_text() == full
    assert (eval_dir / "evaluated.json").is_file()

    # A finished evaluation is read back, not recomputed.
    stamp = items.stat().st_mtime_ns
    assert main(argv) == 0
    assert "evaluating epoch" not in capsys.readouterr().out and items.stat().st_mtime_ns == stamp
