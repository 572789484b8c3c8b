"""The DoIT chat template as token ids: char-level (always) and the real Chinese-LLaMA-Plus vocabulary (when the
shared data is present), checked against SentencePiece itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxtune.eval.codecs import DoitChatCodec

from .fakes import ASSISTANT, EOT, USER, char_codec

SHARED = Path(__file__).parents[2] / ".." / "shared" / "data"
TOKENIZER = SHARED / "tokenizers" / "chinese-llama-plus" / "tokenizer.model"


def test_prompt_rendering_turn_by_turn() -> None:
    codec = char_codec()
    ids = codec.prompt_ids(
        [
            {"role": "user", "content": " ab "},
            {"role": "assistant", "content": "c"},
            {"role": "system", "content": "d\n"},
        ]
    )
    a, b, c, d = (codec.encode(x)[0] for x in "abcd")
    # content stripped; any non-user role gets <assistant>; a bare <assistant> opens the reply; no BOS/EOS
    assert ids == [USER, a, b, EOT, ASSISTANT, c, EOT, ASSISTANT, d, EOT, ASSISTANT]
    assert codec.reply_ids(" c ") == [c, EOT]


def test_decode_skips_special_tokens_and_literal_role_text_stays_text() -> None:
    codec = char_codec()
    ids = codec.prompt_ids([{"role": "user", "content": "x<eot>y"}])
    assert ids.count(EOT) == 1  # the literal "<eot>" is 5 characters, not the special token
    assert codec.decode([*codec.encode("hi"), EOT, 4, 5, 6]) == "hi"
    assert codec.stop_ids == (EOT, USER, ASSISTANT, 4, 5, 6)


def test_message_without_role_is_an_error() -> None:
    with pytest.raises(ValueError, match="message 0 needs 'role' and 'content'"):
        char_codec().prompt_ids([{"content": "x"}])


@pytest.mark.skipif(not TOKENIZER.is_file(), reason="shared chinese-llama-plus tokenizer not present")
def test_real_vocabulary_matches_sentencepiece() -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    codec = DoitChatCodec.from_sentencepiece(TOKENIZER)
    assert (codec.user_id, codec.assistant_id, codec.eot_id, codec.pad_id) == (49953, 49954, 49955, 49956)
    assert [codec.piece_id(p) for p in ("▁A", "▁B", "▁C", "▁D")] == [319, 350, 315, 360]
    question = "以下是关于农学的单项选择题，请直接给出正确答案的选项。"
    ids = codec.prompt_ids([{"role": "user", "content": f"  {question}\n"}])
    assert ids == [49953, *sp.encode(question), 49955, 49954]
    assert codec.reply_ids("A") == [319, 49955]  # the dummy prefix makes an answer "A" the piece ▁A
    assert codec.decode([*sp.encode(question), 49955, 2]) == question
    with pytest.raises(KeyError):
        codec.piece_id("no-such-piece")
