"""import-hf / export-hf against transformers' own files and PyTorch model (tiny random models)."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_models import hf_logits, rewrite, stored_tensors

from jaxtune.checkpoint.params import load_params, restore_model
from jaxtune.convert.hf import (
    export_hf,
    fill_new_vocab_rows,
    import_hf,
    load_hf_params,
    parse_size,
    plan_shards,
)
from jaxtune.convert.safetensors_io import PlannedTensor
from jaxtune.errors import JaxtuneError

TOL = 1e-4


def jaxtune_logits(checkpoint: Path, ids: np.ndarray) -> np.ndarray:
    model = restore_model(checkpoint)
    return np.asarray(model(jnp.asarray(ids, jnp.int32))[0])


@pytest.mark.parametrize("fixture", ["untied_dir", "tied_gqa_dir", "bf16_dir"])
def test_import_then_export_round_trips_every_tensor_bit_for_bit(fixture: str, request, tmp_path: Path) -> None:
    hf_model, hf_dir = request.getfixturevalue(fixture)
    cfg = import_hf(hf_dir, tmp_path / "ckpt")
    assert cfg.param_dtype == ("bfloat16" if fixture == "bf16_dir" else "float32")  # the stored dtype is kept
    export_hf(tmp_path / "ckpt", tmp_path / "out")
    original, exported = stored_tensors(hf_dir), stored_tensors(tmp_path / "out")
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    # transformers loads the export as it loads the original, and computes the same function.
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9))
    exported_model, original_model = (
        transformers.LlamaForCausalLM.from_pretrained(d).eval() for d in (tmp_path / "out", hf_dir)
    )
    assert exported_model.config.dtype == original_model.config.dtype
    np.testing.assert_array_equal(hf_logits(exported_model, ids), hf_logits(original_model, ids))


@pytest.mark.parametrize("fixture", ["untied_dir", "tied_gqa_dir"])
def test_imported_model_matches_transformers_logits(fixture: str, request, tmp_path: Path) -> None:
    hf_model, hf_dir = request.getfixturevalue(fixture)
    cfg = import_hf(hf_dir, tmp_path / "ckpt", vocab_pad_multiple=128)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 20))
    got = jaxtune_logits(tmp_path / "ckpt", ids)
    assert got.shape == (2, 20, cfg.vocab_size)
    assert np.max(np.abs(got - hf_logits(hf_model, ids))) < TOL
    _, params = load_params(tmp_path / "ckpt", as_numpy=True)
    assert params["embed_tokens"].shape[0] == -(-cfg.vocab_size // 128) * 128
    assert not params["embed_tokens"][cfg.vocab_size :].any()


def test_sharded_export_loads_in_transformers(untied_dir, tmp_path: Path) -> None:
    hf_model, hf_dir = untied_dir
    import_hf(hf_dir, tmp_path / "ckpt", param_dtype="bfloat16", vocab_pad_multiple=128)
    export_hf(tmp_path / "ckpt", tmp_path / "out", dtype="float32", max_shard_size="60kB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    sizes = [(tmp_path / "out" / s).stat().st_size for s in shards]
    assert index["metadata"]["total_size"] <= sum(sizes)
    exported = stored_tensors(tmp_path / "out")
    assert set(exported) == set(index["weight_map"])
    assert exported["model.embed_tokens.weight"].shape == (97, 64)  # padding stripped
    for name, tensor in stored_tensors(hf_dir).items():  # float32 -> bfloat16 -> float32 is bfloat16 rounding
        assert torch.equal(exported[name], tensor.to(torch.bfloat16).float()), name
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.vocab_size == 97 and reloaded.config.dtype == torch.float32


def write_legacy_bin(hf_model: Any, hf_dir: Path, shards: int) -> None:
    """A pre-safetensors folder: config.json plus pytorch_model*.bin (with the rotary buffers old versions kept)."""
    hf_model.config.save_pretrained(hf_dir)
    state = dict(hf_model.state_dict())
    head_dim = hf_model.config.hidden_size // hf_model.config.num_attention_heads
    for i in range(hf_model.config.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(head_dim // 2)
    names = list(state)
    if shards == 1:
        torch.save(state, hf_dir / "pytorch_model.bin")
        return
    weight_map = {}
    for s in range(shards):
        file = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[s::shards]}
        torch.save(part, hf_dir / file)
        weight_map.update({n: file for n in part})
    (hf_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("shards", [1, 3])
def test_legacy_pytorch_bin_imports_like_safetensors(untied_dir, tmp_path: Path, shards: int) -> None:
    hf_model, hf_dir = untied_dir
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    write_legacy_bin(hf_model, legacy, shards)
    cfg_bin, params_bin = load_hf_params(legacy)
    cfg_st, params_st = load_hf_params(hf_dir)
    assert cfg_bin == cfg_st
    for a, b in zip(_leaves(params_bin), _leaves(params_st)):
        np.testing.assert_array_equal(a, b)


def _leaves(tree: dict) -> list[np.ndarray]:
    return [x for k in sorted(tree) for x in (_leaves(tree[k]) if isinstance(tree[k], dict) else [tree[k]])]


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/jaxtune-test-unpickled"),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_legacy_files_are_never_unpickled(untied_dir, tmp_path: Path) -> None:
    hf_model, _ = untied_dir
    marker = Path("/tmp/jaxtune-test-unpickled")
    marker.unlink(missing_ok=True)
    hf_model.config.save_pretrained(tmp_path)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Payload()}, f)
    with pytest.raises(JaxtuneError, match=r"pytorch_model\.bin: cannot be read as PyTorch weights with weights_only"):
        load_hf_params(tmp_path)
    assert not marker.exists()


# ---- bad input ------------------------------------------------------------------------------------------------------


def test_missing_tensor_is_named(untied_dir, tmp_path: Path) -> None:
    d = shutil.copytree(untied_dir[1], tmp_path / "m")
    rewrite(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(JaxtuneError, match=r"missing tensor\(s\) model\.layers\.1\.mlp\.up_proj\.weight"):
        import_hf(d, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_unexpected_tensor_is_named(untied_dir, tmp_path: Path) -> None:
    d = shutil.copytree(untied_dir[1], tmp_path / "m")
    rewrite(d, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}))
    with pytest.raises(
        JaxtuneError,
        match=r"unexpected tensor\(s\) model\.layers\.0\.self_attn\.q_proj\.bias "
        r"\(in model\.safetensors",
    ):
        import_hf(d, tmp_path / "ckpt")


def test_shape_mismatch_names_both_shapes(untied_dir, tmp_path: Path) -> None:
    d = shutil.copytree(untied_dir[1], tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"intermediate_size": 128}))
    with pytest.raises(
        JaxtuneError,
        match=r"model\.safetensors: tensor model\.layers\.0\.mlp\.gate_proj\.weight has "
        r"shape \[160, 64\], config\.json implies \[128, 64\]",
    ):
        import_hf(d, tmp_path / "ckpt")


def test_unsupported_architecture_is_named(untied_dir, tmp_path: Path) -> None:
    d = shutil.copytree(untied_dir[1], tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"architectures": ["MistralForCausalLM"]}))
    with pytest.raises(JaxtuneError, match="unsupported architecture MistralForCausalLM"):
        import_hf(d, tmp_path / "ckpt")


def test_truncated_shard_and_missing_shard_are_named(tied_gqa_dir, tmp_path: Path) -> None:
    d = shutil.copytree(tied_gqa_dir[1], tmp_path / "m")
    shards = sorted(d.glob("model-*.safetensors"))
    raw = shards[1].read_bytes()
    shards[1].write_bytes(raw[: len(raw) // 2])
    with pytest.raises(JaxtuneError, match=rf"{shards[1].name}: truncated file"):
        import_hf(d, tmp_path / "ckpt")
    shards[1].unlink()
    with pytest.raises(JaxtuneError, match=rf"index\.json: names shard files that are missing: {shards[1].name}"):
        import_hf(d, tmp_path / "ckpt")


def test_folder_without_weights(tmp_path: Path, untied_dir) -> None:
    shutil.copy(untied_dir[1] / "config.json", tmp_path / "config.json")
    with pytest.raises(JaxtuneError, match="no weights found"):
        import_hf(tmp_path, tmp_path / "ckpt")


def test_existing_checkpoint_is_not_overwritten_silently(untied_dir, tmp_path: Path) -> None:
    import_hf(untied_dir[1], tmp_path / "ckpt")
    with pytest.raises(JaxtuneError, match="already exists"):
        import_hf(untied_dir[1], tmp_path / "ckpt")
    import_hf(untied_dir[1], tmp_path / "ckpt", overwrite=True)
    with pytest.raises(JaxtuneError, match="already exists"):
        export_hf(tmp_path / "ckpt", tmp_path)


def test_shard_planning() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(1000) == 1000
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("lots")
    tensors = [PlannedTensor(str(i), np.float32, (n,)) for i, n in enumerate([10, 10, 30, 5, 5])]
    # 40 + 40 bytes fill the first shard; the 120-byte tensor gets one of its own.
    assert [[t.name for t in g] for g in plan_shards(tensors, 80)] == [["0", "1"], ["2"], ["3", "4"]]


@pytest.mark.parametrize("transposed", [False, True])
def test_new_vocabulary_rows_average_only_the_old_rows(transposed: bool) -> None:
    """Rows past the old vocabulary are uninitialised (np.empty) while the mean is taken: they must not leak in."""
    old, new, padded = 5000, 5004, 5120  # more than one 4096-row block
    rng = np.random.default_rng(0)
    table = np.full((padded, 3), np.nan, np.float32)
    table[:old] = rng.standard_normal((old, 3))
    expected = table[:old].astype(np.float64).mean(0)
    if transposed:  # the LM head is (E, V): its rows are filled through a transposed view
        storage = np.ascontiguousarray(table.T)
        fill_new_vocab_rows(storage.T, old, new)
        table = storage.T
    else:
        fill_new_vocab_rows(table, old, new)
    np.testing.assert_allclose(table[old:new], np.repeat(expected[None], 4, 0), atol=1e-6)
    assert not table[new:].any()


def test_normal_new_token_init_draws_rows_as_transformers_without_mean_resizing(untied_dir, tmp_path: Path) -> None:
    """``normal``: the study's transformers 4.30 resize (no mean resizing) drew new rows from normal(0,
    initializer_range); transformers 5 still does with mean_resizing=False. Compare the two draws' statistics."""
    hf_model, hf_dir = untied_dir
    old, new = hf_model.config.vocab_size, hf_model.config.vocab_size + 64
    std = hf_model.config.initializer_range
    cfg, params = load_hf_params(hf_dir, vocab_size=new, vocab_pad_multiple=128, new_token_init="normal")
    reference = copy.deepcopy(hf_model)
    reference.resize_token_embeddings(new, mean_resizing=False)
    for table, ref in (
        (params["embed_tokens"], reference.get_input_embeddings().weight),
        (params["lm_head"].T, reference.get_output_embeddings().weight),
    ):
        ref = ref.detach().numpy()
        np.testing.assert_array_equal(table[:old], ref[:old])
        drawn, expected = table[old:new].astype(np.float64), ref[old:new].astype(np.float64)
        assert abs(drawn.mean()) < 0.1 * std and abs(drawn.std() - std) < 0.06 * std
        assert abs(drawn.std() - expected.std()) < 0.1 * std
        assert not table[new:].any()
        mean_row = table[:old].astype(np.float64).mean(0)
        assert not np.allclose(drawn, mean_row, atol=std / 10)  # not the mean initialisation
    again = load_hf_params(hf_dir, vocab_size=new, new_token_init="normal")[1]
    np.testing.assert_array_equal(again["embed_tokens"][old:new], params["embed_tokens"][old:new])  # seeded


def test_unknown_new_token_init_is_named(untied_dir, tmp_path: Path) -> None:
    with pytest.raises(JaxtuneError, match="new-token init must be one of normal, mean"):
        import_hf(untied_dir[1], tmp_path / "ckpt", new_token_init="zeros")


def test_cli_import_hf_new_token_init_flag(untied_dir, tmp_path: Path) -> None:
    from jaxtune.cli import build_parser

    args = build_parser().parse_args(
        ["import-hf", str(untied_dir[1]), str(tmp_path / "c"), "--new-token-init", "normal"]
    )
    assert args.new_token_init == "normal"
    assert build_parser().parse_args(["import-hf", "a", "b"]).new_token_init == "mean"


def _imported_with(hf_dir: Path, where: Path, name: str, values: list[float]) -> Path:
    """The imported checkpoint of ``hf_dir`` with ``values`` written at the start of jaxtune param ``name``."""
    from jaxtune.checkpoint.params import save_params

    cfg = import_hf(hf_dir, where / "clean")
    _, params = load_params(where / "clean", as_numpy=True)
    params[name] = params[name].copy()
    params[name].reshape(-1)[: len(values)] = values
    return save_params(where / "bad", params, cfg)


def test_export_never_writes_a_non_finite_tensor(untied_dir, tmp_path: Path) -> None:
    _, hf_dir = untied_dir
    nan = _imported_with(hf_dir, tmp_path / "nan", "lm_head", [np.nan, 2.5e38])
    with pytest.raises(JaxtuneError, match=r"non-finite values \(NaN or inf\) in params\.lm_head \(1 values\)"):
        export_hf(nan, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # Finite in float32, beyond float16's range: refused at the cast, and the folder begun is removed.
    big = _imported_with(hf_dir, tmp_path / "big", "lm_head", [1e5])
    with pytest.raises(JaxtuneError, match=r"lm_head.weight has 1 values that are not finite in float16"):
        export_hf(big, tmp_path / "out16", dtype="float16")
    assert not (tmp_path / "out16").exists()
    export_hf(big, tmp_path / "out32")  # float32 holds it
    assert stored_tensors(tmp_path / "out32")["lm_head.weight"].flatten()[0].item() == 1e5
