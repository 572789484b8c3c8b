"""jaxtune.config.schema: each section checks its own values (what the run-time code calls on a section it is
handed), every message naming the dotted key and the value; loading runs the same rules (tests/config/test_loading.py)."""

from __future__ import annotations

import pytest

from jaxtune.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    dotted_key,
)
from jaxtune.errors import JaxtuneError


def test_sections_validate_themselves_naming_key_and_value() -> None:
    assert OptimConfig(learning_rate=float("nan"), b1=2.0).problems() == [
        "optim.learning_rate must be a finite number, got nan",
        "optim.b1 must be in [0, 1), got 2.0",
    ]
    with pytest.raises(ConfigError, match=r"^train\.epochs must be at least 1, got -1$"):
        TrainConfig(epochs=-1).validate()
    assert OptimConfig().problems() == [] and Config().problems("") == []


def test_nested_sections_report_under_their_own_prefix() -> None:
    cfg = Config(model=ModelConfig(hidden_size=100, num_heads=3), mesh=MeshConfig(fsdp=-1, tensor=-1))
    assert cfg.problems("") == [
        "model.hidden_size=100 is not divisible by model.num_heads=3; set model.head_dim explicitly",
        "only one mesh size may be -1, got -1 for mesh.fsdp, mesh.tensor",
    ]
    assert MeshConfig(tensor=0).problems("eval.mesh") == [
        "eval.mesh.tensor must be a positive size or -1 (the rest of the devices), got 0"
    ]


def test_config_error_lists_every_problem_and_is_reported_as_a_message() -> None:
    one, two = ConfigError("a.b is wrong"), ConfigError(["a.b is wrong", "c is wrong"])
    assert (str(one), one.problems) == ("a.b is wrong", ["a.b is wrong"])
    assert str(two) == "2 problems in the config:\n  a.b is wrong\n  c is wrong"
    assert issubclass(ConfigError, JaxtuneError)  # the CLI reports it as a message, not a traceback
    assert (dotted_key("model", "rope_scaling"), dotted_key("", "run_dir")) == ("model.rope_scaling", "run_dir")


def test_length_buckets_rules() -> None:
    ok = DataConfig(packing=False, max_len=2048, length_buckets=[256, 512, 1024, 1536, 2048])
    assert ok.problems() == [] and ok.row_lengths() == [256, 512, 1024, 1536, 2048]
    assert DataConfig(packing=False, max_len=512, length_buckets=[128]).row_lengths() == [128, 512]
    assert DataConfig(packing=False, pad_to_multiple=8).row_lengths() == [] and DataConfig().row_lengths() == [2048]
    assert (
        "increasing row lengths in [1, max_len=512]"
        in DataConfig(packing=False, max_len=512, length_buckets=[256, 128]).problems()[0]
    )
    assert "increasing" in DataConfig(packing=False, max_len=512, length_buckets=[1024]).problems()[0]
    assert DataConfig(length_buckets=[256]).problems() == [] and DataConfig(length_buckets=[256]).row_lengths() == [
        2048
    ]  # packed rows are max_len long
    both = DataConfig(packing=False, pad_to_multiple=8, length_buckets=[256]).problems()
    assert len(both) == 1 and "both set batch lengths" in both[0]
    data = DataConfig(packing=False, max_len=2048, length_buckets=[200, 1024])
    refused = Config(model=ModelConfig(attention_impl="splash"), data=data).problems("")
    assert len(refused) == 1 and "multiple of 128" in refused[0] and "[200]" in refused[0]
    assert Config(model=ModelConfig(attention_impl="xla"), data=data).problems("") == []
