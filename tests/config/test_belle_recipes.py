"""The BELLE recipes in configs/: the paper's settings, the model cards' variant and the LLaMA-7b study, each a valid
config (checked with the tiny preset, so these tests do not need the BLOOM presets) with the stated values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jaxtune.config.loading import load_config
from jaxtune.data.belle_volumes import parse_belle_selection
from jaxtune.eval.suites.belle import MODEL_CARD_DECODING
from jaxtune.train.optim import learning_rate_schedule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER, CARD, LLAMA = (CONFIGS / f"belle-{n}.yaml" for n in ("bloomz-7b1-mt", "bloomz-7b1-mt-card", "llama-7b"))


@pytest.mark.parametrize("path", [PAPER, CARD, LLAMA], ids=lambda p: p.stem)
def test_recipe_is_valid_and_shares_the_study_settings(path: Path) -> None:
    cfg = load_config(path, ["model.preset=tiny"])
    assert (cfg.train.global_batch_size, cfg.optim.learning_rate, cfg.optim.weight_decay) == (64, 3e-6, 0.001)
    assert (cfg.data.format, cfg.data.template, cfg.data.mask, cfg.eval.template) == (
        "belle",
        "belle",
        "assistant",
        "belle",
    )
    assert not cfg.data.packing and cfg.data.padding_side == "left"  # a batch is 64 examples, as BELLE's collator
    assert parse_belle_selection(cfg.data.selection).alpaca and cfg.data.alpaca_path
    assert cfg.eval.suites == ["belle"] and cfg.eval.judge_repeats == 3
    decoding = {k: getattr(cfg.eval, k) for k in MODEL_CARD_DECODING}
    assert decoding == MODEL_CARD_DECODING


def test_paper_card_and_llama_differ_where_stated() -> None:
    raw = {p: yaml.safe_load(p.read_text(encoding="utf-8")) for p in (PAPER, CARD, LLAMA)}
    assert raw[PAPER]["model"]["preset"] == raw[CARD]["model"]["preset"] == "bloomz-7b1-mt"
    assert raw[LLAMA]["model"]["preset"] == "llama2-7b" and raw[LLAMA]["model"]["rms_norm_eps"] == 1e-6
    for path in (PAPER, CARD):  # BLOOM's tokenizer has 250,680 ids; its checkpoints 250,880 rows
        model = load_config(path, ["model.preset=tiny"]).model
        assert (model.vocab_size, model.padded_vocab_size()) == (250_680, 250_880)
    assert "PAPER's settings" in PAPER.read_text().splitlines()[0]
    assert "MODEL CARDS' settings" in CARD.read_text().splitlines()[0]
    paper, card = load_config(PAPER, ["model.preset=tiny"]), load_config(CARD, ["model.preset=tiny"])
    assert (paper.train.epochs, paper.optim.schedule, paper.optim.warmup_ratio) == (2, "constant", 0.0)
    assert (card.train.epochs, card.optim.schedule, card.optim.warmup_ratio) == (3, "warmup_linear", 0.1)
    constant = learning_rate_schedule(paper.optim, 100)
    assert [float(constant(s)) for s in (0, 50, 99)] == pytest.approx([3e-6] * 3)
    # The cards' "Warmup_rate 0.1, LR_scheduler linear" is transformers' get_linear_schedule_with_warmup.
    linear = learning_rate_schedule(card.optim, 100)
    for step in (0, 5, 10, 55, 100):
        want = 3e-6 * (step / 10 if step < 10 else (100 - step) / 90)
        assert float(linear(step)) == pytest.approx(want, abs=1e-12), step
