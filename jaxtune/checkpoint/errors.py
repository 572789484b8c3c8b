"""Checkpoint errors: :class:`CheckpointError`, and :func:`restore_boundary`, which turns whatever Orbax or
TensorStore raise on a damaged checkpoint into one such error naming the folder (and offering another complete
step of the run, :func:`complete_step_hint`).

A complete step can still be damaged after it was written (a file truncated or deleted, flipped bytes): every read
goes through :func:`restore_boundary`, and restored values are checked finite (:mod:`jaxtune.checkpoint.finite`).
The trainer then sets the step aside (``TrainCheckpointManager.set_aside``) and resumes from the previous one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from jaxtune.checkpoint.layout import CHECKPOINTS_DIR, complete_steps
from jaxtune.errors import JaxtuneError
from jaxtune.paths import absolute_path


class CheckpointError(JaxtuneError, ValueError):
    """A checkpoint folder is missing, incomplete or inconsistent; the message names the path."""


def _damage(error: BaseException) -> str:
    """One line saying why Orbax or TensorStore could not read a checkpoint (their messages run to pages)."""
    lines = str(error).split(" See full TensorStore details")[0].strip().splitlines()
    text = lines[0].strip() if lines else ""
    if type(error) is not Exception:  # a bare Exception's name says nothing
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    cause = error.__cause__ or error.__context__
    if cause is not None and type(error) is Exception:  # Orbax wraps TensorStore's error, which names the file
        text = f"{text} ({_damage(cause)})"
    return text if len(text) <= 400 else text[:400] + " ..."


@contextlib.contextmanager
def restore_boundary(folder: str | Path, what: str) -> Iterator[None]:
    """Turn whatever Orbax raises while reading ``folder`` into one CheckpointError naming the folder.

    Orbax and TensorStore report a truncated or missing file with bare ``Exception``s, ``ValueError``s or worse
    (a ``None`` metadata tree); a damaged checkpoint must end in one line, not five tracebacks.
    """
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 -- Orbax raises bare Exception for damaged files
        raise CheckpointError(
            f"{folder}: damaged checkpoint, cannot read {what}: {_damage(e)}{complete_step_hint(folder)}"
        ) from e


def complete_step_hint(folder: str | Path) -> str:
    """For a step folder of a run (RUN/checkpoints/STEP), a sentence offering the newest other complete step;
    empty for any other folder."""
    folder = absolute_path(folder)
    for candidate in (folder, *folder.parents):
        if candidate.parent.name == CHECKPOINTS_DIR and candidate.name.isdigit():
            step_dir = candidate
            break
    else:
        return ""
    others = [s for s in complete_steps(step_dir.parent) if s != int(step_dir.name)]
    if not others:
        return f" (no other complete step in {step_dir.parent})"
    older = [s for s in others if s < int(step_dir.name)]
    offer = older[-1] if older else others[-1]
    return f"; the {'previous' if older else 'newest'} complete step is {step_dir.parent / str(offer)}"
