"""Every set of names that the config, the command line and the implementations share, declared once.

Each set is a ``Literal`` type (the annotation of its config fields, so loading a config rejects a misspelt name and
lists the valid ones) and a tuple of its names (for ``argparse`` choices and error messages). The implementations
key their tables by these names; ``tests/test_names.py`` checks that every name has exactly one implementation and
every implementation a declared name:

==================  =========================================  ====================================================
names               config fields                              implementations keyed by them
==================  =========================================  ====================================================
DATA_FORMATS        data.format                                ``jaxtune.data.formats._PARSERS``
TEMPLATES           data.template, eval.template               ``jaxtune.data.templates.TEMPLATE_CLASSES``
MASK_STRATEGIES     data.mask                                  (the templates' ``encode``; no table)
EVAL_SUITES         eval.suites                                ``jaxtune.eval.suites.registry.SUITES``
SCORER_MODES        eval.scorer_mode, score --scorer-mode      (the parsers' ``mode`` argument; no table)
DTYPES              model.*_dtype, optim.mu_dtype, ...         ``jaxtune.models.dtypes.DTYPES``, ``models.stats``
REMAT_POLICIES      model.remat_policy                         ``jaxtune.models.decoder.REMAT_POLICIES``
ATTENTION_IMPLS     model.attention_impl                       ``jaxtune.models.attention.IMPL_PLATFORMS``
MODEL_FAMILIES      model.family                               ``jaxtune.families.registry.FAMILIES`` (one file
                                                               per family), ``models.registry.MODEL_CLASSES``,
                                                               ``convert.hf_families.FAMILIES``
SCHEDULES           optim.schedule                             ``jaxtune.train.optim.SCHEDULES``
LOGICAL_AXES        (the models' parameter and activation      ``jaxtune.sharding.RULES``
                    axis names)
ACCELERATOR_KINDS   plan/validate --accelerator KIND-N         ``jaxtune.hardware.ACCELERATORS``
==================  =========================================  ====================================================

This module imports nothing of jaxtune but :mod:`jaxtune.errors` (it sits below :mod:`jaxtune.config.schema` and
:mod:`jaxtune.hardware`).
"""

from __future__ import annotations

import difflib
import typing
from typing import Iterable, Literal

from jaxtune.errors import JaxtuneError


def names_of(literal: object) -> tuple[str, ...]:
    """The names of a ``Literal[...]`` type, in declaration order."""
    return tuple(typing.get_args(literal))


def unknown_name_message(kind: str, name: object, known: Iterable[str]) -> str:
    """``unknown <kind> 'x' (did you mean 'y'?); known: a, b, c``: the message of every lookup of a name here."""
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; known: {', '.join(known)}"


DataFormat = Literal["doit", "belle", "belle_conversations", "alpaca", "sharegpt", "messages"]
"""Record formats of training and validation files (see :mod:`jaxtune.data.formats`)."""
DATA_FORMATS = names_of(DataFormat)

TemplateName = Literal["doit", "belle", "hf_chat"]
"""Chat templates (see :mod:`jaxtune.data.templates`)."""
TEMPLATES = names_of(TemplateName)

MaskStrategy = Literal["assistant", "last_assistant", "all"]
"""Which tokens carry loss (see :mod:`jaxtune.data.templates`)."""
MASK_STRATEGIES = names_of(MaskStrategy)

EvalSuite = Literal["doit", "ceval", "cmmlu", "agieval", "belle"]
"""Evaluation suites; each is one file of :mod:`jaxtune.eval.suites` that registers itself."""
EVAL_SUITES = names_of(EvalSuite)

ScorerMode = Literal["study", "corrected"]
"""DoIT scorer: the study's per-item decisions, quirks included, or the corrected ones."""
SCORER_MODES = names_of(ScorerMode)

DType = Literal["float32", "bfloat16", "float16"]
"""Floating-point dtypes of parameters, activations, optimizer moments and checkpoints."""
DTYPES = names_of(DType)

RematPolicy = Literal["none", "full", "dots", "dots_no_batch", "qkv_proj", "projections"]
"""Rematerialisation policies of a decoder layer (``none``: no rematerialisation)."""
REMAT_POLICIES = names_of(RematPolicy)

AttentionImpl = Literal["xla", "cudnn", "splash"]
"""Attention implementations (see :mod:`jaxtune.models.attention`)."""
ATTENTION_IMPLS = names_of(AttentionImpl)

ModelFamily = Literal["llama", "bloom", "qwen2"]
"""Model families (architectures); each is one file of :mod:`jaxtune.families` that registers everything
family-specific (model class, counts, Hugging Face mapping, presets)."""
MODEL_FAMILIES = names_of(ModelFamily)

Schedule = Literal["linear_from_peak", "warmup_cosine", "warmup_linear", "constant"]
"""Learning-rate schedules (see :mod:`jaxtune.train.optim`)."""
SCHEDULES = names_of(Schedule)

Backward = Literal["autodiff", "layerwise"]
"""How the train step computes gradients (``train.backward``; see :mod:`jaxtune.train.step`)."""
BACKWARDS = names_of(Backward)

LogicalAxis = Literal[
    # Parameters.
    "vocab",
    "embed",
    "heads",
    "kv_heads",
    "mlp",
    "head_dim",
    "layers",
    "norm",
    "qkv",
    "embed_bias",
    # Activations.
    "act_batch",
    "act_length",
    "act_embed",
    "act_heads",
    "act_kv_heads",
    "act_mlp",
    "act_vocab",
    "act_lookup_vocab",
    "act_lookup_embed",
    "act_lookup_batch",
    # The KV cache of generation.
    "cache_layers",
    "cache_batch",
    "cache_length",
    "cache_kv_heads",
    "cache_head_dim",
]
"""Logical axis names of the models' parameters, activations and KV cache; :data:`jaxtune.sharding.RULES` maps each
to mesh axes. A name outside this set is an error wherever a model names an axis."""
LOGICAL_AXES = names_of(LogicalAxis)


AcceleratorKind = Literal["v4", "v5p", "v5e", "v6e", "h100", "h200", "a100", "cpu"]
"""Accelerator kinds: TPU generations, GPUs and simulated CPU devices; :data:`jaxtune.hardware.ACCELERATORS` holds
each one's facts (memory, peak FLOP/s, slice layout)."""
ACCELERATOR_KINDS = names_of(AcceleratorKind)


class UnknownAxisError(JaxtuneError, ValueError):
    """A model names a tensor axis that is not one of :data:`LOGICAL_AXES` (a misspelt name would otherwise be
    silently replicated)."""


def check_axes(axes: Iterable[object], what: str) -> None:
    """Raise :class:`UnknownAxisError` naming ``what`` (a parameter or activation), each unknown axis name and the
    known ones; None (an unnamed, replicated dimension) is allowed."""
    unknown = [a for a in axes if a is not None and a not in LOGICAL_AXES]
    if unknown:
        raise UnknownAxisError(
            f"{what}: unknown logical axis name(s) {', '.join(repr(a) for a in unknown)}; known: "
            f"{', '.join(LOGICAL_AXES)} (declared in jaxtune.names.LogicalAxis, mapped by jaxtune.sharding.RULES)"
        )
