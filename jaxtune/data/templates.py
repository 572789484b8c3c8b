"""Chat templates: a dialogue becomes token ids and a loss mask.

The mask is *unshifted*: ``loss_mask[t]`` is True when token ``t`` is a supervised target (predicted from the tokens
before it). The pipeline shifts ids and mask into ``targets``/``loss_weights``.

- :class:`DoitTemplate` (the DoIT study, exactly): each turn is ``[<user>] + tok(content.strip()) + [<eot>]`` or
  ``[<assistant>] + tok(content.strip()) + [<eot>]``; no BOS or EOS; loss on the assistant content and its
  ``<eot>``, never on role tokens; every assistant turn supervised. As in the study's code, any role other than
  ``user`` (a ``system`` turn, say) gets the ``<assistant>`` marker and is supervised.
- :class:`BelleTemplate` (BELLE): ``[BOS] + tok("Human: {user}\\n\\nAssistant:")`` then ``tok(answer) + [EOS]`` with
  the answer and its EOS supervised, turn after turn (one BOS per dialogue; see the class for how this follows
  BELLE's own code).
- :class:`HFChatTemplate`: the tokenizer's own Hugging Face chat template, with the assistant turns' tokens found by
  rendering each turn's prefix (so no ``{% generation %}`` markers are needed).

Mask strategies: ``assistant`` (every assistant turn), ``last_assistant`` (only the final one), ``all`` (every token).
Message content is tokenized as plain text: a literal ``<eot>`` in a message is text, never the special token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from jaxtune.data.records import Message
from jaxtune.data.tokenizer import HFTokenizer, Tokenizer, TokenizerError
from jaxtune.errors import JaxtuneError
from jaxtune.names import MASK_STRATEGIES, TEMPLATES, MaskStrategy


class TemplateError(JaxtuneError, ValueError):
    """A dialogue the template cannot render (the pipeline adds the record's file and line)."""


@dataclass(frozen=True)
class Encoded:
    """A tokenized dialogue: ids and the unshifted loss mask, both of length T."""

    input_ids: np.ndarray
    """int32 [T]"""
    loss_mask: np.ndarray
    """bool [T]: True where the token is a supervised target."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def truncated(self, max_len: int) -> Encoded:
        """The first ``max_len`` tokens (the study keeps the beginning of over-long dialogues)."""
        if len(self) <= max_len:
            return self
        return Encoded(self.input_ids[:max_len], self.loss_mask[:max_len])

    def num_supervised_targets(self) -> int:
        """Supervised tokens that have a token before them (the first token of a sequence is never predicted)."""
        return int(np.count_nonzero(self.loss_mask[1:]))


def _check_mask(mask: str) -> None:
    if mask not in MASK_STRATEGIES:
        raise ValueError(f"unknown mask strategy {mask!r} (expected one of {', '.join(MASK_STRATEGIES)})")


def _supervised_turns(messages: Sequence[Message], mask: str, is_reply) -> list[bool]:
    """Per turn: does its reply content carry loss under ``mask``?"""
    replies = [i for i, m in enumerate(messages) if is_reply(m)]
    if mask == "last_assistant":
        chosen = set(replies[-1:])
    else:
        chosen = set(replies)
    return [i in chosen for i in range(len(messages))]


class ChatTemplate(ABC):
    """Renders dialogues to token ids and loss masks for one tokenizer."""

    name: str = ""
    special_tokens: tuple[str, ...] = ()
    """Tokens the template needs; appended to the tokenizer's vocabulary when missing."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @abstractmethod
    def encode(self, messages: Sequence[Message], mask: MaskStrategy = "assistant") -> Encoded:
        """Token ids and loss mask of a whole dialogue (not truncated)."""

    def encode_batch(self, dialogues: Sequence[Sequence[Message]], mask: MaskStrategy = "assistant") -> list[Encoded]:
        """:meth:`encode` of several dialogues."""
        return [self.encode(d, mask) for d in dialogues]

    @abstractmethod
    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The inference prompt: ``messages`` rendered, then the start of the assistant's reply."""

    @abstractmethod
    def stop_token_ids(self) -> tuple[int, ...]:
        """Tokens that end a generated reply."""

    @property
    def pad_id(self) -> int:
        """Id written at padding positions (never attended to nor supervised)."""
        for i in (self.tokenizer.pad_id, self.tokenizer.eos_id):
            if i is not None:
                return i
        return 0


class DoitTemplate(ChatTemplate):
    """The DoIT study's role-token template (``train_sft.py``), with content tokenized as plain text."""

    name = "doit"
    special_tokens = ("<user>", "<assistant>", "<eot>")

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer)
        needed = list(self.special_tokens)
        if tokenizer.pad_id is None:  # the study added <pad> only when the tokenizer had none
            needed.append("<pad>")
        ids = tokenizer.add_special_tokens(needed)
        self.user_id = ids["<user>"]
        self.assistant_id = ids["<assistant>"]
        self.eot_id = ids["<eot>"]

    def encode(self, messages: Sequence[Message], mask: MaskStrategy = "assistant") -> Encoded:
        return self.encode_batch([messages], mask)[0]

    def encode_batch(self, dialogues: Sequence[Sequence[Message]], mask: MaskStrategy = "assistant") -> list[Encoded]:
        _check_mask(mask)
        texts = [m.content.strip() for d in dialogues for m in d]
        token_lists = self.tokenizer.encode_batch(texts)
        out = []
        k = 0
        for d in dialogues:
            supervised = _supervised_turns(d, mask, lambda m: m.role != "user")
            ids: list[int] = []
            sup: list[bool] = []
            for m, on in zip(d, supervised):
                content = token_lists[k]
                k += 1
                ids.append(self.user_id if m.role == "user" else self.assistant_id)
                ids.extend(content)
                ids.append(self.eot_id)
                sup.append(mask == "all")
                sup.extend([on or mask == "all"] * (len(content) + 1))
            out.append(Encoded(np.asarray(ids, np.int32), np.asarray(sup, np.bool_)))
        return out

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        ids: list[int] = []
        for m, content in zip(messages, self.tokenizer.encode_batch([m.content.strip() for m in messages])):
            ids.append(self.user_id if m.role == "user" else self.assistant_id)
            ids.extend(content)
            ids.append(self.eot_id)
        ids.append(self.assistant_id)
        return ids

    def stop_token_ids(self) -> tuple[int, ...]:
        tok = self.tokenizer
        ids = [self.eot_id, self.user_id, self.assistant_id, tok.bos_id, tok.eos_id, tok.unk_id]
        return tuple(dict.fromkeys(i for i in ids if i is not None))


BELLE_HUMAN = "Human: {content}\n\nAssistant:"
"""BELLE's prompt, as the paper (arXiv 2303.14742) and the BELLE-7B model cards give it for training and inference."""


class BelleTemplate(ChatTemplate):
    """BELLE's ``Human: ...\\n\\nAssistant:`` template: the answer and its EOS are supervised.

    How it follows BELLE's code (github.com/LianjiaTech/BELLE):

    - BOS: the first released training code, ``train/finetune.py`` @ 8234dd3 (2023-04-02, the week after the
      paper), builds ``tokenizer.bos_token + "Human: " + instruction + input + "\\n\\nAssistant: "`` and
      ``output + tokenizer.eos_token``, with loss on the output and its EOS only; its ``train/generate.py`` prepends
      the same BOS at inference. The later ``train/src/sample_generator.py`` (HEAD) also puts one BOS before each
      packed dialogue (``batch_grouped_sft_generate``). jaxtune writes that one BOS at the start of every dialogue,
      in training and in prompts alike (none when the tokenizer has no BOS). Not followed: on LLaMA, finetune.py's
      ``tokenizer(prompt)`` (special tokens on) could add LlamaTokenizer's own BOS after the ``<s>`` text; jaxtune
      writes one.
    - Turns are tokenized one by one (``tokenizer.encode(turn, add_special_tokens=False)``, as
      ``sft_sample_to_ids`` in sample_generator.py does), an EOS after every reply, so the supervised tokens are
      exactly the reply's. finetune.py tokenized the whole text at once and masked ``len(tok(prompt))`` tokens,
      which with its trailing space ("Assistant: ") can leave the reply's first byte-level BPE token (the space
      merged into it) unsupervised; jaxtune keeps the paper's text without that space and supervises the whole reply.
    - The model cards' inference, ``'Human: ' + line.strip() + '\\n\\nAssistant:'`` tokenized by BLOOM's
      tokenizer, has no BOS; a jaxtune model is prompted with the BOS it was trained with.
    """

    name = "belle"

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer)
        if tokenizer.eos_id is None:
            raise TokenizerError(f"template belle needs an EOS token; tokenizer {tokenizer.path} has none")

    def _segments(self, messages: Sequence[Message]) -> list[tuple[str, bool]]:
        """(text, is_reply) per turn: a user turn becomes the Human/Assistant prompt, a system turn its own text."""
        segs = []
        for m in messages:
            if m.role == "user":
                segs.append((BELLE_HUMAN.format(content=m.content), False))
            elif m.role == "system":
                segs.append((m.content + "\n\n", False))
            else:
                segs.append((m.content, True))
        return segs

    def encode(self, messages: Sequence[Message], mask: MaskStrategy = "assistant") -> Encoded:
        return self.encode_batch([messages], mask)[0]

    def encode_batch(self, dialogues: Sequence[Sequence[Message]], mask: MaskStrategy = "assistant") -> list[Encoded]:
        _check_mask(mask)
        segments = [self._segments(d) for d in dialogues]
        token_lists = self.tokenizer.encode_batch([text for segs in segments for text, _ in segs])
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        out = []
        k = 0
        for d, segs in zip(dialogues, segments):
            supervised = _supervised_turns(d, mask, lambda m: m.role == "assistant")
            ids: list[int] = [] if bos is None else [bos]
            sup: list[bool] = [mask == "all"] * len(ids)
            for (_, is_reply), on in zip(segs, supervised):
                toks = token_lists[k]
                k += 1
                if is_reply:
                    toks = toks + [eos]
                ids.extend(toks)
                sup.extend([on or mask == "all"] * len(toks))
            out.append(Encoded(np.asarray(ids, np.int32), np.asarray(sup, np.bool_)))
        return out

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        ids: list[int] = [] if bos is None else [bos]
        segs = self._segments(messages)
        for (_, is_reply), toks in zip(segs, self.tokenizer.encode_batch([t for t, _ in segs])):
            ids.extend(toks + [eos] if is_reply else toks)
        if not messages or messages[-1].role != "user":
            raise TemplateError("a BELLE prompt must end with a user turn")
        return ids

    def stop_token_ids(self) -> tuple[int, ...]:
        return (self.tokenizer.eos_id,)


class HFChatTemplate(ChatTemplate):
    """The tokenizer's own Hugging Face chat template; control tokens typed inside messages are encoded as text."""

    name = "hf_chat"

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer)
        if not isinstance(tokenizer, HFTokenizer):
            raise TokenizerError(
                f"template hf_chat renders a Hugging Face chat template and needs a tokenizer folder with "
                f"tokenizer.json; {tokenizer.path} was loaded as {type(tokenizer).__name__} "
                f"(use template doit or belle for a bare SentencePiece vocabulary)"
            )
        if tokenizer.chat_template is None:
            raise TokenizerError(f"tokenizer {tokenizer.path} has no chat_template (template hf_chat needs one)")
        self.hf = tokenizer.hf

    def _render(self, conversation: list[dict], generation_prompt: bool) -> list[int]:
        try:
            ids = self.hf.apply_chat_template(
                conversation,
                add_generation_prompt=generation_prompt,
                tokenize=True,
                return_dict=False,
                sanitize_control_tokens=True,
            )
        except Exception as e:  # jinja raises its own error types (raise_exception in templates)
            raise TemplateError(f"the chat template of {self.tokenizer.path} failed: {e}") from None
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def encode(self, messages: Sequence[Message], mask: MaskStrategy = "assistant") -> Encoded:
        _check_mask(mask)
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        full = self._render(conversation, generation_prompt=False)
        sup = np.zeros(len(full), np.bool_)
        if mask == "all":
            sup[:] = True
        else:
            for i, on in enumerate(_supervised_turns(messages, mask, lambda m: m.role == "assistant")):
                if not on:
                    continue
                if i == 0:
                    raise TemplateError("hf_chat cannot supervise an assistant turn that opens the dialogue")
                start = self._render(conversation[:i], generation_prompt=True)
                upto = self._render(conversation[: i + 1], generation_prompt=False)
                if full[: len(upto)] != upto or upto[: len(start)] != start:
                    raise TemplateError(
                        f"the chat template of {self.tokenizer.path} does not render turn {i} as a prefix of the "
                        f"whole dialogue, so its tokens cannot be located (use mask 'all' or another template)"
                    )
                sup[len(start) : len(upto)] = True
        return Encoded(np.asarray(full, np.int32), sup)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return self._render([{"role": m.role, "content": m.content} for m in messages], generation_prompt=True)

    def stop_token_ids(self) -> tuple[int, ...]:
        ids = [self.tokenizer.eos_id]
        for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            ids.append(self.tokenizer.piece_to_id(name))
        return tuple(dict.fromkeys(i for i in ids if i is not None))


def template_backend(template: str) -> str:
    """The tokenizer backend a template needs (``hf`` for hf_chat, else ``auto``)."""
    return "hf" if template == "hf_chat" else "auto"


TEMPLATE_CLASSES: dict[str, type[ChatTemplate]] = {
    cls.name: cls for cls in (DoitTemplate, BelleTemplate, HFChatTemplate)
}
"""Template name (``data.template``, ``eval.template``) -> its class."""


def make_template(name: str, tokenizer: Tokenizer) -> ChatTemplate:
    """The named template bound to ``tokenizer`` (appending the special tokens it needs to the tokenizer)."""
    if name not in TEMPLATE_CLASSES:
        raise ValueError(f"unknown chat template {name!r} (expected one of {', '.join(TEMPLATES)})")
    return TEMPLATE_CLASSES[name](tokenizer)
