"""jaxtune.train.preflight: which layout checks a value problem skips, and how the problems are raised together
(the end-to-end checks of validate and train are in tests/commands/test_validate.py)."""

from __future__ import annotations

import pytest

from jaxtune.config.schema import ConfigError
from jaxtune.sharding import LayoutError
from jaxtune.train.preflight import names_key, raise_problems


def test_a_problem_names_a_key_only_as_a_whole_dotted_name():
    problems = ["command-line override 'train.microbatches=zero': train.microbatches: expected an integer"]
    assert names_key(problems, "train.microbatches")
    assert not names_key(problems, "train.micro")
    assert not names_key(problems, "mesh.")
    assert names_key(["mesh.data=1 x mesh.fsdp=3 = 3 devices"], "mesh.")
    assert not names_key(["eval.mesh.tensor must be positive"], "mesh.")  # eval's own mesh is not the run's


def test_value_problems_come_first_and_decide_the_error_type():
    with pytest.raises(ConfigError) as info:
        raise_problems(["train.epochs must be at least 1, got 0"], ["model.num_heads = 6 ..."])
    assert info.value.problems == ["train.epochs must be at least 1, got 0", "model.num_heads = 6 ..."]
    with pytest.raises(LayoutError, match=r"^2 layout problems:\n  a\n  b$"):
        raise_problems([], ["a", "b"])
    with pytest.raises(LayoutError, match=r"^a$"):
        raise_problems([], ["a"])
    raise_problems([], [])
