"""Helpers of the data tests: where the shared data lives, and small datasets written in the DoIT layout."""

from __future__ import annotations

import random
from pathlib import Path

from jaxtune.data.mixtures import STUDY_ABILITIES
from jaxtune.demo.records import doit_record, write_jsonl

SHARED_DATA = Path(__file__).parents[2] / ".." / "shared" / "data"
DOIT_TOKENIZER = SHARED_DATA / "tokenizers" / "chinese-llama-plus"
CMMLU = SHARED_DATA / "cmmlu"

_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定"
    "行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其"
)


def chinese_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(n))


def random_doit_record(rng: random.Random, ability: str, idx: int, user_len: int = 40, reply_len: int = 30) -> dict:
    """A DoIT record of random Chinese text; the question starts with ``{ability}#{idx}`` so it is told apart."""
    question = f"{ability}#{idx} " + chinese_text(rng, rng.randint(1, user_len))
    return doit_record(ability, question, chinese_text(rng, rng.randint(1, reply_len)), idx=idx)


def make_doit_layout(
    root: Path,
    *,
    per_1000: int = 12,
    per_full: int = 20,
    per_valid: int = 3,
    synthetic: int = 30,
    seed: int = 0,
    user_len: int = 40,
    reply_len: int = 30,
) -> Path:
    """A small dataset in the DoIT layout: curated/{1000,full,valid}/{ability}_{split}.json and
    synthetic/40960/general_instruction_gpt4_41k.json (records without a type, as the study's synthetic file)."""
    rng = random.Random(seed)
    for split, n in (("1000", per_1000), ("full", per_full), ("valid", per_valid)):
        for a in STUDY_ABILITIES:
            write_jsonl(
                root / "curated" / split / f"{a}_{split}.json",
                [random_doit_record(rng, a, i, user_len, reply_len) for i in range(n)],
            )
    syn = []
    for i in range(synthetic):
        r = random_doit_record(rng, "x", i, user_len, reply_len)
        del r["type"]
        syn.append(r)
    write_jsonl(root / "synthetic" / "40960" / "general_instruction_gpt4_41k.json", syn)
    return root


CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ m['content'] }}<|im_end|>\n"
    "{% endgeneration %}"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template whose {% generation %} markers let transformers compute its own assistant mask (the
independent reference of the hf_chat mask)."""


def byte_level_bpe_folder(
    folder: Path,
    corpus: list[str],
    specials: list[str],
    vocab_size: int,
    chat_template: str | None = None,
    **roles: str,
) -> Path:
    """A byte-level BPE trained on ``corpus`` (``specials`` first in the vocabulary), saved as a Hugging Face folder
    (tokenizer.json + tokenizer_config.json); ``roles`` name its special tokens (eos_token="...", ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    if chat_template is not None:
        fast.chat_template = chat_template
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def make_hf_tokenizer_folder(folder: Path, chat_template: str = CHATML_TEMPLATE) -> Path:
    """A small ChatML byte-level BPE tokenizer saved as a Hugging Face folder, ``chat_template`` its template."""
    corpus = [
        "hello world, how are you today?",
        "the assistant answers questions about the world.",
        "user: what is two plus two? assistant: four.",
        "你好，世界。我们在学习语言模型。",
    ] * 20
    return byte_level_bpe_folder(
        folder,
        corpus,
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        400,
        chat_template,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
