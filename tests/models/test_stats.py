"""jaxtune.models.stats against independent counts: transformers' parameter count, XLA's FLOP count of the
compiled forward, and the size of optax's AdamW state."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtune.config.schema import ModelConfig
from jaxtune.models import attention
from jaxtune.models.configs import model_config
from jaxtune.models.llama import Llama
from jaxtune.models.stats import model_info

torch = pytest.importorskip("torch", reason="the parameter counts are compared with transformers' PyTorch model")
from hf_reference import hf_config  # noqa: E402


@pytest.mark.parametrize("name", ["doit-7b", "doit-33b", "tiny-gqa", "tiny-tied"])
def test_parameter_count_matches_transformers(name: str) -> None:
    import transformers

    cfg = model_config(name)
    with torch.device("meta"):  # shapes only, no memory
        hf_model = transformers.LlamaForCausalLM(hf_config(cfg))
    assert model_info(cfg).num_params == hf_model.num_parameters()


@pytest.mark.parametrize("name", ["bloom-560m", "bloom-tiny"])
def test_bloom_parameter_count_matches_transformers(name: str) -> None:
    import transformers

    cfg = model_config(name)
    hf = transformers.BloomConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads
    )
    with torch.device("meta"):
        hf_model = transformers.BloomForCausalLM(hf)
    assert model_info(cfg).num_params == hf_model.num_parameters()


def abstract_params(cfg: ModelConfig):
    return nnx.state(nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0))), nnx.Param)


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_memory_of_weights_and_adamw_state(dtype: str) -> None:
    cfg = model_config("doit-7b", param_dtype=dtype, vocab_pad_multiple=128)
    info = model_info(cfg)
    params = abstract_params(cfg)
    assert info.weights_bytes == nbytes(params)
    opt_state = jax.eval_shape(optax.adamw(1e-5).init, params)
    assert info.adamw_bytes == nbytes(opt_state) - nbytes([opt_state[0].count])
    assert info.num_params_allocated > info.num_params  # the padding rows are allocated, not counted by HF


def test_forward_flops_match_xla_cost_analysis() -> None:
    """XLA counts every matmul of the compiled (unrolled) forward. Its attention covers the key blocks that
    causality does not mask entirely (attention.causal_blocked_attention: (n + 1) / 2n of the square for n query
    blocks), while the causal term of model_info counts (T + 1) / 2T of the square."""
    seq_len, batch = 128, 2
    cfg = ModelConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=512,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        scan_layers=False,
    )  # XLA counts a scan's body once: unroll
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0))))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])
    cost = forward.lower(state, jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_per_token = cost["flops"] / (batch * seq_len)

    info = model_info(cfg, seq_len=seq_len)
    square_attention = info.attention_flops_per_token * 2 * seq_len / (seq_len + 1)
    blocks = attention.QUERY_BLOCKS
    xla_attention = square_attention * (blocks + 1) / (2 * blocks)
    # Norms, softmax and rotary embeddings are the rest (under 2% here).
    assert xla_per_token == pytest.approx(info.matmul_flops_per_token + xla_attention, rel=0.02)
    assert info.train_flops_per_token == 3 * info.forward_flops_per_token


def test_bloom_forward_flops_match_xla_cost_analysis() -> None:
    """As above for BLOOM: fused QKV, dense, 4h MLP and the tied head are the matmuls; ALiBi, biases and LayerNorms
    are the (small) rest."""
    from jaxtune.models.bloom import Bloom

    seq_len, batch = 128, 2
    cfg = model_config("bloom-tiny", hidden_size=256, num_heads=4, scan_layers=False)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Bloom(cfg, nnx.Rngs(0))))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])
    cost = forward.lower(state, jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    info = model_info(cfg, seq_len=seq_len)
    blocks = attention.QUERY_BLOCKS
    xla_attention = info.attention_flops_per_token * 2 * seq_len / (seq_len + 1) * (blocks + 1) / (2 * blocks)
    assert cost["flops"] / (batch * seq_len) == pytest.approx(info.matmul_flops_per_token + xla_attention, rel=0.03)


def test_llama_7b_figures_and_table() -> None:
    info = model_info(model_config("doit-7b"), seq_len=2048)
    # 6.74B for the 32k LLaMA-7B plus 2 x 17,953 x 4,096 for the Chinese vocabulary rows.
    assert info.num_params == 6_738_415_616 + 2 * 17953 * 4096
    assert info.forward_flops_per_token == pytest.approx(2 * (info.num_params - 49953 * 4096), rel=0.05)
    text = str(info)
    for label in ("parameters", "forward FLOPs/token @ 2048", "AdamW state", "weights"):
        assert label in text
    assert "6,885,486,592" in text
    with pytest.raises(ValueError, match="seq_len"):
        model_info(dataclasses.replace(model_config("tiny")), seq_len=0)


def _disk_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_checkpoint_bytes_match_saved_checkpoints(tmp_path) -> None:
    """run_storage's epoch and full train-state bytes against the folders Orbax actually writes for a small model:
    an upper bound (Orbax's zstd takes about 20% off random bfloat16 weights, less off float32)."""
    from train.synthetic_stream import synthetic_data

    from jaxtune.checkpoint.epochs import EpochCheckpointManager
    from jaxtune.checkpoint.train_state import TrainCheckpointManager
    from jaxtune.config.loading import config_from_dict
    from jaxtune.models.stats import run_storage
    from jaxtune.train.optim import build_optimizer
    from jaxtune.train.step import new_train_state

    cfg = config_from_dict(
        {
            "run_dir": str(tmp_path),
            "model": dict(
                vocab_size=2048,
                hidden_size=256,
                intermediate_size=512,
                num_layers=2,
                num_heads=4,
                max_position_embeddings=64,
                param_dtype="float32",
                compute_dtype="bfloat16",
            ),
            "train": dict(epochs=15),
            "checkpoint": dict(max_to_keep=2, async_save=False),
        }
    )
    storage = run_storage(cfg)
    params = nnx.to_pure_dict(nnx.state(Llama(cfg.model, nnx.Rngs(0)), nnx.Param))
    tx, _ = build_optimizer(cfg.optim, 10)
    state = jax.jit(lambda p: new_train_state(p, tx, 0))(params)
    _, opt_state = tx.update(params, state.opt_state, params)  # one update: moments that are not all zeros
    state = dataclasses.replace(state, opt_state=opt_state)

    epochs = EpochCheckpointManager(tmp_path, model_cfg=cfg.model, dtype="bfloat16", async_save=False)
    epochs.save(1, 1, state.params)
    epochs.close()
    train = TrainCheckpointManager(tmp_path, cfg.checkpoint, model_cfg=cfg.model)
    train.save(
        1,
        state.params,
        state.train_fields(),
        synthetic_data(num_rows=16, seq_len=16, global_batch=8, epochs=1).iterator,
        {},
    )
    train.close()

    on_disk = _disk_bytes(tmp_path / "epochs" / "1")
    assert storage.epoch_checkpoint_bytes == 2 * sum(x.size for x in jax.tree.leaves(params))
    assert storage.epoch_checkpoint_bytes * 0.7 <= on_disk <= storage.epoch_checkpoint_bytes * 1.03 + 65536
    on_disk = _disk_bytes(tmp_path / "checkpoints" / "1")
    assert storage.train_checkpoint_bytes * 0.7 <= on_disk <= storage.train_checkpoint_bytes * 1.03 + 131072
    assert storage.run_bytes == 15 * storage.epoch_checkpoint_bytes + 2 * storage.train_checkpoint_bytes


def test_a_33b_run_of_15_epochs_keeps_its_epochs_within_one_tebibyte() -> None:
    from jaxtune.config.loading import load_config
    from jaxtune.models.stats import run_storage

    for name in ("doit-7b", "doit-13b", "doit-33b"):
        storage = run_storage(load_config(f"configs/{name}.yaml", ["train.epochs=15"]))
        assert storage.epoch_checkpoint_bytes * 6 == storage.train_checkpoint_bytes  # bf16 vs fp32 + 2 moments
    assert storage.epochs_bytes <= 2**40
