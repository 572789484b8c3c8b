"""import-hf / export-hf / check-hf on BLOOM folders, against transformers' own files and PyTorch BloomForCausalLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from hf_models import build_hf_bloom, hf_logits, rewrite, save_hf_model, stored_tensors
from safetensors.torch import save_file

from jaxtune.checkpoint.params import load_params, restore_model
from jaxtune.convert.hf import export_hf, import_hf, load_hf_params
from jaxtune.errors import JaxtuneError
from jaxtune.eval.parity import check_hf
from jaxtune.models.bloom import Bloom

TOL = 1e-4


@pytest.fixture(scope="module")
def bloom_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """4 heads, tied embeddings, vocabulary 97, float32, one safetensors file (as transformers v5 saves it)."""
    model = build_hf_bloom(seed=0)
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf") / "bloom")


@pytest.fixture(scope="module")
def bloom_bf16_sharded_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """6 heads (both ALiBi slope sequences), vocabulary 131, bfloat16, shards of ~60 kB."""
    model = build_hf_bloom(seed=1, dtype=torch.bfloat16, vocab_size=131, hidden_size=96, n_head=6)
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf") / "bloom_bf16", max_shard_size="60KB")


@pytest.fixture(scope="module")
def bloom_untied_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """3 heads, untied LM head, vocabulary 89."""
    model = build_hf_bloom(seed=2, vocab_size=89, hidden_size=48, n_head=3, tie_word_embeddings=False)
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf") / "bloom_untied")


@pytest.mark.parametrize("fixture", ["bloom_dir", "bloom_bf16_sharded_dir", "bloom_untied_dir"])
def test_import_then_export_round_trips_every_tensor_bit_for_bit(fixture: str, request, tmp_path: Path) -> None:
    hf_model, hf_dir = request.getfixturevalue(fixture)
    cfg = import_hf(hf_dir, tmp_path / "ckpt")
    assert cfg.family == "bloom" and cfg.intermediate_size == 4 * cfg.hidden_size
    assert cfg.param_dtype == ("bfloat16" if "bf16" in fixture else "float32")
    export_hf(tmp_path / "ckpt", tmp_path / "out", max_shard_size="60KB" if "sharded" in fixture else "5GB")
    original, exported = stored_tensors(hf_dir), stored_tensors(tmp_path / "out")
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    exported_model, original_model = (
        transformers.BloomForCausalLM.from_pretrained(d).eval() for d in (tmp_path / "out", hf_dir)
    )
    assert exported_model.config.to_dict()["n_head"] == original_model.config.n_head
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9))
    np.testing.assert_array_equal(hf_logits(exported_model, ids), hf_logits(original_model, ids))


@pytest.mark.parametrize("fixture", ["bloom_dir", "bloom_untied_dir"])
def test_imported_model_matches_transformers_logits(fixture: str, request, tmp_path: Path) -> None:
    hf_model, hf_dir = request.getfixturevalue(fixture)
    cfg = import_hf(hf_dir, tmp_path / "ckpt", vocab_pad_multiple=128)
    model = restore_model(tmp_path / "ckpt")
    assert isinstance(model, Bloom)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 20))
    got = np.asarray(model(ids.astype(np.int32))[0])
    assert got.shape == (2, 20, cfg.vocab_size)
    assert np.max(np.abs(got - hf_logits(hf_model, ids))) < TOL
    _, params = load_params(tmp_path / "ckpt", as_numpy=True)
    assert params["embed_tokens"].shape[0] == 128 and not params["embed_tokens"][cfg.vocab_size :].any()


def v4_bigscience_folder(hf_model: Any, hf_dir: Path, legacy_shards: int = 0) -> Path:
    """The folder as the bigscience releases ship it: a transformers-v4 config.json (``n_embed``,
    ``num_attention_heads``, ``torch_dtype``, ``seq_length``, Megatron fields) and tensors named as saved from
    BloomModel (no ``transformer.`` prefix); safetensors, or legacy pytorch_model*.bin."""
    hf_dir.mkdir()
    c = hf_model.config
    config = {
        "architectures": ["BloomForCausalLM"],
        "model_type": "bloom",
        "vocab_size": c.vocab_size,
        "n_embed": c.hidden_size,
        "n_layer": c.n_layer,
        "num_attention_heads": c.n_head,
        "n_inner": None,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "initializer_range": c.initializer_range,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
        "unk_token_id": 0,
        "seq_length": 2048,
        "apply_residual_connection_post_layernorm": False,
        "pretraining_tp": 4,
        "slow_but_exact": False,
        "offset_alibi": 100,
        "masked_softmax_fusion": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "transformers_version": "4.20.0",
    }
    (hf_dir / "config.json").write_text(json.dumps(config))
    state = {
        k.removeprefix("transformer."): v.contiguous()
        for k, v in hf_model.state_dict().items()
        if k != "lm_head.weight"
    }
    if legacy_shards == 0:
        save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    elif legacy_shards == 1:
        torch.save(state, hf_dir / "pytorch_model.bin")
    else:
        names, weight_map = list(state), {}
        for s in range(legacy_shards):
            file = f"pytorch_model-{s + 1:05d}-of-{legacy_shards:05d}.bin"
            part = {n: state[n] for n in names[s::legacy_shards]}
            torch.save(part, hf_dir / file)
            weight_map.update({n: file for n in part})
        (hf_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return hf_dir


def _leaves(tree: dict) -> list[np.ndarray]:
    return [x for k in sorted(tree) for x in (_leaves(tree[k]) if isinstance(tree[k], dict) else [tree[k]])]


@pytest.mark.parametrize("legacy_shards", [0, 1, 3])
def test_v4_config_and_unprefixed_or_legacy_weights_import_like_v5(
    bloom_dir, tmp_path: Path, legacy_shards: int
) -> None:
    hf_model, hf_dir = bloom_dir
    old = v4_bigscience_folder(hf_model, tmp_path / "v4", legacy_shards)
    cfg_old, params_old = load_hf_params(old)
    cfg_new, params_new = load_hf_params(hf_dir)
    assert cfg_old.family == "bloom" and cfg_old.num_heads == 4 and cfg_old.hidden_size == 64
    assert cfg_old.pad_token_id == 3 and cfg_old.param_dtype == "float32"
    for a, b in zip(_leaves(params_old), _leaves(params_new)):
        np.testing.assert_array_equal(a, b)
    # transformers reads the same folder (v4 spelling) as the same model.
    if legacy_shards == 0:
        reloaded = transformers.BloomForCausalLM.from_pretrained(old).eval()
        ids = np.random.default_rng(2).integers(0, 97, (1, 7))
        np.testing.assert_allclose(hf_logits(reloaded, ids), hf_logits(hf_model, ids), atol=1e-6)


def test_check_hf_reports_agreement_on_bloom(bloom_bf16_sharded_dir) -> None:
    report = check_hf(bloom_bf16_sharded_dir[1], num_tokens=12, max_new_tokens=10)
    assert report.ok, report.summary()
    assert report.max_abs_logit_diff < TOL and len(report.hf_tokens) == 10


def test_eval_loads_a_bloom_folder_directly(bloom_dir) -> None:
    from jaxtune.eval.loading import load_model

    hf_model, hf_dir = bloom_dir
    model = load_model(hf_dir)
    assert isinstance(model, Bloom)
    ids = np.random.default_rng(3).integers(0, 97, (1, 10))
    assert np.max(np.abs(np.asarray(model(ids.astype(np.int32))[0]) - hf_logits(hf_model, ids))) < TOL


# ---- bad input ------------------------------------------------------------------------------------------------------


def test_missing_bloom_tensor_is_named(bloom_dir, tmp_path: Path) -> None:
    d = shutil.copytree(bloom_dir[1], tmp_path / "m")
    rewrite(d, lambda t: t.pop("transformer.h.1.self_attention.query_key_value.bias"))
    with pytest.raises(
        JaxtuneError,
        match=r"missing tensor\(s\) transformer\.h\.1\.self_attention\.query_key_value"
        r"\.bias",
    ):
        import_hf(d, tmp_path / "ckpt")


def test_bloom_shape_mismatch_names_both_shapes(bloom_dir, tmp_path: Path) -> None:
    d = shutil.copytree(bloom_dir[1], tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"n_head": 8, "hidden_size": 64, "vocab_size": 96}))
    with pytest.raises(
        JaxtuneError,
        match=r"tensor transformer\.word_embeddings\.weight has shape \[97, 64\], "
        r"config\.json implies \[96, 64\]",
    ):
        import_hf(d, tmp_path / "ckpt")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm=true"),
        ({"slow_but_exact": True, "pretraining_tp": 2}, "slow_but_exact=true with pretraining_tp=2"),
        ({"hidden_size": None}, "missing required field 'hidden_size' or 'n_embed'"),
        ({"model_type": "llama"}, "model_type 'llama' does not match architecture BloomForCausalLM"),
        ({"architectures": ["FalconForCausalLM"]}, "unsupported architecture FalconForCausalLM .*BloomForCausalLM"),
    ],
)
def test_unsupported_bloom_config_is_named(bloom_dir, tmp_path: Path, change: dict, message: str) -> None:
    d = shutil.copytree(bloom_dir[1], tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(JaxtuneError, match=message):
        import_hf(d, tmp_path / "ckpt")


def test_bloom_with_a_non_standard_mlp_cannot_be_exported(tmp_path: Path) -> None:
    from flax import nnx

    from jaxtune.checkpoint.params import save_params
    from jaxtune.models.configs import model_config

    cfg = model_config("bloom-tiny", intermediate_size=100)
    save_params(tmp_path / "ckpt", nnx.to_pure_dict(nnx.state(Bloom(cfg), nnx.Param)), cfg)
    with pytest.raises(JaxtuneError, match=r"model\.intermediate_size=100: .* 4 x hidden_size = 384"):
        export_hf(tmp_path / "ckpt", tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.safetensors"))
