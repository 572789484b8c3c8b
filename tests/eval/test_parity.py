"""check-hf (jaxtune/eval/parity.py): jaxtune's model against transformers' on a tiny random Hugging Face folder, in
float32 and bfloat16; the correct conversion passes, one permuted head or a wrong rope base fails."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from convert.hf_models import LLAMA3_ROPE, build_hf_model, build_hf_qwen2, save_hf_model

import jaxtune.eval.parity as parity
from jaxtune.convert.hf import load_hf_params
from jaxtune.eval.parity import CheckReport, check_hf

TOL = 1e-4


@pytest.fixture(scope="module")
def tied_gqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Grouped-query attention, tied embeddings, llama3 rope, vocabulary 131, saved in shards of ~100 kB."""
    model = build_hf_model(
        seed=1, vocab_size=131, num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE
    )
    return save_hf_model(model, tmp_path_factory.mktemp("hf") / "tied_gqa", max_shard_size="100KB")


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf_model(build_hf_qwen2(seed=0), tmp_path_factory.mktemp("hf") / "qwen2")


def test_check_hf_reports_agreement(tied_gqa_dir) -> None:
    report = check_hf(tied_gqa_dir, num_tokens=12, max_new_tokens=10)
    assert report.ok, report.summary()
    assert report.max_abs_logit_diff < TOL and len(report.hf_tokens) == 10
    assert "OK" in report.summary() and "agree on all 10 tokens" in report.summary()
    assert "max |Δ log-softmax| / logit spread" in report.summary()


def permuted_head(cfg, params):
    """Layer 0's first two query heads swapped."""
    q = params["layers"]["q_proj"]
    q[0] = q[0][:, [1, 0, *range(2, q.shape[2])]]
    return cfg, params


def wrong_rope_theta(cfg, params):
    return dataclasses.replace(cfg, rope_theta=cfg.rope_theta * 10), params


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("folder", ["tied_gqa_dir", "qwen2_dir"])
@pytest.mark.parametrize("breaker", [None, permuted_head, wrong_rope_theta], ids=["correct", "head", "theta"])
def test_correct_conversion_passes_and_a_broken_one_fails(folder, dtype, breaker, request, monkeypatch) -> None:
    if breaker is not None:
        monkeypatch.setattr(parity, "load_hf_params", lambda *a, **k: breaker(*load_hf_params(*a, **k)))
    report = check_hf(request.getfixturevalue(folder), num_tokens=32, max_new_tokens=8, dtype=dtype)
    assert report.dtype == dtype
    if breaker is None:
        assert report.ok, report.summary()
        assert report.relative_error < parity.DEFAULT_TOLERANCE[dtype] / 2
    else:
        assert not report.ok and not report.logits_ok, report.summary()
        assert report.relative_error > 5 * parity.DEFAULT_TOLERANCE[dtype]


def report(**changes) -> CheckReport:
    values = dict(
        hf_dir="m",
        num_tokens=32,
        max_abs_logprob_diff=1.44e-4,
        logit_spread=3.0,
        tolerance=parity.DEFAULT_TOLERANCE["float32"],
        jaxtune_tokens=[1, 2, 3],
        hf_tokens=[1, 2, 3],
    )
    return CheckReport(**{**values, **changes})


def test_a_deep_models_float32_rounding_passes_where_an_absolute_tolerance_failed() -> None:
    assert report().ok and report().relative_error == pytest.approx(4.8e-5)


def test_check_report_spots_divergence() -> None:
    bad = report(max_abs_logprob_diff=0.1, jaxtune_tokens=[1, 2, 3], hf_tokens=[1, 2, 4], tie_gap=1.0)
    assert not bad.ok and not bad.logits_ok and not bad.greedy_match and not bad.near_tie
    assert bad.first_divergence() == 2
    assert "MISMATCH" in bad.summary() and "TOO LARGE" in bad.summary() and "not a near tie" in bad.summary()


def test_a_near_tie_within_the_tolerance_does_not_fail_the_check() -> None:
    tie = report(jaxtune_tokens=[1, 2, 3], hf_tokens=[1, 2, 4], tie_gap=1e-3)
    assert tie.ok and not tie.greedy_match and tie.near_tie and "a near tie, ok" in tie.summary()
    assert not report(jaxtune_tokens=[1, 2, 3], hf_tokens=[1, 2, 4], tie_gap=0.5).ok


def test_cli_check_hf_states_the_metric_and_exits_by_the_verdict(qwen2_dir, capsys, monkeypatch) -> None:
    from jaxtune.cli import main

    assert main(["check-hf", str(qwen2_dir), "--tokens", "16", "--new-tokens", "4", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "(bfloat16): OK" in out and "max |Δ log-softmax| / logit spread over 16 tokens" in out
    monkeypatch.setattr(parity, "load_hf_params", lambda *a, **k: wrong_rope_theta(*load_hf_params(*a, **k)))
    assert main(["check-hf", str(qwen2_dir), "--tokens", "16", "--new-tokens", "4"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
