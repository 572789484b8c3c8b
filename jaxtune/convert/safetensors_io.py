"""Reading and writing ``.safetensors`` files one tensor at a time, bfloat16 included, with numpy.

The ``safetensors`` package's numpy frontend cannot represent bfloat16 (numpy has no such dtype) and its writers
take a whole dict of tensors at once. The format itself is simple (an 8-byte little-endian header length, a JSON
header mapping each name to dtype, shape and byte offsets, then the raw little-endian data), so jaxtune reads and
writes it directly: a reader returns one tensor per call (``ml_dtypes.bfloat16`` for BF16) and a writer streams
tensors into a file whose header was planned up front. Files written here load with ``safetensors.safe_open`` and
transformers' ``from_pretrained``; tests check both.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

import ml_dtypes
import numpy as np

from jaxtune.errors import JaxtuneError

# The safetensors dtype names and their numpy equivalents.
DTYPE_TO_NUMPY: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NUMPY_TO_DTYPE: dict[np.dtype, str] = {v: k for k, v in DTYPE_TO_NUMPY.items()}

# A header larger than this is certainly not a safetensors header (the reference implementation caps it at 100 MB).
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(JaxtuneError, ValueError):
    """A ``.safetensors`` file is malformed or truncated; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a file: dtype, shape and absolute byte range."""

    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int


class SafetensorsReader:
    """Lazy reader of one ``.safetensors`` file: the header is parsed on open, each tensor is read on demand.

    Raises :class:`SafetensorsError` naming the file when the header is malformed, a dtype is unknown, a tensor's
    byte range does not match its shape, or the file is shorter than its header says (a truncated download).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = open(self.path, "rb")
        try:
            self.tensors, self.metadata = self._parse_header()
        except BaseException:
            self._file.close()
            raise

    def _parse_header(self) -> tuple[dict[str, TensorInfo], dict[str, str]]:
        size = os.fstat(self._file.fileno()).st_size
        prefix = self._file.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{self.path}: truncated file ({size} bytes, shorter than the 8-byte header size)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER_BYTES:
            raise SafetensorsError(f"{self.path}: not a safetensors file (header size {header_len} bytes)")
        if 8 + header_len > size:
            raise SafetensorsError(
                f"{self.path}: truncated file ({size} bytes; the header alone needs {8 + header_len})"
            )
        try:
            header = json.loads(self._file.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{self.path}: the header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + header_len
        tensors: dict[str, TensorInfo] = {}
        furthest = data_start
        for name, entry in header.items():
            try:
                dtype_name, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{self.path}: tensor {name!r} has a malformed header entry {entry!r}") from None
            if dtype_name not in DTYPE_TO_NUMPY:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype_name}")
            dtype = DTYPE_TO_NUMPY[dtype_name]
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if end - begin != expected:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r} of shape {list(shape)} {dtype_name} needs {expected} bytes, "
                    f"the header gives {end - begin}"
                )
            tensors[name] = TensorInfo(dtype, shape, data_start + begin, data_start + end)
            furthest = max(furthest, data_start + end)
        if furthest > size:
            raise SafetensorsError(
                f"{self.path}: truncated file ({size} bytes; its header describes {furthest} bytes of data)"
            )
        return tensors, dict(metadata)

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return sorted(self.tensors, key=lambda n: self.tensors[n].start)

    def get(self, name: str) -> np.ndarray:
        """Read one tensor into a new array (little-endian, C order)."""
        info = self.tensors[name]
        self._file.seek(info.start)
        count = int(np.prod(info.shape, dtype=np.int64))
        out = np.empty(info.shape, info.dtype.newbyteorder("<"))
        view = memoryview(out.reshape(-1).view(np.uint8)) if count else memoryview(bytearray())
        filled = 0
        while filled < len(view):  # one read() may return less than asked for (e.g. above 2 GiB on Linux)
            got = self._file.readinto(view[filled:])
            if not got:
                raise SafetensorsError(f"{self.path}: truncated file while reading tensor {name!r}")
            filled += got
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor to be written: its name, dtype and shape (the data comes later, in the same order)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class SafetensorsWriter:
    """Writes a ``.safetensors`` file whose tensors are known in advance, streaming one tensor at a time.

    ``write(name, array)`` must be called once per planned tensor, in plan order; ``close()`` checks that every
    planned tensor was written.
    """

    def __init__(
        self, path: str | os.PathLike, plan: list[PlannedTensor], metadata: Optional[Mapping[str, str]] = None
    ):
        self.path = Path(path)
        self.plan = plan
        header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for t in plan:
            dtype = np.dtype(t.dtype)
            if dtype not in NUMPY_TO_DTYPE:
                raise SafetensorsError(f"{self.path}: cannot store dtype {dtype} of tensor {t.name!r}")
            header[t.name] = {
                "dtype": NUMPY_TO_DTYPE[dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the reference writer does
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        """Append the data of the next planned tensor (converted to C order and little-endian if needed)."""
        if self._next >= len(self.plan):
            raise SafetensorsError(f"{self.path}: tensor {name!r} was not planned for this file")
        t = self.plan[self._next]
        if name != t.name or tuple(array.shape) != t.shape or np.dtype(array.dtype) != np.dtype(t.dtype):
            raise SafetensorsError(
                f"{self.path}: expected tensor {t.name!r} {list(t.shape)} {np.dtype(t.dtype)}, "
                f"got {name!r} {list(array.shape)} {array.dtype}"
            )
        data = np.ascontiguousarray(array, dtype=np.dtype(t.dtype).newbyteorder("<"))
        self._file.write(memoryview(data.reshape(-1).view(np.uint8)) if data.size else b"")
        self._next += 1

    def close(self) -> None:
        self._file.close()
        if self._next != len(self.plan):
            missing = [t.name for t in self.plan[self._next :]]
            raise SafetensorsError(f"{self.path}: closed before writing {len(missing)} tensors: {missing[:5]}")

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for every tensor of a file, in file order, one at a time."""
    with SafetensorsReader(path) as reader:
        for name in reader.keys():
            yield name, reader.get(name)
