"""Chat templates and loss masks of jaxtune/data/templates.py on the real DoIT tokenizer and a Hugging Face one."""

from __future__ import annotations

import numpy as np
import pytest
from doit_fixtures import byte_level_bpe_folder, make_hf_tokenizer_folder

from jaxtune.data.records import Message
from jaxtune.data.templates import Encoded, TemplateError, make_template
from jaxtune.data.tokenizer import TokenizerError, load_tokenizer

USER, ASSISTANT, EOT = 49953, 49954, 49955


@pytest.fixture
def doit(doit_tokenizer_path):
    return make_template("doit", load_tokenizer(doit_tokenizer_path))


@pytest.fixture
def sp(doit_tokenizer_path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(doit_tokenizer_path / "tokenizer.model"))


def _u(text):
    return Message("user", text)


def _a(text):
    return Message("assistant", text)


def test_doit_one_letter_answer_hand_checked(doit):
    # Pieces: <user> ▁ 问题 ▁< eo t > ▁ 选 哪个 ？ <eot> <assistant> ▁A <eot>: the literal "<eot>" stays text.
    enc = doit.encode([_u("问题 <eot> 选哪个？"), _a(" A ")])
    assert enc.input_ids.tolist() == [
        USER,
        29871,
        32026,
        529,
        45574,
        29873,
        29958,
        29871,
        31333,
        33683,
        30882,
        EOT,
        ASSISTANT,
        319,
        EOT,
    ]
    assert enc.loss_mask.astype(int).tolist() == [0] * 13 + [1, 1]
    assert enc.input_ids.dtype == np.int32 and enc.loss_mask.dtype == np.bool_
    assert doit.tokenizer.vocab_size == 49957 and doit.tokenizer.added_tokens["<pad>"] == 49956


def test_doit_multi_turn_every_assistant_turn(doit, sp):
    dialogue = [_u("  第一个问题  "), _a("第一个回答。"), _u("第二个问题"), _a("B")]
    q1, a1, q2 = sp.encode("第一个问题"), sp.encode("第一个回答。"), sp.encode("第二个问题")
    expected = [USER, *q1, EOT, ASSISTANT, *a1, EOT, USER, *q2, EOT, ASSISTANT, 350, EOT]
    mask = [0] * (len(q1) + 3) + [1] * (len(a1) + 1) + [0] * (len(q2) + 3) + [1, 1]
    enc = doit.encode(dialogue)
    assert enc.input_ids.tolist() == expected and enc.loss_mask.astype(int).tolist() == mask
    last = doit.encode(dialogue, "last_assistant")
    assert last.input_ids.tolist() == expected
    assert last.loss_mask.astype(int).tolist() == [0] * (len(expected) - 2) + [1, 1]
    everything = doit.encode(dialogue, "all")
    assert everything.loss_mask.all()
    assert [e.input_ids.tolist() for e in doit.encode_batch([dialogue, dialogue[:2]])] == [
        expected,
        expected[: len(q1) + len(a1) + 4],
    ]


def test_doit_system_turn_is_marked_and_supervised_like_the_study(doit, sp):
    enc = doit.encode([Message("system", "你是助手"), _u("问"), _a("答")])
    s = sp.encode("你是助手")
    assert enc.input_ids[: len(s) + 2].tolist() == [ASSISTANT, *s, EOT]
    assert enc.loss_mask[: len(s) + 2].astype(int).tolist() == [0] + [1] * (len(s) + 1)


def test_doit_truncation_keeps_the_first_tokens(doit):
    enc = doit.encode([_u("很长的问题" * 20), _a("回答" * 30)])
    cut = enc.truncated(40)
    assert len(cut) == 40 and cut.input_ids.tolist() == enc.input_ids[:40].tolist()
    assert cut.num_supervised_targets() == 0  # the reply starts after the cut: nothing to learn from
    assert enc.num_supervised_targets() == int(enc.loss_mask.sum())
    assert Encoded(np.array([5, 6], np.int32), np.array([True, False])).num_supervised_targets() == 0


def test_doit_prompt_and_stop_tokens(doit, sp):
    assert doit.prompt_ids([_u("问题")]) == [USER, *sp.encode("问题"), EOT, ASSISTANT]
    assert doit.stop_token_ids() == (EOT, USER, ASSISTANT, 1, 2, 0)


def test_belle_template(doit_tokenizer_path, sp):
    belle = make_template("belle", load_tokenizer(doit_tokenizer_path))
    assert belle.tokenizer.added_tokens == {}
    enc = belle.encode([_u("你好"), _a("你好！有什么可以帮你？")])
    prompt, answer = sp.encode("Human: 你好\n\nAssistant:"), sp.encode("你好！有什么可以帮你？")
    assert enc.input_ids.tolist() == [1, *prompt, *answer, 2]
    assert enc.loss_mask.astype(int).tolist() == [0] * (1 + len(prompt)) + [1] * (len(answer) + 1)
    two = belle.encode([_u("一"), _a("二"), _u("三"), _a("四")], "last_assistant")
    assert two.loss_mask.sum() == len(sp.encode("四")) + 1 and two.input_ids[-1] == 2
    assert belle.prompt_ids([_u("你好")]) == [1, *prompt]


def test_hf_chat_mask_matches_transformers_generation_mask(tmp_path):
    tok = load_tokenizer(make_hf_tokenizer_folder(tmp_path / "hf"), backend="hf")
    template = make_template("hf_chat", tok)
    dialogue = [Message("system", "be nice"), _u("hi there"), _a("hello world"), _u("two plus two?"), _a("four.")]
    conv = [{"role": m.role, "content": m.content} for m in dialogue]
    reference = tok.hf.apply_chat_template(conv, return_dict=True, return_assistant_tokens_mask=True)
    enc = template.encode(dialogue)
    assert enc.input_ids.tolist() == list(reference["input_ids"])
    assert enc.loss_mask.astype(int).tolist() == list(reference["assistant_masks"])
    last = template.encode(dialogue, "last_assistant").loss_mask
    first_reply_end = int(np.flatnonzero(enc.loss_mask)[0]) + 4
    assert last.sum() < enc.loss_mask.sum() and not last[:first_reply_end].any()
    assert template.prompt_ids(dialogue[:2]) == tok.hf.apply_chat_template(
        conv[:2], add_generation_prompt=True, return_dict=False
    )


def test_hf_chat_content_control_tokens_stay_text(tmp_path):
    tok = load_tokenizer(make_hf_tokenizer_folder(tmp_path / "hf"), backend="hf")
    template = make_template("hf_chat", tok)
    im_end = tok.piece_to_id("<|im_end|>")
    enc = template.encode([_u("a <|im_end|> b"), _a("ok")])
    assert enc.input_ids.tolist().count(im_end) == 2  # only the two the template writes


def test_hf_chat_rejects_non_prefix_templates_and_sentencepiece(tmp_path, doit_tokenizer_path):
    # A template that renders earlier turns differently once a later turn exists breaks the prefix property.
    odd = (
        "{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>"
        "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = load_tokenizer(make_hf_tokenizer_folder(tmp_path / "odd", odd), backend="hf")
    with pytest.raises(TemplateError, match="prefix"):
        make_template("hf_chat", tok).encode([_u("q"), _a("a"), _u("q2"), _a("a2")])
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        make_template("hf_chat", load_tokenizer(doit_tokenizer_path))
    with pytest.raises(ValueError, match="unknown mask"):
        make_template("doit", load_tokenizer(doit_tokenizer_path)).encode([_u("q"), _a("a")], "assistants")


def _bloom_style_tokenizer_folder(folder):
    """A byte-level BPE tokenizer shaped like BLOOM's (unk, <s>, </s>, <pad> at ids 0-3; no special tokens added
    by encoding), saved as a Hugging Face folder."""
    corpus = [
        "Human: 你好\n\nAssistant: 你好！有什么可以帮你？",
        "Human: 写一首诗\n\nAssistant: 春天来了。",
        "Human: Give three tips.\n\nAssistant: Eat well, sleep, move.",
    ] * 20
    return byte_level_bpe_folder(
        folder,
        corpus,
        ["<unk>", "<s>", "</s>", "<pad>"],
        300,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def _belle_reference(hf, turns):
    """BELLE's train/src/sample_generator.py sft_sample_to_ids (each turn encoded alone with add_special_tokens=False,
    human turns unsupervised, EOS after each reply) with the paper's "Human: {input}\\n\\nAssistant:" text, after the
    one BOS that train/finetune.py @ 8234dd3 and batch_grouped_sft_generate put first. Labels: -100 = no loss."""
    ids, labels = [hf.bos_token_id], [-100]
    for role, value in turns:
        text = "Human: " + value + "\n\nAssistant:" if role == "human" else value
        piece = hf.encode(text, add_special_tokens=False)
        ids += piece
        labels += [-100] * len(piece) if role == "human" else piece
        if role != "human":
            ids.append(hf.eos_token_id)
            labels.append(hf.eos_token_id)
    return ids, labels


def test_belle_template_matches_belles_construction_on_a_byte_level_bpe(tmp_path):
    from transformers import AutoTokenizer

    folder = _bloom_style_tokenizer_folder(tmp_path / "bloomish")
    hf = AutoTokenizer.from_pretrained(str(folder))
    belle = make_template("belle", load_tokenizer(folder, backend="hf"))
    dialogues = [
        [("human", "你好"), ("assistant", "你好！有什么可以帮你？")],
        [
            ("human", "Give three tips."),
            ("assistant", "Eat well, sleep, move."),
            ("human", "写一首诗"),
            ("assistant", "春天来了。"),
        ],
    ]
    for turns in dialogues:
        enc = belle.encode([_u(v) if r == "human" else _a(v) for r, v in turns])
        ids, labels = _belle_reference(hf, turns)
        assert enc.input_ids.tolist() == ids
        # Position 0 (the BOS) predicts nothing either way; every other label is a supervised target.
        assert enc.loss_mask[1:].tolist() == [lab != -100 for lab in labels[1:]]
        assert ids[0] == 1 and ids[-1] == 2
    assert belle.prompt_ids([_u("写一首诗")]) == [
        1,
        *hf.encode("Human: 写一首诗\n\nAssistant:", add_special_tokens=False),
    ]
    assert belle.stop_token_ids() == (2,)
