"""check-hf (jaxtune/eval/parity.py): jaxtune's model against transformers' on a tiny random Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from convert.hf_models import LLAMA3_ROPE, build_hf_model, save_hf_model

from jaxtune.eval.parity import CheckReport, check_hf

TOL = 1e-4


@pytest.fixture(scope="module")
def tied_gqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Grouped-query attention, tied embeddings, llama3 rope, vocabulary 131, saved in shards of ~100 kB."""
    model = build_hf_model(
        seed=1, vocab_size=131, num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE
    )
    return save_hf_model(model, tmp_path_factory.mktemp("hf") / "tied_gqa", max_shard_size="100KB")


def test_check_hf_reports_agreement(tied_gqa_dir) -> None:
    report = check_hf(tied_gqa_dir, num_tokens=12, max_new_tokens=10)
    assert report.ok, report.summary()
    assert report.max_abs_logit_diff < TOL and len(report.hf_tokens) == 10
    assert "OK" in report.summary() and "agree on all 10 tokens" in report.summary()


def test_check_report_spots_divergence() -> None:
    report = CheckReport("m", 8, 2e-3, 1e-4, jaxtune_tokens=[1, 2, 3], hf_tokens=[1, 2, 4])
    assert not report.ok and not report.logits_ok and not report.greedy_match
    assert report.first_divergence() == 2
    assert "MISMATCH" in report.summary() and "TOO LARGE" in report.summary()
