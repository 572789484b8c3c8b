"""jaxtune.convert.hf_config: config.json in transformers v4 and v5 spellings, and what transformers reads back, for
every family (the LLaMA's field translation lives in jaxtune.families.llama, BLOOM's in tests/convert/test_hf_bloom.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from jaxtune.config.schema import ModelConfig, RopeScalingConfig
from jaxtune.convert.hf_config import hf_config_dict, model_config_from_hf, read_hf_config, write_hf_config
from jaxtune.families.hf import HFConfigError
from jaxtune.models.configs import model_config

V5_LLAMA3 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "dtype": "bfloat16",
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
# The same model as transformers 4.4x wrote it.
V4_LLAMA3 = {k: v for k, v in V5_LLAMA3.items() if k not in ("rope_parameters", "dtype")} | {
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
# LLaMA-1 era (Chinese-LLaMA-Plus): no rope fields at all, float16.
V4_LLAMA1 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49953,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "hidden_act": "silu",
    "torch_dtype": "float16",
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def test_v4_and_v5_spellings_give_the_same_model() -> None:
    v5 = model_config_from_hf(V5_LLAMA3)
    assert model_config_from_hf(V4_LLAMA3) == v5
    assert v5.rope_theta == 500000.0 and v5.rope_scaling == RopeScalingConfig("llama3", 8.0, 1.0, 4.0, 8192)
    assert v5.num_kv_heads == 8 and v5.param_dtype == "bfloat16" and v5.eos_token_id == 128001


def test_llama1_config() -> None:
    cfg = model_config_from_hf(V4_LLAMA1)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (49953, 4096, 32, 32)
    assert cfg.rope_theta == 10000.0 and cfg.rope_scaling.rope_type == "default"
    assert cfg.num_kv_heads is None and cfg.param_dtype == "float16" and cfg.pad_token_id == 0


def test_linear_scaling_with_the_old_type_key() -> None:
    cfg = model_config_from_hf(V4_LLAMA1 | {"rope_scaling": {"type": "linear", "factor": 2.0}})
    assert cfg.rope_scaling == RopeScalingConfig("linear", factor=2.0)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"architectures": ["MistralForCausalLM"]}, "unsupported architecture MistralForCausalLM"),
        ({"architectures": [], "model_type": "gemma"}, "unsupported model_type 'gemma'"),
        ({"attention_bias": True}, "attention_bias=true is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope type 'yarn'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope type 'llama3' needs 'low_freq_factor'"),
        ({"num_attention_heads": 30}, "hidden_size=4096 is not divisible by model.num_heads=30"),
    ],
)
def test_unsupported_configs_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(HFConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model_config_from_hf(V4_LLAMA1 | change, where="x/config.json")
    missing = {k: v for k, v in V4_LLAMA1.items() if k != "intermediate_size"}
    with pytest.raises(HFConfigError, match="missing required field 'intermediate_size'"):
        model_config_from_hf(missing)


def test_read_hf_config_errors(tmp_path: Path) -> None:
    with pytest.raises(HFConfigError, match="no config.json"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HFConfigError, match=r"config\.json: not valid JSON"):
        read_hf_config(tmp_path)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(
            vocab_size=131,
            hidden_size=64,
            intermediate_size=160,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            rope_scaling=RopeScalingConfig("llama3", 8.0, 1.0, 4.0, 64),
            pad_token_id=130,
        ),
        ModelConfig(
            vocab_size=97,
            hidden_size=64,
            intermediate_size=160,
            num_layers=2,
            num_heads=4,
            head_dim=32,
            rms_norm_eps=1e-5,
            rope_scaling=RopeScalingConfig("linear", factor=2.0),
        ),
    ],
    ids=["llama3-tied-gqa", "linear-head_dim"],
)
def test_written_config_reads_back_in_transformers_and_jaxtune(tmp_path: Path, cfg: ModelConfig) -> None:
    write_hf_config(cfg, tmp_path, "bfloat16")
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(hf, transformers.LlamaConfig)
    assert (hf.vocab_size, hf.num_key_value_heads, hf.head_dim) == (
        cfg.vocab_size,
        cfg.resolved_num_kv_heads(),
        cfg.resolved_head_dim(),
    )
    assert hf.rope_parameters["rope_type"] == cfg.rope_scaling.rope_type
    back = model_config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert back == ModelConfig(**{**cfg.__dict__, "param_dtype": "bfloat16"})
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["bos_token_id"] == cfg.bos_token_id and generation["eos_token_id"] == cfg.eos_token_id


@pytest.mark.parametrize("preset,config_class", [("tiny-gqa", "LlamaConfig"), ("bloom-tiny", "BloomConfig")])
def test_hf_config_dict_serves_every_family_and_reads_back(preset: str, config_class: str) -> None:
    cfg = model_config(preset)
    kwargs = hf_config_dict(cfg, "float32")
    hf = getattr(transformers, config_class)(**kwargs)
    assert (hf.vocab_size, hf.hidden_size, hf.num_hidden_layers) == (cfg.vocab_size, cfg.hidden_size, cfg.num_layers)
    back = model_config_from_hf(kwargs)
    assert back.family == cfg.family
    assert (back.hidden_size, back.intermediate_size, back.num_heads, back.num_kv_heads) == (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
    )
