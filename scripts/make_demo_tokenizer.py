"""Train the small SentencePiece vocabulary bundled as jaxtune/demo/tokenizer/tokenizer.model.

The quickstart must not need the study's 49,953-piece tokenizer (it lives outside the project), so it ships a
LLaMA-style BPE SentencePiece model (byte fallback, dummy prefix, <unk>/<s>/</s> at ids 0/1/2) trained on the demo
corpus. Re-run after changing jaxtune/demo/abilities.py:  python scripts/make_demo_tokenizer.py
"""

from __future__ import annotations

import io

import sentencepiece as spm

from jaxtune.demo import DEMO_TOKENIZER as OUT
from jaxtune.demo.abilities import demo_corpus_text


def main() -> None:
    text = "\n".join(t.replace("\n", " ") for t in demo_corpus_text())  # SentencePiece trains on lines
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_writer=model,
        vocab_size=1000,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        seed_sentencepiece_size=100000,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tokenizer.model").write_bytes(model.getvalue())
    print(f"wrote {OUT / 'tokenizer.model'} ({len(model.getvalue())} bytes)")


if __name__ == "__main__":
    main()
