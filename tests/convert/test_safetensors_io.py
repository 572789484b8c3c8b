"""jaxtune.convert.safetensors_io against the reference safetensors implementation (both directions)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from jaxtune.convert.safetensors_io import (
    PlannedTensor,
    SafetensorsError,
    SafetensorsReader,
    SafetensorsWriter,
    iter_tensors,
)
from jaxtune.errors import JaxtuneError


def reference_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "f16": torch.randn(7, generator=g).half(),
        "f32": torch.randn(2, 3, 4, generator=g),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


def as_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def test_reads_files_written_by_safetensors(tmp_path: Path) -> None:
    tensors = reference_tensors()
    save_file(tensors, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    with SafetensorsReader(tmp_path / "ref.safetensors") as reader:
        assert reader.metadata == {"format": "pt"}
        assert set(reader.keys()) == set(tensors)
        for name, t in tensors.items():
            got = reader.get(name)
            assert got.dtype == as_numpy(t).dtype and got.shape == tuple(t.shape)
            assert got.tobytes() == as_numpy(t).tobytes()  # bit for bit
    assert [n for n, _ in iter_tensors(tmp_path / "ref.safetensors")] == SafetensorsReader(
        tmp_path / "ref.safetensors"
    ).keys()


def test_written_files_load_with_safetensors(tmp_path: Path) -> None:
    arrays = {name: as_numpy(t) for name, t in reference_tensors().items()}
    plan = [PlannedTensor(name, a.dtype, a.shape) for name, a in arrays.items()]
    with SafetensorsWriter(tmp_path / "out.safetensors", plan) as writer:
        for name, a in arrays.items():
            writer.write(name, a)
    with safe_open(tmp_path / "out.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        for name, t in reference_tensors().items():
            assert torch.equal(f.get_tensor(name), t)
    raw = (tmp_path / "out.safetensors").read_bytes()
    assert int.from_bytes(raw[:8], "little") % 8 == 0  # data starts 8-byte aligned


def test_writer_accepts_strided_views(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    with SafetensorsWriter(tmp_path / "t.safetensors", [PlannedTensor("t", np.float32, (6, 4))]) as writer:
        writer.write("t", a.T)
    with safe_open(tmp_path / "t.safetensors", framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("t"), a.T)


def test_writer_rejects_out_of_plan_tensors(tmp_path: Path) -> None:
    plan = [PlannedTensor("a", np.float32, (2,)), PlannedTensor("b", np.float32, (3,))]
    writer = SafetensorsWriter(tmp_path / "x.safetensors", plan)
    with pytest.raises(SafetensorsError, match=r"expected tensor 'a' \[2\] float32, got 'b'"):
        writer.write("b", np.zeros(3, np.float32))
    writer.write("a", np.zeros(2, np.float32))
    with pytest.raises(SafetensorsError, match="closed before writing 1 tensors"):
        writer.close()


def test_truncated_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    save_file(reference_tensors(), tmp_path / "ref.safetensors")
    raw = (tmp_path / "ref.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:-10])
    with pytest.raises(SafetensorsError, match=r"cut\.safetensors: truncated file"):
        SafetensorsReader(tmp_path / "cut.safetensors")
    (tmp_path / "header.safetensors").write_bytes(raw[:20])
    with pytest.raises(SafetensorsError, match=r"header\.safetensors: truncated file"):
        SafetensorsReader(tmp_path / "header.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(SafetensorsError, match=r"junk\.safetensors: the header is not valid JSON"):
        SafetensorsReader(tmp_path / "junk.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(JaxtuneError, match="truncated"):
        SafetensorsReader(tmp_path / "empty.safetensors")
