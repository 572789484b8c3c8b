"""jaxtune.names: every shared set of names is declared once, every name has exactly one implementation, every
implementation has a declared name, and a model naming an undeclared axis is an error (not a replicated tensor)."""

from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import names
from jaxtune.config import schema as config
from jaxtune.convert.hf_families import FAMILIES
from jaxtune.data.formats import _PARSERS
from jaxtune.data.templates import TEMPLATE_CLASSES
from jaxtune.eval.suites.registry import load_suites
from jaxtune.families.registry import load_families
from jaxtune.hardware import ACCELERATORS
from jaxtune.models import axes, bloom, decoder, llama, qwen2
from jaxtune.models.attention import IMPL_PLATFORMS
from jaxtune.models.configs import model_config
from jaxtune.models.dtypes import DTYPES
from jaxtune.models.registry import MODEL_CLASSES, create_model
from jaxtune.models.stats import DTYPE_BYTES
from jaxtune.names import UnknownAxisError
from jaxtune.sharding import RULES, LayoutError, abstract_model, activation_rules, build_mesh, logical_to_spec
from jaxtune.train.optim import SCHEDULES
from jaxtune.train.step import BACKWARD_PASSES

# name set -> the tables keyed by it (each must hold exactly the declared names).
TABLES = {
    "DATA_FORMATS": {"jaxtune.data.formats._PARSERS": _PARSERS},
    "TEMPLATES": {"jaxtune.data.templates.TEMPLATE_CLASSES": TEMPLATE_CLASSES},
    "EVAL_SUITES": {"jaxtune.eval.suites.registry.SUITES": load_suites()},
    "DTYPES": {"jaxtune.models.dtypes.DTYPES": DTYPES, "jaxtune.models.stats.DTYPE_BYTES": DTYPE_BYTES},
    "REMAT_POLICIES": {"jaxtune.models.decoder.REMAT_POLICIES": decoder.REMAT_POLICIES},
    "ATTENTION_IMPLS": {"jaxtune.models.attention.IMPL_PLATFORMS": IMPL_PLATFORMS},
    "MODEL_FAMILIES": {
        "jaxtune.models.registry.MODEL_CLASSES": MODEL_CLASSES,
        "jaxtune.convert.hf_families.FAMILIES": FAMILIES,
        "jaxtune.families.registry.FAMILIES": load_families(),
    },
    "SCHEDULES": {"jaxtune.train.optim.SCHEDULES": SCHEDULES},
    "BACKWARDS": {"jaxtune.train.step.BACKWARD_PASSES": BACKWARD_PASSES},
    "LOGICAL_AXES": {"jaxtune.sharding.RULES": dict(RULES)},
    "ACCELERATOR_KINDS": {"jaxtune.hardware.ACCELERATORS": ACCELERATORS},
}

# Name sets whose names select a branch in code rather than a table entry.
WITHOUT_TABLES = {"MASK_STRATEGIES", "SCORER_MODES"}

# Config field -> the name set its annotation must be.
FIELDS = {
    ("DataConfig", "format"): names.DataFormat,
    ("DataConfig", "template"): names.TemplateName,
    ("DataConfig", "mask"): names.MaskStrategy,
    ("EvalConfig", "template"): names.TemplateName,
    ("EvalConfig", "scorer_mode"): names.ScorerMode,
    ("ModelConfig", "param_dtype"): names.DType,
    ("ModelConfig", "compute_dtype"): names.DType,
    ("ModelConfig", "remat_policy"): names.RematPolicy,
    ("ModelConfig", "attention_impl"): names.AttentionImpl,
    ("ModelConfig", "family"): names.ModelFamily,
    ("OptimConfig", "schedule"): names.Schedule,
    ("TrainConfig", "backward"): names.Backward,
    ("OptimConfig", "mu_dtype"): typing.Optional[names.DType],
    ("CheckpointConfig", "epoch_dtype"): typing.Optional[names.DType],
    ("EvalConfig", "compute_dtype"): typing.Optional[names.DType],
}


@pytest.mark.parametrize("name_set", sorted(TABLES))
def test_every_name_has_exactly_one_implementation_and_every_implementation_a_name(name_set):
    declared = getattr(names, name_set)
    assert len(set(declared)) == len(declared), f"jaxtune.names.{name_set} repeats a name"
    for table_name, table in TABLES[name_set].items():
        missing = [n for n in declared if n not in table]
        undeclared = [k for k in table if k not in declared]
        assert not missing and not undeclared, (
            f"{table_name}: no implementation of {missing}; implementations without a declared name {undeclared}"
        )


def test_every_declared_name_set_is_checked_here_and_is_the_names_of_a_literal_type():
    declared = {k for k, v in vars(names).items() if k.isupper() and isinstance(v, tuple)}
    assert declared == set(TABLES) | WITHOUT_TABLES, "a name set of jaxtune.names has no entry in TABLES"
    literals = [v for v in vars(names).values() if typing.get_origin(v) is typing.Literal]
    for name_set in declared:
        assert any(names.names_of(t) == getattr(names, name_set) for t in literals), name_set


def test_the_rules_table_maps_each_logical_axis_once():
    keys = [name for name, _ in RULES]
    assert len(keys) == len(set(keys)), f"jaxtune.sharding.RULES maps an axis twice: {keys}"


def test_config_fields_are_annotated_with_the_declared_name_sets():
    for (section, field), literal in FIELDS.items():
        cls = getattr(config, section)
        assert field in {f.name for f in dataclasses.fields(cls)}
        assert typing.get_type_hints(cls)[field] == literal, f"{section}.{field}"


def test_every_axis_a_model_names_is_declared():
    used: dict[str, str] = {}
    for preset in ("tiny-gqa", "tiny-tied", "bloom-tiny", "qwen2-tiny"):
        _, _, param_axes = abstract_model(model_config(preset))
        for names_of_param in jax.tree.leaves(param_axes, is_leaf=lambda x: isinstance(x, tuple)):
            used.update({a: preset for a in names_of_param if a is not None})
    for module in (llama, bloom, qwen2):
        for param, layer_axes in module.LAYER_PARAM_AXES.items():
            used.update({a: f"{module.__name__}.LAYER_PARAM_AXES[{param!r}]" for a in layer_axes})
    for constant in ("BATCH", "LENGTH", "EMBED", "HEADS", "KV_HEADS", "MLP", "VOCAB", "LOOKUP_VOCAB"):
        used[getattr(axes, constant)] = f"jaxtune.models.axes.{constant}"
    for a in axes.KV_CACHE + axes.CACHE_SEGMENTS:
        used[a] = "jaxtune.models.axes cache axes"
    undeclared = {a: where for a, where in used.items() if a not in names.LOGICAL_AXES}
    assert not undeclared, f"axis names outside jaxtune.names.LogicalAxis: {undeclared}"
    assert {"vocab", "embed", "heads", "act_batch", "cache_kv_heads", "qkv"} <= set(used)  # the walk saw them


def test_a_misspelt_parameter_axis_fails_at_model_build(monkeypatch):
    monkeypatch.setitem(llama.LAYER_PARAM_AXES, "q_proj", ("layers", "embd", "heads", "head_dim"))
    with pytest.raises(UnknownAxisError, match=r"parameter layers\.q_proj of Llama: .*'embd'; known: vocab, embed"):
        abstract_model(model_config("tiny-gqa"))
    monkeypatch.setitem(bloom.LAYER_PARAM_AXES, "up_proj", ("layers", "embed", "mpl"))
    with pytest.raises(UnknownAxisError, match=r"parameter layers\.up_proj of Bloom: .*'mpl'"):
        nnx.eval_shape(lambda: create_model(model_config("bloom-tiny")))


def test_a_misspelt_activation_axis_fails_while_tracing_not_replicated():
    mesh = build_mesh(config.MeshConfig(data=1, fsdp=-1, tensor=1), jax.devices()[:2])
    x = np.zeros((2, 4), np.float32)
    with activation_rules(mesh):
        ok = jax.jit(lambda v: axes.constrain(v, (axes.BATCH, None)))(x)
        assert ok.sharding.spec[0] in (("data", "fsdp"), "fsdp")  # a declared name does shard
        with pytest.raises(UnknownAxisError, match=r"activation of shape \(2, 4\): .*'act_batchh'; known: "):
            jax.jit(lambda v: axes.constrain(v, ("act_batchh", None)))(jnp.asarray(x))


def test_an_axis_missing_from_the_rules_is_a_layout_error_listing_the_known_ones():
    with pytest.raises(LayoutError, match=r"logical axes \['heds'\] have no entry .*known: vocab, embed, heads"):
        logical_to_spec(("embed", "heds"))
