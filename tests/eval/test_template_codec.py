"""The chat codec over jaxtune's training templates: the DoIT template turn by turn on a character vocabulary,
against the study's own rendering and SentencePiece on the demo and the study's vocabularies, and BELLE's format."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from jaxtune.data.tokenizer import load_tokenizer
from jaxtune.eval.protocol import ChatCodec
from jaxtune.eval.template_codec import TemplateChatCodec

from .conftest import DEMO_TOKENIZER, DOIT_ADDED
from .fakes import ASSISTANT, BOS, EOS, EOT, UNK, USER, char_codec

STUDY_TOKENIZER = (
    Path(__file__).parents[2] / ".." / "shared" / "data" / "tokenizers" / "chinese-llama-plus" / "tokenizer.model"
)


def test_doit_prompt_rendering_turn_by_turn():
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


def test_doit_decode_skips_special_tokens_and_literal_role_text_stays_text():
    codec = char_codec()
    ids = codec.prompt_ids([{"role": "user", "content": "x<eot>y"}])
    assert ids.count(EOT) == 1  # the literal "<eot>" is 5 characters, not the special token
    assert codec.decode([*codec.encode("hi"), EOT, BOS, EOS, UNK]) == "hi"
    assert codec.stop_ids == (EOT, USER, ASSISTANT, BOS, EOS, UNK)


@pytest.mark.skipif(not STUDY_TOKENIZER.is_file(), reason="shared chinese-llama-plus tokenizer not present")
def test_doit_codec_on_the_studys_vocabulary_matches_sentencepiece():
    sp = spm.SentencePieceProcessor(model_file=str(STUDY_TOKENIZER))
    codec = TemplateChatCodec.create("doit", load_tokenizer(STUDY_TOKENIZER), 49957)
    added = codec.tokenizer.added_tokens
    assert [added[t] for t in ("<user>", "<assistant>", "<eot>", "<pad>")] == [49953, 49954, 49955, 49956]
    assert [codec.piece_id(p) for p in ("▁A", "▁B", "▁C", "▁D")] == [319, 350, 315, 360]
    question = "以下是关于农学的单项选择题，请直接给出正确答案的选项。"
    ids = codec.prompt_ids([{"role": "user", "content": f"  {question}\n"}])
    assert ids == [49953, *sp.encode(question), 49955, 49954]
    assert codec.reply_ids("A") == [319, 49955]  # the dummy prefix makes an answer "A" the piece ▁A
    assert codec.decode([*sp.encode(question), 49955, 2]) == question
    with pytest.raises(KeyError):
        codec.piece_id("no-such-piece")


def test_doit_codec_matches_the_reference(doit_codec):
    codec = TemplateChatCodec.create("doit", load_tokenizer(DEMO_TOKENIZER), 1004)
    assert isinstance(codec, ChatCodec)
    messages = [
        {"role": "user", "content": " 天空是什么颜色？ "},
        {"role": "assistant", "content": "蓝色"},
        {"role": "system", "content": "规则"},
        {"role": "user", "content": "<eot> 草呢？"},
    ]
    assert codec.prompt_ids(messages) == doit_codec.prompt_ids(messages)
    assert codec.prompt_ids(messages)[-1] == DOIT_ADDED["<assistant>"]
    assert codec.reply_ids(" 绿色 ") == doit_codec.reply_ids(" 绿色 ")
    assert codec.reply_ids("A")[-1] == DOIT_ADDED["<eot>"]
    assert set(codec.stop_ids) == set(doit_codec.stop_ids)
    ids = codec.prompt_ids(messages)
    assert codec.decode(ids) == doit_codec.decode(ids)
    assert codec.piece_id("▁A") == doit_codec.piece_id("▁A")
    with pytest.raises(KeyError, match="not-a-piece"):
        codec.piece_id("not-a-piece")
    with pytest.raises(ValueError, match="message 0 needs 'role' and 'content'"):
        codec.prompt_ids([{"content": "x"}])


def test_belle_codec_renders_human_assistant_text():
    sp = spm.SentencePieceProcessor(model_file=str(DEMO_TOKENIZER))
    codec = TemplateChatCodec.create("belle", load_tokenizer(DEMO_TOKENIZER), 1000)
    question = "天空是什么颜色？"
    assert codec.prompt_ids([{"role": "user", "content": question}]) == [
        sp.bos_id(),
        *sp.encode(f"Human: {question}\n\nAssistant:"),
    ]
    assert codec.reply_ids("蓝色") == [*sp.encode("蓝色"), sp.eos_id()]
    assert codec.stop_ids == (sp.eos_id(),)
    assert codec.decode([sp.bos_id(), *sp.encode("蓝色"), sp.eos_id()]) == "蓝色"
