"""The letters' tokens of multiple-choice scoring (jaxtune/eval/suites/mcq.py ``letter_token_ids``) on every kind of
vocabulary: the study's pieces on Chinese-LLaMA-Plus's SentencePiece, the template's encoding of an answer on a
byte-level BPE, and a one-line refusal where neither gives four distinct tokens."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jaxtune.data.tokenizer import load_tokenizer
from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.suites.mcq import BARE_PIECES, PREFIXED_PIECES, letter_token_ids
from jaxtune.eval.template_codec import TemplateChatCodec

sys.path.insert(0, str(Path(__file__).parents[2] / "data"))
from doit_fixtures import byte_level_bpe_folder, make_hf_tokenizer_folder  # noqa: E402

STUDY_TOKENIZER = Path(__file__).parents[3] / ".." / "shared" / "data" / "tokenizers" / "chinese-llama-plus"


@pytest.mark.skipif(not (STUDY_TOKENIZER / "tokenizer.model").is_file(), reason="shared tokenizer not present")
def test_the_studys_vocabulary_keeps_the_studys_pieces() -> None:
    codec = TemplateChatCodec.create("doit", load_tokenizer(STUDY_TOKENIZER / "tokenizer.model"), 49957)
    assert letter_token_ids(codec, PREFIXED_PIECES, "ceval") == [319, 350, 315, 360]  # ▁A ▁B ▁C ▁D
    bare = letter_token_ids(codec, BARE_PIECES, "cmmlu")
    assert bare == [codec.piece_id(p) for p in "ABCD"] and bare != [319, 350, 315, 360]


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = ["A. one B. two C. three D. four answer: A B C D", "题目：选择 答案：A", "hello world"] * 20
    return byte_level_bpe_folder(
        tmp_path_factory.mktemp("tok") / "bpe", corpus, ["<unk>", "<s>", "</s>"], 400, eos_token="</s>"
    )


@pytest.mark.parametrize("pieces", [BARE_PIECES, PREFIXED_PIECES])
def test_a_byte_level_bpe_reads_the_letters_as_the_doit_template_encodes_an_answer(bpe_folder, pieces) -> None:
    tokenizer = load_tokenizer(bpe_folder)
    codec = TemplateChatCodec.create("doit", tokenizer, tokenizer.vocab_size + 8)
    ids = letter_token_ids(codec, pieces, "ceval")
    assert ids == [tokenizer.encode(letter)[0] for letter in "ABCD"] == [tokenizer.piece_to_id(x) for x in "ABCD"]


def test_a_chatml_tokenizer_reads_the_letters_after_its_assistant_prefix(tmp_path) -> None:
    tokenizer = load_tokenizer(make_hf_tokenizer_folder(tmp_path / "chatml"))
    codec = TemplateChatCodec.create("hf_chat", tokenizer, tokenizer.vocab_size)
    ids = letter_token_ids(codec, PREFIXED_PIECES, "doit")
    assert ids == [codec.reply_ids(letter)[0] for letter in "ABCD"] and len(set(ids)) == 4
    assert [tokenizer.decode([i]) for i in ids] == ["A", "B", "C", "D"]


class SharedPrefixCodec:
    """A codec whose answers all start with the same token (no letter can be read from one next-token logit)."""

    def piece_id(self, piece: str) -> int:
        raise KeyError(f"piece {piece!r} is not in tokenizer t")

    def reply_ids(self, text: str) -> list[int]:
        return [7, ord(text)]


def test_a_vocabulary_that_cannot_be_scored_by_letter_is_refused_in_one_line() -> None:
    with pytest.raises(EvalSetupError) as e:
        letter_token_ids(SharedPrefixCodec(), PREFIXED_PIECES, "agieval-en")
    assert "\n" not in str(e.value) and str(e.value).startswith("agieval-en: cannot score this tokenizer by letter")
