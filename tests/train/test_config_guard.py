"""jaxtune.train.config_guard: which config changes a resume refuses, and the record of every config a run used."""

from __future__ import annotations

import json

import pytest

from jaxtune.config.loading import config_to_dict, dump_config
from jaxtune.config.schema import Config, ConfigError
from jaxtune.train.config_guard import archive_config, check_resume_config, guarded_changes, record_changes


def _changed(**sections) -> dict:
    values = config_to_dict(Config())
    for section, update in sections.items():
        values[section].update(update)
    return values


def test_changes_to_data_order_batch_and_schedule_are_named_others_pass():
    saved = config_to_dict(Config())
    new = _changed(
        data=dict(path="other", shuffle_seed=5, num_workers=4, valid_path="v"),
        train=dict(global_batch_size=32, log_every=1),
        optim=dict(learning_rate=2e-5),
        checkpoint=dict(save_every=10),
        eval=dict(batch_size=2),
    )
    assert guarded_changes(saved, new) == {
        "data.path": (None, "other"),
        "data.shuffle_seed": (0, 5),
        "optim.learning_rate": (1e-5, 2e-5),
        "train.global_batch_size": (64, 32),
    }
    with pytest.raises(
        ConfigError,
        match=r"^RUN: resuming from step 7 with a config that changes .*\(data\.path: None "
        r"-> 'other'; data\.shuffle_seed: 0 -> 5; optim\.learning_rate: 1e-05 -> "
        r"2e-05; train\.global_batch_size: 64 -> 32\).*checkpoint\.allow_config_change",
    ):
        check_resume_config(7, saved, new, allow=False, where="RUN")
    assert check_resume_config(7, saved, new, allow=True, where="RUN") == guarded_changes(saved, new)
    # Keys the saved config does not know (added to the schema since) have nothing to compare with.
    del saved["data"]["shuffle_seed"]
    assert "data.shuffle_seed" not in guarded_changes(saved, new)


def test_every_config_a_run_started_with_is_kept(tmp_path):
    (tmp_path / "config.yaml").write_text("from an older jaxtune\n")  # written before configs/ existed
    first = dump_config(Config())
    changed = Config()
    changed.optim.learning_rate = 3e-5
    second = dump_config(changed)
    assert archive_config(tmp_path, first).name == "config.2.yaml"
    assert archive_config(tmp_path, first).name == "config.2.yaml"  # the same config again adds no file
    target = archive_config(tmp_path, second)
    assert target.name == "config.3.yaml"
    configs = tmp_path / "configs"
    assert [(configs / f"config.{n}.yaml").read_text() for n in (1, 2, 3)] == ["from an older jaxtune\n", first, second]
    assert (tmp_path / "config.yaml").read_text() == second
    record_changes(tmp_path, 12, target, {"optim.learning_rate": (1e-5, 3e-5)})
    assert json.loads((configs / "changes.jsonl").read_text()) == {
        "resumed_from": 12,
        "config": "configs/config.3.yaml",
        "changed": {"optim.learning_rate": {"saved": 1e-5, "new": 3e-5}},
    }
