"""jaxtune.checkpoint.layout: where a run keeps its checkpoints, and which step folders count as complete."""

from __future__ import annotations

from pathlib import Path

from jaxtune.checkpoint.layout import COMMIT_MARKER, MODEL_CONFIG_FILE, complete_steps, train_checkpoint_dir


def test_a_complete_step_holds_the_commit_marker_and_the_model_config(tmp_path: Path) -> None:
    root = train_checkpoint_dir(tmp_path)
    assert complete_steps(root) == []  # no checkpoints folder yet
    for step, files in {2: (COMMIT_MARKER, MODEL_CONFIG_FILE), 4: (COMMIT_MARKER,), 6: (MODEL_CONFIG_FILE,)}.items():
        (root / str(step)).mkdir(parents=True)
        for name in files:
            (root / str(step) / name).write_text("{}")
    (root / "8.orbax-checkpoint-tmp-1").mkdir()
    assert complete_steps(root) == [2]
