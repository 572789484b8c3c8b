"""The study's make_data.py written out literally, the independent reference of the selection tests
(tests/data/test_mixtures.py: jaxtune.data.mixtures; tests/study/test_select.py: jaxtune select): module-level random
seeded 0, sorted file lists, ``random.sample`` for the sized data types, list slicing for the constructions, the
output file named after the input file less its last ``_`` part."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable


def raw_lines(path: Path) -> list[bytes]:
    """A file's lines as make_data.py copies them: bytes, line endings kept."""
    return path.read_bytes().splitlines(keepends=True)


def make_data(root: Path, data_type: str, read: Callable[[Path], list[Any]] = raw_lines) -> dict[str, list[Any]]:
    """Output name (``role_play``, ``general_instruction_gpt4``, ...) -> the items ``read`` gave for its input file
    that make_data.py keeps, in writing order."""
    random.seed(0)
    out: dict[str, list[Any]] = {}

    def by_size(folder: str, size) -> None:
        for f in sorted((root / folder).glob("*.json")):
            data = read(f)
            name = "_".join(f.name.split("_")[:-1])
            if isinstance(size, int):
                assert len(data) >= size
                chosen = random.sample(data, k=size)
            else:
                if name in size:
                    sz = size[name]
                elif size["others"] == "uniform":
                    sz = 1305
                    if name == "biology":
                        sz = None
                    elif name == "chinese":
                        sz += 1
                else:
                    sz = None
                chosen = data[:sz]
            out[name] = chosen

    data_type = {"baseline": "curated-10000", "mix-0": "maximum"}.get(data_type, data_type)
    small = {"ethics": 64, "role_play": 64, "creative_writing": 1000}
    if "curated" in data_type:
        by_size("curated/1000", int(data_type.split("-")[-1]) // 10)
    elif "synthetic" in data_type:
        by_size("synthetic/40960", int(data_type.split("-")[-1]))
    elif data_type == "reconstruct":
        by_size("curated/full", {**small, "others": "uniform"})
    elif data_type == "maximum":
        by_size("curated/full", {**small, "others": "max"})
    elif "mix" in data_type:
        by_size("curated/full", {**small, "others": "max"})
        by_size("synthetic/40960", int(data_type.split("-")[-1]))
    return out
