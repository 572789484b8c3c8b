"""What a resumed run may change in its config, and the record of every config a run was started with.

A resume restores the data iterator's position and the optimizer schedule's step: applied to other data, another
batch size or another schedule they silently train on something else. The keys that decide those
(:data:`GUARDED_PREFIXES` minus :data:`UNGUARDED_KEYS`) must equal the saved config's, unless
``checkpoint.allow_config_change`` is set.

Run-directory layout written here (process 0)::

    RUN_DIR/config.yaml              the config of the latest start (load_config reads it back)
    RUN_DIR/configs/config.<n>.yaml  every distinct config the run was started with, n = 1, 2, ... in start order
                                     (a start with the same config as config.<n>.yaml adds no file)
    RUN_DIR/configs/changes.jsonl    one object per resume allowed to change guarded keys:
                                     {"resumed_from": STEP, "config": "configs/config.<n>.yaml",
                                      "changed": {"dotted.key": {"saved": OLD, "new": NEW}, ...}}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from jaxtune.config.schema import ConfigError
from jaxtune.paths import append_text, as_path, write_text_atomic

GUARDED_PREFIXES = ("data.", "optim.", "train.global_batch_size", "train.epochs", "train.max_steps", "train.seed")
"""Dotted keys (or prefixes of them) that decide the data order, the batch or the learning-rate schedule."""
UNGUARDED_KEYS = frozenset({"data.num_workers", "data.read_threads", "data.prefetch", "data.valid_path"})
"""Keys under a guarded prefix that change only speed or evaluation, never what is trained on."""

CONFIGS_DIR = "configs"
CHANGES_FILE = "changes.jsonl"
_NUMBERED = re.compile(r"^config\.(\d+)\.yaml$")


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _guarded(key: str) -> bool:
    return key not in UNGUARDED_KEYS and any(
        key.startswith(p) if p.endswith(".") else key == p for p in GUARDED_PREFIXES
    )


def guarded_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved, new)} of the guarded keys whose values differ (keys known to both configs only: a key
    added to the schema since the checkpoint was written has nothing to compare with)."""
    a, b = _flatten(saved), _flatten(new)
    return {k: (a[k], b[k]) for k in sorted(set(a) & set(b)) if _guarded(k) and _normalise(a[k]) != _normalise(b[k])}


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # JSON has lists where the dataclass has tuples


def check_resume_config(
    saved_step: int, saved: Mapping[str, Any], new: Mapping[str, Any], allow: bool, where: str | Path
) -> dict[str, tuple[Any, Any]]:
    """The guarded changes between the config saved at ``saved_step`` and ``new``; raises ConfigError naming each
    one unless ``allow`` (checkpoint.allow_config_change)."""
    changes = guarded_changes(saved, new)
    if changes and not allow:
        listed = "; ".join(f"{k}: {old!r} -> {value!r}" for k, (old, value) in changes.items())
        raise ConfigError(
            f"{where}: resuming from step {saved_step} with a config that changes the data order, the batch or the "
            f"schedule ({listed}). Restore those values, choose another run_dir, or set "
            f"checkpoint.allow_config_change=true to resume anyway (recorded in {CONFIGS_DIR}/{CHANGES_FILE})"
        )
    return changes


def archive_config(run_dir: str | Path, text: str) -> Path:
    """Write ``text`` (the YAML config of this start) as RUN_DIR/config.yaml and, unless it equals the newest
    numbered one, as the next RUN_DIR/configs/config.<n>.yaml; returns the numbered file holding it.

    A config.yaml written before configs/ existed becomes config.1.yaml first, so no earlier config is lost."""
    run_dir = as_path(run_dir)
    configs = run_dir / CONFIGS_DIR
    configs.mkdir(parents=True, exist_ok=True)
    # An object store has no empty folders: a configs/ just "made" may not list yet.
    listed = list(configs.iterdir()) if configs.exists() else []
    numbered = sorted((int(m.group(1)), p) for p in listed if (m := _NUMBERED.match(p.name)))
    latest = run_dir / "config.yaml"
    if not numbered and latest.is_file():
        write_text_atomic(configs / "config.1.yaml", latest.read_text(encoding="utf-8"))
        numbered = [(1, configs / "config.1.yaml")]
    if numbered and numbered[-1][1].read_text(encoding="utf-8") == text:
        target = numbered[-1][1]
    else:
        target = configs / f"config.{numbered[-1][0] + 1 if numbered else 1}.yaml"
        write_text_atomic(target, text)
    write_text_atomic(latest, text)
    return target


def record_changes(
    run_dir: str | Path, resumed_from: int, config_file: Path, changes: Mapping[str, tuple[Any, Any]]
) -> None:
    """Append an allowed resume's guarded changes to RUN_DIR/configs/changes.jsonl."""
    record = {
        "resumed_from": resumed_from,
        "config": f"{CONFIGS_DIR}/{as_path(config_file).name}",
        "changed": {k: {"saved": old, "new": new} for k, (old, new) in changes.items()},
    }
    append_text(as_path(run_dir) / CONFIGS_DIR / CHANGES_FILE, json.dumps(record) + "\n")
