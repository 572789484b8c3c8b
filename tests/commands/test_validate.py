"""jaxtune.commands.validate: `jaxtune validate` runs a run's checks without devices, all problems together, and train runs
the same checks first."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import pytest

from jaxtune.commands.validate import Topology, ValidationError, accelerator_topology, validate
from jaxtune.config.loading import config_from_dict
from jaxtune.config.schema import ConfigError
from jaxtune.sharding import LayoutError

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "jaxtune" / "demo" / "tokenizer" / "tokenizer.model"


def _config(tmp_path: Path, text: str) -> Path:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    path = tmp_path / "run.yaml"
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\ndata:\n  path: {data}\n  tokenizer: {TOKENIZER}\n  max_len: 256\n" + text
    )
    return path


@pytest.mark.parametrize(
    "name,devices,processes",
    [
        ("v5p-8", 4, 1),
        ("v5p-16", 8, 2),
        ("v4-32", 16, 4),
        ("v5e-8", 8, 1),
        ("v5litepod-16", 16, 4),
        ("v6e-4", 4, 1),
        ("v6e-256", 256, 64),
    ],
)
def test_accelerator_names_count_tensorcores_on_v4_v5p_and_chips_on_v5e_v6e(name, devices, processes):
    topology = accelerator_topology(name)
    assert (topology.devices, topology.processes) == (devices, processes)
    two = accelerator_topology(name, slices=2)
    assert (two.devices, two.processes) == (2 * devices, 2 * processes)


@pytest.mark.parametrize("name", ["v5p-12", "v5p", "tpu-8", "v6e-0"])
def test_unknown_accelerator_names_are_refused(name):
    with pytest.raises(ValidationError, match=f"--accelerator '{name}'"):
        accelerator_topology(name)


def test_a_good_config_passes_for_the_devices_given(tmp_path):
    path = _config(
        tmp_path, "model:\n  preset: tiny\n  vocab_size: 1004\ntrain:\n  global_batch_size: 16\n  microbatches: 2\n"
    )
    result = validate(str(path), devices=8)
    assert result.ok, result.problems
    assert result.mesh_shape == {"data": 1, "fsdp": 8, "tensor": 1}
    assert result.summary().startswith("config OK")
    on_pod = validate(str(path), ["mesh.tensor=2", "model.vocab_pad_multiple=128"], accelerator="v5p-16")
    assert on_pod.ok and on_pod.topology == Topology(8, 2, "v5p-16 (8 chips, 2 hosts)")
    assert on_pod.mesh_shape == {"data": 1, "fsdp": 4, "tensor": 2}
    slices = validate(str(path), ["mesh.dcn_data=2", "train.microbatches=1"], accelerator="v5p-16")
    assert slices.ok and slices.mesh_shape == {"data": 2, "fsdp": 8, "tensor": 1} and slices.topology.devices == 16


def test_layout_and_file_problems_are_all_reported_each_naming_its_key(tmp_path):
    path = _config(
        tmp_path,
        "model:\n  preset: doit-33b\n  vocab_size: 1004\nmesh:\n  fsdp: 1\n  tensor: 8\n"
        "train:\n  global_batch_size: 62\n  microbatches: 2\n"
        f"checkpoint:\n  init_from: {tmp_path / 'no-base'}\neval:\n  suites: [doit, bele]\n",
    )
    result = validate(str(path), accelerator="v5p-16")
    assert not result.ok
    problems = result.problems
    assert problems[0] == f"checkpoint.init_from={tmp_path / 'no-base'}: no such file or folder"
    assert problems[1] == "eval.suites: unknown suite(s) ['bele'] (known: doit, ceval, cmmlu, agieval, belle)"
    assert problems[2] == (
        "31 rows per microbatch (train.global_batch_size=62 / train.microbatches=2) cannot be split "
        "evenly over 2 processes"
    )
    assert problems[3].startswith("model.vocab_size (padded to model.vocab_pad_multiple) = 1004 (dimension 'vocab'")
    assert "; model.num_heads = 52 (dimension 'heads'" in problems[3]
    assert len(problems) == 4
    assert result.summary().startswith("4 problems:\n  checkpoint.init_from=")


def test_an_impossible_mesh_is_a_problem_not_a_traceback(tmp_path):
    path = _config(tmp_path, "model:\n  preset: tiny\n  vocab_size: 1004\nmesh:\n  fsdp: 3\n")
    result = validate(str(path), devices=8)
    assert result.problems == [
        "mesh.data=1 x mesh.fsdp=3 x mesh.tensor=1 = 3 devices, but there are 8 devices per "
        "slice (8 devices, mesh.dcn_data=1); set one size to -1 to take the rest"
    ]


def test_the_vocabulary_eval_data_and_judge_are_checked_without_devices(tmp_path):
    path = _config(tmp_path, f"model:\n  preset: tiny\neval:\n  suites: [doit, belle]\n  data_dir: {tmp_path}\n")
    result = validate(str(path), devices=1)
    assert result.problems == [
        f"model.vocab_size=49957, but the tokenizer {TOKENIZER} with its added tokens has 1004 ids; set "
        f"model.vocab_size=1004",
        f"eval.data_dir: no doit data found (looked in {tmp_path / 'doit'}, {tmp_path / 'curated'}, {tmp_path})",
        f"eval.data_dir: no belle data found (looked in {tmp_path / 'belle_eval'}, {tmp_path / 'belle'}, {tmp_path})",
        "suite 'belle' needs an LLM judge: set eval.judge_base_url, eval.judge_model",
    ]


def test_value_problems_stop_before_the_layout_and_are_listed_together(tmp_path):
    path = _config(tmp_path, "optim:\n  learning_rate: .nan\n")
    with pytest.raises(ConfigError) as info:
        validate(str(path), ["train.epochs=-1", "model.rms_norm_eps=-1"], devices=8)
    assert sorted(info.value.problems) == sorted(
        [
            f"{path}: optim.learning_rate must be a finite number, got nan",
            "command-line override 'train.epochs=-1': train.epochs must be at least 1, got -1",
            "command-line override 'model.rms_norm_eps=-1': model.rms_norm_eps must be positive, got -1.0",
        ]
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.global_batch_size=12"],
        ["model.preset=doit-33b", "model.vocab_size=1004", "mesh.fsdp=1", "mesh.tensor=8"],
        ["mesh.fsdp=2", "mesh.tensor=4", "model.num_heads=2", "train.global_batch_size=5"],
    ],
)
def test_train_rejects_what_validate_rejects_with_the_same_problems_before_reading_data(tmp_path, overrides):
    assert jax.device_count() == 8  # tests/conftest.py
    path = _config(tmp_path, "model:\n  preset: tiny\n  vocab_size: 1004\ntrain:\n  global_batch_size: 16\n")
    found = validate(str(path), overrides, devices=8).problems
    assert found
    from jaxtune.config.loading import load_config
    from jaxtune.train.trainer import train

    cfg = load_config(path, overrides)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(tmp_path / "absent.jsonl")))
    with pytest.raises(LayoutError) as info:
        train(cfg)  # data.path points nowhere: reading the data would raise a different error
    message = str(info.value)
    assert (message == found[0]) if len(found) == 1 else message.splitlines()[1:] == [f"  {p}" for p in found]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_validates_a_config_built_in_code_before_anything_else(tmp_path):
    from jaxtune.train.trainer import train

    cfg = config_from_dict({"run_dir": str(tmp_path / "run"), "model": {"preset": "tiny"}})
    bad = dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim, learning_rate=float("inf")),
        train=dataclasses.replace(cfg.train, epochs=-1),
    )
    with pytest.raises(ConfigError) as info:
        train(bad)
    assert info.value.problems == [
        "optim.learning_rate must be a finite number, got inf",
        "train.epochs must be at least 1, got -1",
    ]
    assert not (tmp_path / "run").exists()


def test_value_and_layout_problems_are_reported_together_in_one_run(capsys, monkeypatch):
    from jaxtune.cli import main

    monkeypatch.chdir(REPO)
    argv = ["configs/doit-7b.yaml", "optim.lerning_rate=1e-5", "train.global_batch_size=sixty", "mesh.tensor=3"]
    assert main(["validate", *argv]) == 2
    err = capsys.readouterr().err
    assert "3 problems in the config" in err
    for key in ("optim.lerning_rate", "train.global_batch_size", "mesh.tensor=3"):
        assert key in err, (key, err)
    with pytest.raises(ValidationError) as info:
        validate(argv[0], argv[1:], devices=8)
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems[:2]] == [
        "command-line override 'optim.lerning_rate=1e-5'",
        "command-line override 'train.global_batch_size=sixty'",
    ]
    assert problems[2].startswith("mesh.fsdp=-1 cannot take the rest: the other sizes (mesh.data=1 x mesh.tensor=3)")


def test_a_bad_batch_value_skips_only_the_batch_check(tmp_path):
    path = _config(tmp_path, "model:\n  preset: tiny\n  vocab_size: 1004\ntrain:\n  global_batch_size: 13\n")
    with pytest.raises(ValidationError) as info:  # 13 rows on 8 data-parallel devices, but the batch is not checked
        validate(str(path), ["train.microbatches=zero"], devices=8)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("command-line override 'train.microbatches=zero'")
    with pytest.raises(ValidationError) as info:  # the parameters still are: 4 heads on a tensor axis of 8
        validate(str(path), ["train.microbatches=zero", "mesh.tensor=8", "mesh.fsdp=1"], devices=8)
    assert len(info.value.problems) == 2 and "mesh axis 'tensor' (8)" in info.value.problems[1]
    assert validate(str(path), ["mesh.tensor=8", "mesh.fsdp=1"], devices=8).problems[0].startswith("model.vocab_size")


def test_train_reports_value_and_layout_problems_of_a_config_built_in_code_together(tmp_path):
    from jaxtune.train.trainer import train

    cfg = config_from_dict({"run_dir": str(tmp_path / "run"), "model": {"preset": "tiny"}})
    bad = dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim, learning_rate=float("inf")),
        mesh=dataclasses.replace(cfg.mesh, fsdp=3),
    )
    with pytest.raises(ConfigError) as info:
        train(bad)
    assert info.value.problems[0] == "optim.learning_rate must be a finite number, got inf"
    assert info.value.problems[1].startswith("mesh.data=1 x mesh.fsdp=3 x mesh.tensor=1 = 3 devices")
    assert len(info.value.problems) == 2
    assert not (tmp_path / "run").exists()


def test_gs_inputs_are_accepted_without_being_looked_up(tmp_path):
    # Fetched per host when a run starts (jaxtune/data/remote.py): validate, which may run anywhere, never reads them.
    path = tmp_path / "run.yaml"
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\nmodel:\n  preset: tiny\n  vocab_size: 1004\n"
        "data:\n  path: gs://b/data\n  tokenizer: gs://b/tok\n  max_len: 256\n"
        "checkpoint:\n  init_from: gs://b/base\neval:\n  suites: [doit]\n  data_dir: gs://b/eval\n  tokenizer: gs://b/tok\n"
    )
    result = validate(str(path), devices=8)
    assert result.ok, result.problems
