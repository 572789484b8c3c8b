"""DoIT's vocabulary through conversion: the Chinese-LLaMA-Plus tokenizer plus ``<user>``, ``<assistant>``, ``<eot>``,
``<pad>`` (ids 49953..49956), a resized model, and Hugging Face files that transformers loads with all of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import transformers
from flax import nnx
from hf_models import build_hf_model, hf_logits, save_hf_model

from jaxtune.checkpoint.params import load_params, restore_model, save_params
from jaxtune.convert.hf import export_hf, import_hf
from jaxtune.convert.hf_tokenizer import HFTokenizerError, write_hf_tokenizer
from jaxtune.models.decoder import resize_token_embeddings

DOIT_TOKENS = {"<user>": 49953, "<assistant>": 49954, "<eot>": 49955, "<pad>": 49956}


@pytest.fixture(scope="module")
def doit_tokenizer(shared_data: Path) -> Path:
    path = shared_data / "tokenizers" / "chinese-llama-plus"
    if not (path / "tokenizer.model").is_file():
        pytest.skip(f"{path}/tokenizer.model is not present")
    return path


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory):
    """A one-layer model with the Chinese-LLaMA-Plus vocabulary size (49,953), no tokenizer in its folder."""
    model = build_hf_model(
        seed=5,
        vocab_size=49953,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf") / "plus")


@pytest.fixture(scope="module")
def doit_checkpoint(base_model, doit_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ck") / "doit"
    import_hf(base_model[1], out, added_tokens=list(DOIT_TOKENS), tokenizer_dir=doit_tokenizer, vocab_pad_multiple=128)
    return out


def test_import_adds_the_tokens_and_mean_initialises_their_rows(base_model, doit_checkpoint: Path) -> None:
    hf_model, _ = base_model
    cfg, params = load_params(doit_checkpoint, as_numpy=True)
    assert cfg.vocab_size == 49957 and cfg.padded_vocab_size() == 50048 and cfg.pad_token_id == 49956
    tokenizer_dir = doit_checkpoint / "tokenizer"
    assert json.loads((tokenizer_dir / "added_tokens.json").read_text()) == DOIT_TOKENS
    old_embed = hf_model.get_input_embeddings().weight.detach().numpy()
    old_head = hf_model.get_output_embeddings().weight.detach().numpy()
    for table, old in ((params["embed_tokens"], old_embed), (params["lm_head"].T, old_head)):
        np.testing.assert_array_equal(table[:49953], old)
        np.testing.assert_allclose(table[49953:49957], np.repeat(old.mean(0, keepdims=True), 4, 0), atol=1e-6)
        assert not table[49957:].any()


def test_export_writes_a_tokenizer_transformers_loads_with_the_added_tokens(
    base_model, doit_checkpoint: Path, doit_tokenizer: Path, tmp_path: Path
) -> None:
    export_hf(doit_checkpoint, tmp_path / "out")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert len(tokenizer) == 49957
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in DOIT_TOKENS} == DOIT_TOKENS
    assert tokenizer.pad_token == "<pad>"
    ids = tokenizer("<user>", add_special_tokens=False)["input_ids"]
    assert ids == [49953]  # one special token, not split into pieces
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (doit_tokenizer / "tokenizer.model").read_bytes()

    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.config.vocab_size == 49957 and model.config.pad_token_id == 49956
    assert model.get_input_embeddings().weight.shape == (49957, 32)
    ids = np.array([[5, 319, 49953, 100, 49955]])
    original = hf_logits(base_model[0], ids[:, :2])
    np.testing.assert_allclose(hf_logits(model, ids[:, :2])[..., :49953], original, atol=1e-5)


def test_a_model_resized_after_import_exports_the_right_vocabulary(
    base_model, doit_tokenizer: Path, tmp_path: Path
) -> None:
    """The trainer's path: import the base model as it is, resize for the tokenizer's added tokens, save, export."""
    import_hf(base_model[1], tmp_path / "base", tokenizer_dir=doit_tokenizer)
    model = restore_model(tmp_path / "base")
    assert model.cfg.vocab_size == 49953
    resize_token_embeddings(model, 49957, pad_multiple=128)
    save_params(
        tmp_path / "resized",
        nnx.state(model, nnx.Param),
        model.cfg,
        tokenizer_dir=tmp_path / "base" / "tokenizer",
        added_tokens=DOIT_TOKENS,
    )
    export_hf(tmp_path / "resized", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == 49957
    assert len(transformers.AutoTokenizer.from_pretrained(tmp_path / "out")) == 49957
    # Resizing the model and resizing during import agree.
    import_hf(
        base_model[1],
        tmp_path / "at_import",
        added_tokens=list(DOIT_TOKENS),
        tokenizer_dir=doit_tokenizer,
        vocab_pad_multiple=128,
    )
    _, at_import = load_params(tmp_path / "at_import", as_numpy=True)
    np.testing.assert_allclose(np.asarray(model.embed_tokens[...]), at_import["embed_tokens"], atol=1e-6)


def test_a_tokenizer_longer_than_the_model_is_refused(doit_tokenizer: Path, tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.model").write_bytes((doit_tokenizer / "tokenizer.model").read_bytes())
    with pytest.raises(HFTokenizerError, match="has 49953 tokens but the model's vocabulary has only 1000 rows"):
        write_hf_tokenizer(tmp_path / "tok", tmp_path / "out", vocab_size=1000)


def test_recorded_ids_that_do_not_fit_the_tokenizer_are_refused(doit_tokenizer: Path, tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.model").write_bytes((doit_tokenizer / "tokenizer.model").read_bytes())
    (tmp_path / "tok" / "added_tokens.json").write_text(json.dumps({"<user>": 50000}))
    with pytest.raises(HFTokenizerError, match="'<user>' got id 49953, expected 50000"):
        write_hf_tokenizer(tmp_path / "tok", tmp_path / "out")
