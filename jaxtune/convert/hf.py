"""Hugging Face LLaMA and BLOOM folders <-> jaxtune checkpoints: ``import-hf`` and ``export-hf`` (``check-hf``, which
runs both models, is :mod:`jaxtune.eval.parity`).

The architecture is read from ``config.json`` (``architectures`` / ``model_type``) and looked up in
:data:`jaxtune.convert.hf_families.FAMILIES`, which supplies the config translation and tensor layout; everything
below is the same for every family.

Import streams: the destination arrays (one per jaxtune param, layers stacked) are allocated once and each stored
tensor is read, transposed into its slot and dropped before the next is read, so peak host memory stays near the
checkpoint's size plus the largest tensor. Export streams the other way, one tensor per write, into sharded
safetensors files that transformers loads (``LlamaForCausalLM`` / ``BloomForCausalLM.from_pretrained``), with ``config.json``,
``generation_config.json`` and the tokenizer files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from etils import epath

from jaxtune.checkpoint.params import expected_param_shapes, load_params, save_params
from jaxtune.checkpoint.tokenizer_files import tokenizer_path
from jaxtune.config.schema import ModelConfig
from jaxtune.convert.hf_config import read_hf_config
from jaxtune.convert.hf_families import FAMILIES, family_of_hf
from jaxtune.convert.hf_tokenizer import add_special_tokens, has_tokenizer, load_hf_tokenizer, write_hf_tokenizer
from jaxtune.convert.hf_weights import FLOAT_DTYPES, WeightSource, canonical_infos, check_tensors
from jaxtune.convert.safetensors_io import PlannedTensor, SafetensorsWriter
from jaxtune.data.remote import local_input
from jaxtune.errors import JaxtuneError
from jaxtune.models.dtypes import DTYPES
from jaxtune.paths import PARTIAL_GRACE_S, as_path, staged_folder

logger = logging.getLogger(__name__)


class ConversionError(JaxtuneError, ValueError):
    """A conversion option or destination is unusable; the message names it."""


def _check_destination(path: epath.Path, overwrite: bool) -> None:
    """Fail before any work when the destination already holds something and overwriting was not asked for."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise ConversionError(f"{path}: already exists and is not empty (choose another path, or overwrite)")


# --------------------------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------------------------


NEW_TOKEN_INITS = ("normal", "mean")
"""How import-hf initialises the rows of added tokens: ``normal`` draws them from normal(0, initializer_range), as
transformers 4.30's ``resize_token_embeddings`` did for the DoIT study (its recipes use this); ``mean`` copies the
mean of the old rows (transformers 5's default)."""
NEW_TOKEN_SEED = 0
"""Seed of the ``normal`` draw (numpy's default generator; embedding rows first, then the LM head's)."""


def fill_new_vocab_rows(
    table: np.ndarray,
    old: int,
    new: int,
    init: str = "mean",
    rng: Optional[np.random.Generator] = None,
    std: float = 0.02,
) -> None:
    """Rows [old, new) of a (V, E) table (or a transposed view) become the mean of rows [0, old), computed in
    float32 (``init="mean"``), or draws from normal(0, ``std``) of ``rng`` (``init="normal"``); rows from ``new`` on
    (vocabulary padding) become zero."""
    if init not in NEW_TOKEN_INITS:
        raise ConversionError(f"new-token init must be one of {', '.join(NEW_TOKEN_INITS)}, got {init!r}")
    if new > old:
        if init == "normal":
            rng = rng if rng is not None else np.random.default_rng(NEW_TOKEN_SEED)
            table[old:new] = rng.normal(0.0, std, (new - old, table.shape[1])).astype(np.float32).astype(table.dtype)
        else:
            mean = np.zeros(table.shape[1], np.float64)
            for start in range(0, old, 4096):  # blockwise: never a float32 copy of the whole table
                mean += table[start : min(start + 4096, old)].astype(np.float32).sum(axis=0, dtype=np.float64)
            table[old:new] = (mean / old).astype(np.float32).astype(table.dtype)
    table[new:] = 0


def load_hf_params(
    hf_dir: str | Path,
    param_dtype: Optional[str] = None,
    vocab_size: Optional[int] = None,
    vocab_pad_multiple: int = 1,
    new_token_init: str = "mean",
) -> tuple[ModelConfig, dict]:
    """Read a Hugging Face LLaMA, BLOOM or Qwen2 folder into (ModelConfig, nested dict of numpy arrays), one tensor at a
    time.

    param_dtype: dtype of the result (float32, bfloat16, float16); None keeps the stored dtype.
    vocab_size: grow the vocabulary to this many ids (added tokens): new embedding rows and LM-head columns are
    initialised by ``new_token_init`` (:data:`NEW_TOKEN_INITS`: ``mean`` of the old ones, or ``normal``(0, the
    config's initializer_range) as the DoIT study's transformers 4.30 did). vocab_pad_multiple: pad the vocabulary
    rows to a multiple of this with zeros.
    Raises a JaxtuneError naming the tensor, file or config field for a missing, unexpected or misshapen tensor, an
    unsupported architecture or a truncated file.
    """
    hf_dir = Path(hf_dir)
    raw, where = read_hf_config(hf_dir), str(hf_dir / "config.json")
    family = family_of_hf(raw, where)
    cfg = family.config_from_hf(raw, where)
    source = WeightSource(hf_dir)
    check_tensors(source, cfg, family)
    dtype_name = param_dtype or FLOAT_DTYPES[np.dtype(canonical_infos(source, family)[family.embed][1].dtype)]
    if dtype_name not in DTYPES:
        raise ConversionError(f"param_dtype must be one of {', '.join(DTYPES)}, got {dtype_name!r}")
    new_vocab = cfg.vocab_size if vocab_size is None else int(vocab_size)
    if new_vocab < cfg.vocab_size:
        raise ConversionError(
            f"vocab_size={new_vocab} is smaller than the checkpoint's {cfg.vocab_size} (rows would be lost)"
        )
    out_cfg = dataclasses.replace(
        cfg, vocab_size=new_vocab, vocab_pad_multiple=max(1, vocab_pad_multiple), param_dtype=dtype_name
    )
    dtype = np.dtype(DTYPES[dtype_name])
    # np.empty: pages are only touched (and counted in RSS) as the streamed tensors fill them.
    shapes = expected_param_shapes(out_cfg)
    params: dict = {k: np.empty(s, dtype) for k, s in shapes.items() if k != "layers"}
    params["layers"] = {k: np.empty(s, dtype) for k, s in shapes["layers"].items()}

    old = cfg.vocab_size
    for name, array in source.iter_arrays():
        name = family.canonical_name(name)
        if family.is_ignored(name) or (name == family.lm_head and cfg.tie_word_embeddings):
            continue
        where = family.place(name, cfg)
        if where.param == "embed_tokens":
            params["embed_tokens"][:old] = array
        elif where.param == "lm_head":
            params["lm_head"][:, :old] = array.T
        elif where.layer is None:  # norms (and BLOOM's norm biases)
            params[where.param][...] = array
        else:
            params["layers"][where.param][where.layer] = where.spec.to_jaxtune(array, cfg)
        del array
    rng = np.random.default_rng(NEW_TOKEN_SEED)
    std = cfg.initializer_range
    fill_new_vocab_rows(params["embed_tokens"], old, new_vocab, new_token_init, rng, std)
    if "lm_head" in params:
        fill_new_vocab_rows(params["lm_head"].T, old, new_vocab, new_token_init, rng, std)
    return out_cfg, params


def import_hf(
    hf_dir: str | Path,
    out: str | Path,
    param_dtype: Optional[str] = None,
    vocab_pad_multiple: int = 1,
    added_tokens: Sequence[str] = (),
    tokenizer_dir: Optional[str | Path] = None,
    overwrite: bool = False,
    new_token_init: str = "mean",
) -> ModelConfig:
    """``jaxtune import-hf HF_DIR OUT``: convert a Hugging Face LLaMA, BLOOM or Qwen2 folder into a jaxtune params
    checkpoint.

    param_dtype: stored dtype of the checkpoint (None keeps the folder's). vocab_pad_multiple: pad vocabulary rows
    (128 suits TPUs; export strips the padding). tokenizer_dir: tokenizer to carry in the checkpoint (default: the
    one in HF_DIR, if any). added_tokens: special tokens to append to that tokenizer (DoIT: ``<user>``,
    ``<assistant>``, ``<eot>``, ``<pad>``); the vocabulary grows to fit them, new rows initialised by
    ``new_token_init`` (``mean`` of the old rows, or ``normal`` as the DoIT study). Returns the checkpoint's
    ModelConfig.
    """
    _check_destination(as_path(out), overwrite)
    hf_dir = local_input(hf_dir)  # gs://: this host's cached copy (safetensors and tokenizers read local files)
    tokenizer_src = (
        local_input(tokenizer_dir) if tokenizer_dir is not None else (hf_dir if has_tokenizer(hf_dir) else None)
    )
    added: dict[str, int] = {}
    vocab_size = None
    if added_tokens:
        if tokenizer_src is None:
            raise ConversionError(
                f"{hf_dir}: added_tokens need a tokenizer, and the folder has none (pass tokenizer_dir)"
            )
        tokenizer = load_hf_tokenizer(tokenizer_src)
        added = add_special_tokens(tokenizer, list(added_tokens), str(tokenizer_src))
        vocab_size = max(read_hf_config(hf_dir).get("vocab_size", 0), len(tokenizer))
    if new_token_init not in NEW_TOKEN_INITS:
        raise ConversionError(f"new-token init must be one of {', '.join(NEW_TOKEN_INITS)}, got {new_token_init!r}")
    cfg, params = load_hf_params(
        hf_dir, param_dtype, vocab_size=vocab_size, vocab_pad_multiple=vocab_pad_multiple, new_token_init=new_token_init
    )
    if "<pad>" in added and cfg.pad_token_id is None:
        cfg.pad_token_id = added["<pad>"]
    save_params(out, params, cfg, tokenizer_dir=tokenizer_src, added_tokens=added, overwrite=overwrite)
    logger.info("imported %s -> %s (%s, vocabulary %d)", hf_dir, out, cfg.param_dtype, cfg.vocab_size)
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | str) -> int:
    """Bytes in ``5GB``, ``500MB``, ``2GiB`` or a plain integer (transformers' ``max_shard_size`` spelling)."""
    if isinstance(size, int):
        return size
    m = _SIZE.match(str(size))
    if not m:
        raise ConversionError(f"max_shard_size: cannot read {size!r} (examples: 5GB, 500MB, 2GiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])


def plan_shards(tensors: list[PlannedTensor], max_bytes: int) -> list[list[PlannedTensor]]:
    """Consecutive groups of tensors of at most ``max_bytes`` each (a larger tensor gets a shard of its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _finite(name: str, tensor: np.ndarray, dtype: np.dtype, checkpoint: str | Path) -> np.ndarray:
    """``tensor`` cast to ``dtype``, refused when the cast leaves NaN or inf (values beyond float16's range: load_params
    has already refused non-finite values in the checkpoint itself)."""
    if tensor.dtype == dtype:
        return tensor  # checked finite when the checkpoint was read
    with np.errstate(over="ignore"):
        out = tensor.astype(dtype, copy=False)
    bad = out.size - np.count_nonzero(np.isfinite(out))
    if bad:
        raise ConversionError(
            f"{checkpoint}: {name} has {bad} values that are not finite in {dtype} (beyond its "
            f"range); export with a wider dtype (bfloat16 or float32). Nothing was written."
        )
    return out


def export_hf(
    checkpoint: str | Path,
    out_dir: str | Path,
    dtype: Optional[str] = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    partial_grace_s: float = PARTIAL_GRACE_S,
) -> Path:
    """``jaxtune export-hf CKPT OUT_DIR``: write a params checkpoint as a Hugging Face folder of its family
    (``LlamaForCausalLM`` or ``BloomForCausalLM``).

    Writes ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` shards of at most ``max_shard_size`` plus
    ``model.safetensors.index.json``), ``config.json``, ``generation_config.json`` and, when the checkpoint carries
    one, the tokenizer files (with its added special tokens). Vocabulary padding is stripped. dtype: cast the
    weights (default: as stored). partial_grace_s: see :func:`jaxtune.paths.staged_folder`. Returns OUT_DIR.
    """
    out_dir = as_path(out_dir)
    _check_destination(out_dir, overwrite)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    max_bytes = parse_size(max_shard_size)
    cfg, params = load_params(checkpoint, as_numpy=True)
    out_dtype = np.dtype(DTYPES[dtype]) if dtype is not None else np.dtype(params["embed_tokens"].dtype)
    tok_dir = tokenizer_path(checkpoint)
    with staged_folder(out_dir, partial_grace_s) as stage:
        _write_hf_folder(cfg, params, tok_dir, stage, out_dtype, max_bytes, source=checkpoint)
    logger.info("exported %s -> %s (%s)", checkpoint, out_dir, out_dtype)
    return out_dir


def _write_hf_folder(
    cfg: ModelConfig, params: dict, tok_dir, out_dir, out_dtype: np.dtype, max_bytes: int, *, source: str | Path
) -> None:
    """The files of a Hugging Face folder, written into the local folder ``out_dir``."""
    family = FAMILIES[cfg.family]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tok_dir is not None:  # first: a tokenizer that does not fit the model fails before gigabytes are written
        write_hf_tokenizer(tok_dir, out_dir, vocab_size=cfg.vocab_size)
    # Next the config, for the same reason (a BLOOM whose MLP is not 4 x hidden_size has no transformers config).
    family.write_config(cfg, out_dir, FLOAT_DTYPES[out_dtype])

    planned = [PlannedTensor(name, out_dtype, shape) for name, shape in family.hf_tensor_shapes(cfg).items()]
    shards = plan_shards(planned, max_bytes)
    weight_map: dict[str, str] = {}
    try:
        for i, shard in enumerate(shards):
            file_name = (
                "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            )
            with SafetensorsWriter(out_dir / file_name, shard, metadata={"format": "pt"}) as writer:
                for t in shard:
                    writer.write(t.name, _finite(t.name, family.hf_tensor(t.name, params, cfg), out_dtype, source))
                    weight_map[t.name] = file_name
    except ConversionError:
        shutil.rmtree(out_dir, ignore_errors=True)  # never leave a folder holding a non-finite tensor behind
        raise
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in planned)}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
