"""The chat codec over jaxtune's training templates, against the suites' reference codec and BELLE's format."""

from __future__ import annotations

import pytest
import sentencepiece as spm

from jaxtune.data.tokenizer import load_tokenizer
from jaxtune.eval.protocol import ChatCodec
from jaxtune.eval.template_codec import TemplateChatCodec

from .conftest import DEMO_TOKENIZER, DOIT_ADDED


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
