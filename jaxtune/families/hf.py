"""The vocabulary a family file declares its Hugging Face architecture in: config.json fields and tensor layout.

A family's :class:`HFArchitecture` names the transformers classes, translates ``config.json`` into
:class:`~jaxtune.config.schema.ModelConfig` fields (``config_fields``) and a ModelConfig back into the keyword
arguments of the transformers config class (``config_kwargs``), and lays its tensors out with a
:class:`TensorLayout`: which stored tensor is which jaxtune parameter, and the two transforms of each per-layer
tensor. :mod:`jaxtune.convert.hf_config` and :mod:`jaxtune.convert.hf` do the rest for every family alike.

Layout conventions: transformers stores ``nn.Linear`` weights as (out_features, in_features), jaxtune as (in, out)
with heads on their own axes and every layer stacked on a leading ``layers`` axis. Every transform is a view
(reshape of a contiguous array, then transpose): a copy happens only when the result is written into its
destination. The vocabulary tables (``embed_tokens``, ``lm_head``) are handled here too: their padding rows are
stripped on export.

Plain data and numpy: this module sits below the config layer (which reads the families' presets), so it imports
no jax and not :mod:`jaxtune.config.schema`; ``cfg`` arguments are ModelConfigs, used by their fields only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from jaxtune.errors import JaxtuneError

logger = logging.getLogger(__name__)

Cfg = Any
"""A :class:`jaxtune.config.schema.ModelConfig` (not imported here: the config layer imports this package)."""
Transform = Callable[[np.ndarray, Cfg], np.ndarray]

HF_DTYPES = {
    "float32": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "fp32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
}
"""dtype names of config.json (``torch.`` prefix removed) -> jaxtune dtype names."""


class HFConfigError(JaxtuneError, ValueError):
    """A Hugging Face config.json cannot be read as a model jaxtune supports (or a model cannot be written as one);
    the message names the field."""


def hf_dtype(raw: dict[str, Any]) -> Optional[str]:
    """The dtype a config declares (v5 ``dtype`` or v4 ``torch_dtype``), as a jaxtune dtype name, or None."""
    value = raw.get("dtype", raw.get("torch_dtype"))
    if isinstance(value, str):
        return HF_DTYPES.get(value.removeprefix("torch."))
    return None


def required(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> Any:
    """The value of the first of ``keys`` (spellings of one field) that ``raw`` sets; HFConfigError when none is."""
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    raise HFConfigError(f"{where}: missing required field {' or '.join(repr(k) for k in keys)}")


def eos_token_id(raw: dict[str, Any], where: str) -> Optional[int]:
    """``eos_token_id`` (default 2); of a list, the first (with a warning when it lists several)."""
    eos = raw.get("eos_token_id", 2)
    if isinstance(eos, list):
        if len(eos) > 1:
            logger.warning("%s: eos_token_id lists %s; jaxtune keeps the first, %s", where, eos, eos[0])
        eos = eos[0] if eos else None
    return eos


@dataclass(frozen=True)
class LayerTensor:
    """One per-layer tensor: its Hugging Face name suffix, the jaxtune param, its stored shape and the two
    transforms (stored -> jaxtune layer slice, and back)."""

    hf_suffix: str
    param: str
    hf_shape: Callable[[Cfg], tuple[int, ...]]
    to_jaxtune: Transform
    to_hf: Transform


def linear(out_dim: Callable[[Cfg], int], in_dim: Callable[[Cfg], int]) -> tuple[Callable, Transform, Transform]:
    """(hf_shape, to_jaxtune, to_hf) of an nn.Linear weight: HF (out, in) <-> jaxtune (in, out)."""
    return (lambda cfg: (out_dim(cfg), in_dim(cfg)), lambda w, cfg: w.T, lambda a, cfg: a.T)


def vector(size: Callable[[Cfg], int]) -> tuple[Callable, Transform, Transform]:
    """(hf_shape, to_jaxtune, to_hf) of a vector stored as it is (norm scales, biases)."""
    return (lambda cfg: (size(cfg),), lambda w, cfg: w, lambda a, cfg: a)


def hidden(cfg: Cfg) -> int:
    """E, the width of the residual stream."""
    return cfg.hidden_size


def mlp(cfg: Cfg) -> int:
    """M, the width of the MLP."""
    return cfg.intermediate_size


@dataclass(frozen=True)
class Placement:
    """Where a Hugging Face tensor goes: a top-level param, or layer ``layer`` of a stacked param."""

    param: str
    layer: Optional[int] = None
    spec: Optional[LayerTensor] = None


@dataclass(frozen=True)
class TensorLayout:
    """Every tensor of a family's checkpoint, in transformers' order: the input embedding (``embed`` ->
    ``embed_tokens``), the (E,) vectors ``before_layers``, the layers (``{layer_prefix}{i}.{suffix}`` for each of
    ``layer_tensors``), the (E,) vectors ``after_layers``, and the untied LM head (``lm_head`` -> ``lm_head``)."""

    embed: str
    """Name of the input embedding (its stored dtype is the checkpoint's)."""
    lm_head: str
    """Name of the untied LM head (older transformers also saved it when tied)."""
    layer_prefix: str
    layer_tensors: tuple[LayerTensor, ...]
    before_layers: dict[str, str] = field(default_factory=dict)
    """Hugging Face name -> jaxtune param of (E,) tensors stored before the layers."""
    after_layers: dict[str, str] = field(default_factory=dict)
    """Hugging Face name -> jaxtune param of (E,) tensors stored after the layers (the final norm)."""
    ignored: tuple[str, ...] = ()
    """Patterns of non-parameter buffers that old transformers versions saved (skipped on import)."""
    bare_prefix: str = ""
    """A prefix that checkpoints of the bare model (not ``...ForCausalLM``) leave out of every name."""

    def canonical_name(self, name: str) -> str:
        """A stored tensor name as this layout spells it (``bare_prefix`` added where a checkpoint dropped it)."""
        if not self.bare_prefix or name == self.lm_head or name.startswith(self.bare_prefix):
            return name
        return self.bare_prefix + name

    def place(self, name: str, cfg: Cfg) -> Optional[Placement]:
        """The destination of a (canonical) tensor name, or None for a name that is not part of the model."""
        top = {self.embed: "embed_tokens", **self.before_layers, **self.after_layers, self.lm_head: "lm_head"}
        if name in top:
            return Placement(top[name])
        if not name.startswith(self.layer_prefix):
            return None
        layer, _, suffix = name[len(self.layer_prefix) :].partition(".")
        spec = next((t for t in self.layer_tensors if t.hf_suffix == suffix), None)
        if spec is None or not layer.isdigit() or int(layer) >= cfg.num_layers:
            return None
        return Placement(spec.param, int(layer), spec)

    def is_ignored(self, name: str) -> bool:
        """Whether a stored tensor is a known non-parameter buffer (skipped on import)."""
        return any(re.fullmatch(p, name) for p in self.ignored)

    def hf_tensor_shapes(self, cfg: Cfg) -> dict[str, tuple[int, ...]]:
        """Every tensor of the Hugging Face checkpoint of ``cfg`` in transformers' order, with its shape
        (``lm_head`` only for untied embeddings, as ``save_pretrained`` writes it)."""
        e = cfg.hidden_size
        shapes: dict[str, tuple[int, ...]] = {self.embed: (cfg.vocab_size, e)}
        shapes.update({name: (e,) for name in self.before_layers})
        for i in range(cfg.num_layers):
            for t in self.layer_tensors:
                shapes[f"{self.layer_prefix}{i}.{t.hf_suffix}"] = t.hf_shape(cfg)
        shapes.update({name: (e,) for name in self.after_layers})
        if not cfg.tie_word_embeddings:
            shapes[self.lm_head] = (cfg.vocab_size, e)
        return shapes

    def hf_tensor(self, name: str, params: dict, cfg: Cfg) -> np.ndarray:
        """The Hugging Face tensor ``name`` as a view of jaxtune params (vocabulary padding stripped); KeyError for
        a name that is not part of the model."""
        where = self.place(name, cfg)
        if where is None:
            raise KeyError(name)
        if where.param == "embed_tokens":
            return params["embed_tokens"][: cfg.vocab_size]
        if where.param == "lm_head":
            return params["lm_head"][:, : cfg.vocab_size].T
        if where.layer is None:
            return params[where.param]
        return where.spec.to_hf(params["layers"][where.param][where.layer], cfg)


@dataclass(frozen=True)
class HFArchitecture:
    """A family's Hugging Face architecture."""

    architecture: str
    """The transformers model class (``config.json``'s ``architectures``; the reference model of check-hf)."""
    model_type: str
    """``config.json``'s ``model_type``."""
    config_class: str
    """The transformers config class that writes exports (``LlamaConfig``...)."""
    config_fields: Callable[[dict[str, Any], str], dict[str, Any]]
    """``(config.json dict, where) -> ModelConfig fields`` (``rope_scaling`` as a dict); HFConfigError naming a
    field the family cannot represent."""
    config_kwargs: Callable[[Cfg, str], dict[str, Any]]
    """``(ModelConfig, stored dtype) ->`` keyword arguments of ``config_class``."""
    layout: TensorLayout
