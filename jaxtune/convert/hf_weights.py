"""Finding and streaming the weight tensors of a Hugging Face model folder, one tensor at a time.

Supported layouts, in order of preference: ``model.safetensors.index.json`` with its shards, ``model.safetensors``,
other ``model*.safetensors`` files, then the legacy ``pytorch_model.bin.index.json`` / ``pytorch_model*.bin``.
Before anything is read, :func:`check_tensors` compares the stored tensors with what a family's layout expects
(``import-hf`` and ``jaxtune eval`` of a Hugging Face folder both call it). Legacy files are read only with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers; nothing else is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import ml_dtypes
import numpy as np

from jaxtune.convert.safetensors_io import SafetensorsReader
from jaxtune.errors import JaxtuneError
from jaxtune.models.dtypes import DTYPES

if TYPE_CHECKING:
    from jaxtune.config.schema import ModelConfig
    from jaxtune.convert.hf_families import HFFamily

FLOAT_DTYPES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}
"""numpy dtype -> jaxtune's dtype name, for the float dtypes a stored tensor may have."""


class HFWeightsError(JaxtuneError, ValueError):
    """The weight files of a Hugging Face folder are missing, inconsistent or unreadable; the message names them."""


@dataclass(frozen=True)
class WeightInfo:
    """dtype and shape of one stored tensor, known before its data is read."""

    dtype: np.dtype
    shape: tuple[int, ...]


def _read_index(path: Path) -> dict[str, str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HFWeightsError(f"{path}: not a valid weight index ({e})") from None
    if not isinstance(weight_map, dict):
        raise HFWeightsError(f"{path}: 'weight_map' must be an object")
    missing = sorted({f for f in weight_map.values() if not (path.parent / f).is_file()})
    if missing:
        raise HFWeightsError(f"{path}: names shard files that are missing: {', '.join(missing)}")
    return weight_map


class WeightSource:
    """The tensors of one model folder: ``infos()`` lists them without reading data, ``iter_arrays()`` streams them.

    Arrays come back as numpy (``ml_dtypes.bfloat16`` for bf16) in the stored dtype, one at a time, file by file.
    """

    def __init__(self, hf_dir: str | Path):
        self.hf_dir = Path(hf_dir)
        self.files, self.kind = self._discover()
        self._infos: dict[str, WeightInfo] | None = None
        self._file_of: dict[str, Path] = {}

    def _discover(self) -> tuple[list[Path], str]:
        d = self.hf_dir
        if not d.is_dir():
            raise HFWeightsError(f"{d}: not a directory")
        for index_name, kind in (
            ("model.safetensors.index.json", "safetensors"),
            ("pytorch_model.bin.index.json", "bin"),
        ):
            if (d / index_name).is_file():
                weight_map = _read_index(d / index_name)
                return sorted({d / f for f in weight_map.values()}), kind
        if (d / "model.safetensors").is_file():
            return [d / "model.safetensors"], "safetensors"
        shards = sorted(d.glob("model*.safetensors"))
        if shards:
            return shards, "safetensors"
        if (d / "pytorch_model.bin").is_file():
            return [d / "pytorch_model.bin"], "bin"
        shards = sorted(d.glob("pytorch_model*.bin"))
        if shards:
            return shards, "bin"
        raise HFWeightsError(
            f"{d}: no weights found (expected model.safetensors, model.safetensors.index.json with shards, "
            "or legacy pytorch_model*.bin)"
        )

    def infos(self) -> dict[str, WeightInfo]:
        """Every tensor's dtype and shape; a name stored in two files is an error."""
        if self._infos is None:
            infos: dict[str, WeightInfo] = {}
            for path in self.files:
                for name, info in self._file_infos(path).items():
                    if name in infos:
                        raise HFWeightsError(f"{path}: tensor {name!r} is also stored in {self._file_of[name]}")
                    infos[name] = info
                    self._file_of[name] = path
            self._infos = infos
        return self._infos

    def file_of(self, name: str) -> Path:
        """The file that stores tensor ``name``."""
        self.infos()
        return self._file_of[name]

    def _file_infos(self, path: Path) -> dict[str, WeightInfo]:
        if self.kind == "safetensors":
            with SafetensorsReader(path) as reader:
                return {n: WeightInfo(t.dtype, t.shape) for n, t in reader.tensors.items()}
        return {n: WeightInfo(a.dtype, a.shape) for n, a in _torch_arrays(path)}

    def iter_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) for every tensor, file by file; only one file is open and one tensor held at a time."""
        for path in self.files:
            if self.kind == "safetensors":
                with SafetensorsReader(path) as reader:
                    for name in reader.keys():
                        yield name, reader.get(name)
            else:
                yield from _torch_arrays(path)


def _torch_arrays(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Tensors of a legacy PyTorch file, loaded with weights_only=True (memory-mapped when the format allows)."""
    try:
        import torch
    except ImportError:
        raise HFWeightsError(
            f"{path}: reading legacy PyTorch weights needs torch (pip install 'jaxtune[hf]'); or convert the folder "
            "to safetensors"
        ) from None
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # pre-zip formats cannot be mapped
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError for bad or unsafe files
        raise HFWeightsError(f"{path}: cannot be read as PyTorch weights with weights_only=True: {e}") from None
    if not isinstance(state, dict):
        raise HFWeightsError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise HFWeightsError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
        yield name, _torch_to_numpy(tensor)


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def canonical_infos(source: WeightSource, family: HFFamily) -> dict[str, tuple[str, WeightInfo]]:
    """Stored tensors by their canonical name (``family.canonical_name``): (stored name, info); two stored names
    for one tensor are an error."""
    out: dict[str, tuple[str, WeightInfo]] = {}
    for name, info in source.infos().items():
        canonical = family.canonical_name(name)
        if canonical in out:
            raise HFWeightsError(f"{source.hf_dir}: tensors {out[canonical][0]!r} and {name!r} are both {canonical}")
        out[canonical] = (name, info)
    return out


def check_tensors(source: WeightSource, cfg: ModelConfig, family: HFFamily) -> None:
    """Every tensor ``family`` expects for ``cfg`` present with its shape and a float dtype, nothing unexpected;
    an :class:`HFWeightsError` naming the tensors (and their file) otherwise."""
    infos = canonical_infos(source, family)
    expected = family.hf_tensor_shapes(cfg)
    optional = {family.lm_head} if cfg.tie_word_embeddings else set()  # older transformers saved the tied copy too
    missing = [n for n in expected if n not in infos]
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise HFWeightsError(f"{source.hf_dir}: missing tensor(s) {', '.join(missing[:8])}{more}")
    unexpected = [infos[n][0] for n in infos if n not in expected and n not in optional and not family.is_ignored(n)]
    if unexpected:
        more = f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""
        raise HFWeightsError(
            f"{source.hf_dir}: unexpected tensor(s) {', '.join(unexpected[:8])}{more} "
            f"(in {source.file_of(unexpected[0]).name}; not part of a {family.architecture} with this config.json)"
        )
    for name, shape in expected.items():
        stored, info = infos[name]
        if tuple(info.shape) != tuple(shape):
            raise HFWeightsError(
                f"{source.file_of(stored)}: tensor {stored} has shape {list(info.shape)}, config.json implies "
                f"{list(shape)}"
            )
        if info.dtype not in FLOAT_DTYPES:
            raise HFWeightsError(
                f"{source.file_of(stored)}: tensor {stored} has dtype {info.dtype} (quantized weights are not "
                "supported; expected float32, bfloat16 or float16)"
            )
