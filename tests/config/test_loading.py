"""jaxtune.config.loading: YAML + key=value loading, strict validation with errors naming the key and file (the
sections' own rules, called directly, are tests/config/test_schema.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from jaxtune.config.loading import config_from_dict, dump_config, load_config, model_config_from_dict, parse_override
from jaxtune.config.schema import Config, ConfigError, ModelConfig

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_follow_the_study_recipe() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert (cfg.optim.b1, cfg.optim.b2, cfg.optim.eps, cfg.optim.weight_decay) == (0.9, 0.999, 1e-8, 0.1)
    assert cfg.optim.learning_rate == 1e-5 and cfg.optim.max_grad_norm == 1.0
    assert cfg.train.global_batch_size == 64 and cfg.data.max_len == 2048


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  preset: tiny\n  num_layers: 3\noptim:\n  learning_rate: 1e-5\n")
    cfg = load_config(path, ["model.num_layers=4", "train.epochs=15", "eval.suites=doit,cmmlu", "mesh.fsdp=8"])
    assert cfg.model.num_layers == 4 and cfg.model.hidden_size == 128  # preset, file, then override
    assert cfg.optim.learning_rate == 1e-5 and isinstance(cfg.optim.learning_rate, float)  # YAML 1.1's "1e-5"
    assert cfg.train.epochs == 15 and cfg.eval.suites == ["doit", "cmmlu"] and cfg.mesh.fsdp == 8


def test_nested_sections_and_optional_values() -> None:
    cfg = config_from_dict(
        {"model": {"rope_scaling": {"rope_type": "llama3", "factor": 8}, "num_kv_heads": 8}},
        ["checkpoint.max_to_keep=null"],
    )
    assert cfg.model.rope_scaling.rope_type == "llama3" and cfg.model.rope_scaling.factor == 8.0
    assert cfg.model.resolved_num_kv_heads() == 8 and cfg.checkpoint.max_to_keep is None


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  learning_rat: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml.*unknown config key 'optim\.learning_rat'.*'optim\.learning_rate'"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'.*did you mean 'train\.epochs'"):
        load_config(None, ["train.epoch=3"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=three", r"train\.epochs: expected an integer, got 'three'"),
        ("model.scan_layers=1", r"model\.scan_layers: expected true or false"),
        ("model.remat_policy=some", r"model\.remat_policy: expected one of 'none' \| 'full'"),
        ("model.attention_impl=flash", r"model\.attention_impl: expected one of 'xla' \| 'cudnn' \| 'splash'"),
        ("model.hidden_size.x=1", r"'model\.hidden_size' has no sub-keys"),
        ("epochs", r"not of the form key=value"),
    ],
)
def test_ill_typed_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_inconsistent_model_shapes_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model\.hidden_size=100 is not divisible by model\.num_heads=3"):
        load_config(None, ["model.hidden_size=100", "model.num_heads=3"])
    with pytest.raises(ConfigError, match=r"model\.num_heads=52 must be a multiple of model\.num_kv_heads=8"):
        load_config(None, ["model.preset=doit-33b", "model.num_kv_heads=8"])


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [\n"))
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.preset=doit-7b", "model.vocab_pad_multiple=128", "optim.warmup_ratio=0.03"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, preset=None))


def test_model_config_from_a_checkpoint_dict() -> None:
    cfg = model_config_from_dict(dataclasses.asdict(ModelConfig(vocab_size=1000, hidden_size=64, num_heads=4)))
    assert cfg.vocab_size == 1000 and cfg.resolved_head_dim() == 16


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("x=") == ("x", "")
    assert parse_override("path=a=b") == ("path", "a=b")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    from jaxtune.config.presets import PRESETS

    preset = (yaml.safe_load(path.read_text(encoding="utf-8")).get("model") or {}).get("preset")
    if preset is not None and preset not in PRESETS:  # the BLOOM recipes before the BLOOM presets are merged
        pytest.skip(f"{path.name} names model preset {preset!r}, which this checkout does not define")
    load_config(path)


def test_a_key_repeated_at_any_depth_is_an_error_naming_it_and_its_lines(tmp_path: Path) -> None:
    # PyYAML keeps the second `train:` silently: the run trained with batch 64 and seed 0 instead of 6 and 17.
    path = write(
        tmp_path,
        "train:\n  global_batch_size: 6\n  seed: 17\nmodel:\n  preset: tiny\n"
        "  rope_scaling:\n    factor: 2\n    factor: 3\ntrain:\n  global_batch_size: 64\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: duplicate key 'train' at lines 1 and 9 (YAML would keep only the last; keep one)",
        f"{path}: duplicate key 'model.rope_scaling.factor' at lines 7 and 8 (YAML would keep only the last; keep one)",
    ]
    listed = write(tmp_path, "eval:\n  suites: [doit]\n  suites: [belle]\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'eval\.suites' at lines 2 and 3"):
        load_config(listed)
    # Distinct keys that merely look alike, and YAML merge keys, are fine.
    ok = write(tmp_path, "base: &b {seed: 3}\ntrain:\n  <<: *b\n  seed: 4\n")
    with pytest.raises(ConfigError) as merged:  # loads as YAML, then fails as a config on its extra key only
        load_config(ok)
    assert merged.value.problems == [
        f"{ok}: unknown config key 'base'; valid keys: {', '.join(f.name for f in dataclasses.fields(Config))}"
    ]


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.learning_rate=nan", "optim.learning_rate must be a finite number, got nan"),
        ("optim.learning_rate=inf", "optim.learning_rate must be a finite number, got inf"),
        ("optim.learning_rate=-1e-5", "optim.learning_rate must be at least 0, got -1e-05"),
        ("model.rms_norm_eps=-1", "model.rms_norm_eps must be positive, got -1.0"),
        ("model.rms_norm_eps=0", "model.rms_norm_eps must be positive, got 0.0"),
        ("train.epochs=-1", "train.epochs must be at least 1, got -1"),
        ("optim.eps=0", "optim.eps must be positive, got 0.0"),
        ("optim.b2=1", "optim.b2 must be in [0, 1), got 1.0"),
        ("optim.max_grad_norm=0", "optim.max_grad_norm must be positive or null, got 0.0"),
        ("optim.warmup_ratio=1.5", "optim.warmup_ratio must be in [0, 1], got 1.5"),
        ("train.max_steps=0", "train.max_steps must be at least 1 or null, got 0"),
        ("train.log_every=0", "train.log_every must be at least 1, got 0"),
        ("train.max_consecutive_bad_steps=0", "train.max_consecutive_bad_steps must be at least 1, got 0"),
        ("checkpoint.save_every=0", "checkpoint.save_every must be at least 1 or null, got 0"),
        ("checkpoint.max_to_keep=0", "checkpoint.max_to_keep must be at least 1 or null, got 0"),
        ("data.max_len=1", "data.max_len must be at least 2, got 1"),
        ("data.prefetch=0", "data.prefetch must be at least 1, got 0"),
        ("data.shuffle_seed=-1", "data.shuffle_seed must be in [0, 2**32) (grain's shuffle seeds), got -1"),
        ("mesh.tensor=0", "mesh.tensor must be a positive size or -1 (the rest of the devices), got 0"),
        ("eval.top_p=0", "eval.top_p must be in (0, 1], got 0.0"),
        ("eval.judge_repeats=0", "eval.judge_repeats must be at least 1, got 0"),
        ("model.rope_theta=.nan", "model.rope_theta must be a finite number, got nan"),
    ],
)
def test_unusable_values_are_refused_on_load_naming_key_and_value(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.problems == [f"command-line override {override!r}: {message}"]


def test_every_problem_is_collected_and_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "optim:\n  learning_rate: .inf\n  eps: -1\n  learning_rat: 1\nmodel:\n  rms_norm_eps: -1\n"
        "  hidden_size: wide\ntrain:\n  global_batch_size: 63\n  microbatches: 2\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.epochs=0", "mesh.fsdp=-1", "mesh.tensor=-1"])
    problems = info.value.problems
    expected = [
        f"{path}: unknown config key 'optim.learning_rat'; did you mean 'optim.learning_rate'?",
        f"{path}: model.hidden_size: expected an integer, got 'wide'",
        f"{path}: model.rms_norm_eps must be positive, got -1.0",
        "command-line override 'mesh.tensor=-1': only one mesh size may be -1, got -1 for mesh.fsdp, mesh.tensor",
        f"{path}: optim.learning_rate must be a finite number, got inf",
        f"{path}: optim.eps must be positive, got -1.0",
        "command-line override 'train.epochs=0': train.epochs must be at least 1, got 0",
        f"{path}: train.global_batch_size=63 is not divisible by train.microbatches=2",
    ]
    assert sorted(problems) == sorted(expected)
    assert str(info.value).startswith(f"{len(expected)} problems in the config:\n  ")


def test_a_hardware_preset_lays_over_a_recipe_and_overrides_win(tmp_path):
    from jaxtune.commands.arguments import run_config

    repo = Path(__file__).resolve().parents[2]
    recipe, preset = repo / "configs" / "doit-33b.yaml", repo / "configs" / "hardware" / "v5p-16.yaml"
    cfg = run_config(str(recipe), [str(preset), "train.microbatches=4"])
    assert cfg.model.preset is None or cfg.model.num_layers == 60
    assert (cfg.mesh.fsdp, cfg.train.microbatches, cfg.model.remat_policy) == (8, 4, "full")
    assert cfg.optim.learning_rate == 1e-5 and cfg.train.global_batch_size == 64  # the recipe's, untouched
    bad = tmp_path / "bad.yaml"
    bad.write_text("mesh:\n  fsdp: 0\n")
    with pytest.raises(ConfigError, match=r"doit-33b.yaml \+ .*bad.yaml: mesh.fsdp"):
        load_config([recipe, bad])


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "hardware").glob("*.yaml"))
)
def test_every_hardware_preset_combines_with_every_doit_recipe(name):
    repo = Path(__file__).resolve().parents[2]
    for size in ("7b", "13b", "33b"):
        cfg = load_config([repo / "configs" / f"doit-{size}.yaml", repo / "configs" / "hardware" / f"{name}.yaml"])
        assert cfg.train.global_batch_size % cfg.train.microbatches == 0


def test_loading_a_config_with_a_preset_imports_no_model_code(tmp_path):
    """config sits below the models (the presets are plain data below it): a fresh interpreter that loads a config
    naming a preset has not imported jaxtune.models (nor JAX)."""
    import os
    import subprocess
    import sys

    path = write(tmp_path, "model:\n  preset: doit-7b\n")
    code = (
        "import sys\n"
        "from jaxtune.config.loading import load_config\n"
        f"cfg = load_config({str(path)!r}, ['model.preset=tiny'])\n"
        "assert cfg.model.hidden_size == 128, cfg.model\n"
        "print(sorted(m for m in sys.modules if m.startswith('jaxtune.models') or m == 'jax'))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
