"""jaxtune.train.optim against PyTorch: transformers' schedules and torch.optim.AdamW with clip_grad_norm_."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtune.config.schema import ConfigError, OptimConfig
from jaxtune.train.optim import build_optimizer, learning_rate_schedule, weight_decay_mask

torch = pytest.importorskip("torch", reason="the optimizer parity tests need PyTorch (pip install jaxtune[test])")
transformers = pytest.importorskip("transformers")

TOTAL = 40


def _torch_lrs(make_scheduler, peak: float) -> np.ndarray:
    """Learning rate used at each of TOTAL optimizer steps by a transformers scheduler."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=peak)
    scheduler = make_scheduler(opt)
    lrs = []
    for _ in range(TOTAL):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return np.asarray(lrs)


@pytest.mark.parametrize(
    "schedule, warmup, reference",
    [
        ("linear_from_peak", 0, lambda o: transformers.get_linear_schedule_with_warmup(o, 0, TOTAL)),
        ("warmup_linear", 6, lambda o: transformers.get_linear_schedule_with_warmup(o, 6, TOTAL)),
        ("warmup_cosine", 6, lambda o: transformers.get_cosine_schedule_with_warmup(o, 6, TOTAL)),
        ("constant", 6, lambda o: transformers.get_constant_schedule_with_warmup(o, 6)),
        ("constant", 0, lambda o: transformers.get_constant_schedule(o)),
    ],
)
def test_schedules_match_transformers(schedule, warmup, reference):
    peak = 2e-5
    ours = learning_rate_schedule(OptimConfig(learning_rate=peak, schedule=schedule, warmup_steps=warmup), TOTAL)
    got = np.asarray([float(ours(i)) for i in range(TOTAL)])
    np.testing.assert_allclose(got, _torch_lrs(reference, peak), rtol=1e-5, atol=1e-12)


def test_study_schedule_peaks_at_the_first_step_and_reaches_zero():
    sched = learning_rate_schedule(OptimConfig(learning_rate=1e-5, schedule="linear_from_peak"), 10)
    assert float(sched(0)) == pytest.approx(1e-5) and float(sched(10)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-6)


def test_warmup_ratio_and_invalid_settings():
    sched = learning_rate_schedule(OptimConfig(learning_rate=1.0, schedule="warmup_linear", warmup_ratio=0.25), 8)
    assert [round(float(sched(i)), 6) for i in range(3)] == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="warmup_steps=20 is longer than the run"):
        learning_rate_schedule(OptimConfig(schedule="warmup_cosine", warmup_steps=20), 10)
    with pytest.raises(ConfigError, match="optim.b2"):
        build_optimizer(OptimConfig(b2=1.0), 10)


def _params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "embed_tokens": rng.normal(size=(6, 4)).astype(np.float32),
        "layers": {
            "attn_norm": (1 + 0.1 * rng.normal(size=(2, 4))).astype(np.float32),
            "q_proj": rng.normal(size=(2, 4, 2, 2)).astype(np.float32),
        },
        "norm": np.ones(4, np.float32),
        "lm_head": rng.normal(size=(4, 6)).astype(np.float32),
    }


@pytest.mark.parametrize("decay_all", [True, False])
def test_adamw_with_clipping_and_schedule_matches_torch(decay_all):
    cfg = OptimConfig(
        learning_rate=1e-2,
        schedule="linear_from_peak",
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.1,
        max_grad_norm=1.0,
        decay_norms_and_embeddings=decay_all,
    )
    steps = 6
    tx, _ = build_optimizer(cfg, steps)
    params = jax.tree.map(jnp.asarray, _params(0))
    grads = [jax.tree.map(lambda x: 3.0 * x, _params(100 + k)) for k in range(steps)]  # norms above the clip

    flat_names = ["/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    torch_params = [torch.nn.Parameter(torch.tensor(np.asarray(p))) for p in jax.tree.leaves(params)]
    no_decay = {"embed_tokens", "layers/attn_norm", "norm"} if not decay_all else set()
    groups = [
        {"params": [p for n, p in zip(flat_names, torch_params) if n not in no_decay], "weight_decay": 0.1},
        {"params": [p for n, p in zip(flat_names, torch_params) if n in no_decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.learning_rate, betas=(cfg.b1, cfg.b2), eps=cfg.eps
    )
    scheduler = transformers.get_linear_schedule_with_warmup(opt, 0, steps)

    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
        for p, gv in zip(torch_params, jax.tree.leaves(g)):
            p.grad = torch.tensor(np.asarray(gv))
        torch.nn.utils.clip_grad_norm_(torch_params, cfg.max_grad_norm)
        opt.step()
        scheduler.step()
    for name, ours, theirs in zip(flat_names, jax.tree.leaves(params), torch_params):
        np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=name)


def test_decay_mask_excludes_norms_and_the_input_embedding_only():
    mask = weight_decay_mask(_params(0))
    assert mask == {
        "embed_tokens": False,
        "layers": {"attn_norm": False, "q_proj": True},
        "norm": False,
        "lm_head": True,
    }
