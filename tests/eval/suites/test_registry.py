"""jaxtune.eval.suites.registry: each suite file registers itself; names are the declared ones, each once."""

from __future__ import annotations

import dataclasses

import pytest

from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.suites import registry
from jaxtune.names import EVAL_SUITES


def test_every_declared_suite_is_registered_by_its_own_module_in_declared_order():
    suites = registry.load_suites()
    assert list(suites) == list(EVAL_SUITES)
    for name, suite in suites.items():
        assert suite.name == name and suite.run.__module__ == f"jaxtune.eval.suites.{name}"


def test_registering_an_undeclared_or_a_second_suite_of_a_name_is_an_error(monkeypatch):
    doit = registry.get_suite("doit")
    monkeypatch.setattr(registry, "SUITES", dict(registry.SUITES))
    with pytest.raises(ValueError, match=r"suite 'mmlu' is not declared in jaxtune.names.EvalSuite \(declared: doit, "):
        registry.register(dataclasses.replace(doit, name="mmlu"))
    with pytest.raises(ValueError, match="suite 'doit' is registered twice"):
        registry.register(dataclasses.replace(doit, folders=("elsewhere",)))
    assert registry.register(doit) is doit  # importing a module again registers the same suite: harmless


def test_unknown_suites_are_named_with_the_known_ones(tmp_path):
    assert registry.unknown_suites_problem(["doit", "ceval"]) is None
    assert registry.unknown_suites_problem(["doit", "bele"]) == (
        "eval.suites: unknown suite(s) ['bele'] (known: doit, ceval, cmmlu, agieval, belle)"
    )
    with pytest.raises(EvalSetupError, match=r"unknown suite 'bele' \(known: doit, ceval"):
        registry.suite_data_root("bele", tmp_path)


def test_each_suite_finds_its_data_in_its_own_folders(tmp_path):
    (tmp_path / "ceval").mkdir()
    (tmp_path / "ceval" / "subject_mapping.json").write_text("{}", encoding="utf-8")
    (tmp_path / "curated" / "valid").mkdir(parents=True)
    assert registry.suite_data_root("ceval", tmp_path) == tmp_path / "ceval"
    assert registry.suite_data_root("doit", tmp_path, "valid") == tmp_path / "curated" / "valid"
    with pytest.raises(EvalSetupError, match=r"no cmmlu data found \(looked in .*cmmlu, "):
        registry.suite_data_root("cmmlu", tmp_path)
