"""Tokenizer loading and encoding of jaxtune/data/tokenizer.py, checked against sentencepiece and transformers."""

from __future__ import annotations

import csv
import json
import pickle
import shutil

import pytest
from doit_fixtures import CMMLU, make_hf_tokenizer_folder

from jaxtune.data.tokenizer import HFTokenizer, SentencePieceTokenizer, TokenizerError, load_tokenizer


def _cmmlu_questions(limit: int = 400) -> list[str]:
    if not (CMMLU / "test").is_dir():
        pytest.skip(f"CMMLU is not available at {CMMLU}")
    texts = []
    for path in sorted((CMMLU / "test").glob("*.csv"))[:6]:
        with open(path, encoding="utf-8") as f:
            for row in csv.DictReader(f):
                texts += [row["Question"], row["A"]]
    return texts[:limit]


def test_sentencepiece_matches_library_on_chinese(doit_tokenizer_path):
    import sentencepiece as spm

    reference = spm.SentencePieceProcessor(model_file=str(doit_tokenizer_path / "tokenizer.model"))
    tok = load_tokenizer(doit_tokenizer_path)
    assert isinstance(tok, SentencePieceTokenizer)
    texts = _cmmlu_questions() + ["A", " 空格 开头", "我们在中国北京学习大型语言模型。Large language models.", ""]
    assert tok.encode_batch(texts) == [reference.encode(t) for t in texts]
    assert tok.encode("A") == [319]  # the dummy prefix: "A" -> ▁A
    assert [tok.piece_to_id(p) for p in ("▁A", "▁B", "▁C", "▁D")] == [319, 350, 315, 360]
    assert tok.piece_to_id("<user>") is None
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id, tok.vocab_size) == (1, 2, 0, None, 49953)


def test_model_file_and_folder_agree(doit_tokenizer_path):
    a = load_tokenizer(doit_tokenizer_path / "tokenizer.model")
    b = load_tokenizer(doit_tokenizer_path)
    text = "中华人民共和国的首都是北京。"
    assert a.encode(text) == b.encode(text) and a.vocab_size == b.vocab_size


def test_added_special_tokens_are_appended_and_reported(doit_tokenizer_path):
    tok = load_tokenizer(doit_tokenizer_path)
    ids = tok.add_special_tokens(["<user>", "<assistant>", "<eot>", "<pad>", "<s>"])
    assert ids == {"<user>": 49953, "<assistant>": 49954, "<eot>": 49955, "<pad>": 49956, "<s>": 1}
    assert tok.added_tokens == {"<user>": 49953, "<assistant>": 49954, "<eot>": 49955, "<pad>": 49956}
    assert tok.vocab_size == 49957 and tok.pad_id == 49956
    assert tok.encode("<eot>") != [49955]  # content is plain text
    ids_ = [49953] + tok.encode("你好") + [49955]
    assert tok.decode(ids_) == "<user>你好<eot>"
    assert tok.id_to_piece(49954) == "<assistant>"
    assert "49957" in tok.describe()


def test_pickle_keeps_added_tokens(doit_tokenizer_path):
    tok = load_tokenizer(doit_tokenizer_path)
    tok.add_special_tokens(["<user>", "<eot>"])
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.added_tokens == tok.added_tokens and clone.encode("测试一下") == tok.encode("测试一下")


def test_saved_folder_with_added_tokens(doit_tokenizer_path, tmp_path):
    folder = tmp_path / "finetuned"
    folder.mkdir()
    shutil.copy(doit_tokenizer_path / "tokenizer.model", folder / "tokenizer.model")
    decoder = {
        str(49953 + i): {"content": t, "special": True}
        for i, t in enumerate(["<user>", "<assistant>", "<eot>", "<pad>"])
    }
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder, "pad_token": "<pad>"}))
    tok = load_tokenizer(folder)
    assert tok.base_vocab_size == 49957 and tok.pad_id == 49956
    assert tok.add_special_tokens(["<user>", "<assistant>", "<eot>"]) == {
        "<user>": 49953,
        "<assistant>": 49954,
        "<eot>": 49955,
    }
    assert tok.added_tokens == {} and tok.vocab_size == 49957
    decoder["49960"] = {"content": "<gap>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    with pytest.raises(TokenizerError, match="must have ids 49953"):
        load_tokenizer(folder)


def test_hf_folder_backend(tmp_path):
    folder = make_hf_tokenizer_folder(tmp_path / "hf")
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFTokenizer) and tok.chat_template is not None
    im_end = tok.piece_to_id("<|im_end|>")
    assert im_end is not None and tok.eos_id == im_end
    assert im_end not in tok.encode("stop <|im_end|> here")  # a control token typed in text stays text
    assert tok.hf.encode("hello world", add_special_tokens=False) == tok.encode("hello world")
    assert pickle.loads(pickle.dumps(tok)).encode("hello") == tok.encode("hello")


def test_load_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="neither tokenizer.model nor tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")


# BLOOM's tokenizer: a byte-level BPE tokenizer.json ---------------------------------------------------------------

BLOOM_SPLIT = r" ?[^(\s|[.,!?…。，、।۔،])]+"
"""The pre-tokenizer split of bigscience/bloom's tokenizer.json (before its ByteLevel step)."""

_ENGLISH = (
    "The quick brown fox jumps over the lazy dog. Instruction tuning teaches a language model to follow "
    "requests; more data usually helps, but not for every ability: math and code improve slowly."
)
_CHINESE = (
    "我们在不同规模的指令数据上微调模型，并按用途评估。数学和代码的提升较慢，而开放式问答、头脑风暴与写作提升明显。"
    "请把下面这句话翻译成英文：今天天气很好。"
)
BLOOM_SAMPLES = [
    "Human: Write a short poem about the sea.\n\nAssistant:",
    "Human: 请用三句话介绍一下长城。\n\nAssistant:",
    "数学题：一个数的 3 倍加上 5 等于 20，这个数是多少？",
    "Mixed 中英 text, numbers 12345 and emoji 🙂, tabs\tand  double  spaces.",
    "生僻字：龘靐齉爩 (never seen while training: bytes)",
    "",
]


def make_bloom_style_tokenizer(folder, vocab_size: int = 1024):
    """A small byte-level BPE trained with the ``tokenizers`` library, shaped like BLOOM's tokenizer.json (BLOOM's
    split regex then ByteLevel without a prefix space, <unk> <s> </s> <pad> at ids 0-3), saved as a Hugging Face
    folder by transformers' fast tokenizer. Returns the ``tokenizers`` object."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(BLOOM_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_ENGLISH, _CHINESE] * 20, trainer=trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    ).save_pretrained(str(folder))
    return tok


def test_bloom_byte_level_bpe_matches_the_tokenizers_library(tmp_path):
    reference = make_bloom_style_tokenizer(tmp_path / "bloom")
    tok = load_tokenizer(tmp_path / "bloom")
    assert isinstance(tok, HFTokenizer)
    assert (tok.piece_to_id("<unk>"), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.base_vocab_size == reference.get_vocab_size()
    texts = [_ENGLISH, _CHINESE] + BLOOM_SAMPLES
    got = tok.encode_batch(texts)
    for text, ids in zip(texts, got):
        assert ids == reference.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == text  # byte-level: lossless, no <unk> even for unseen characters
    assert 0 not in [i for ids in got for i in ids]
    # Merges were learnt: common Chinese and English text takes fewer tokens than its UTF-8 bytes.
    assert len(tok.encode(_CHINESE)) < len(_CHINESE.encode("utf-8")) / 2
    assert len(tok.encode(_ENGLISH)) < len(_ENGLISH) / 2
