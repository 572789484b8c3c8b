"""A train checkpoint's parts must come from one save: the ``integrity`` item.

Two writers on one run directory (a lease overridden, a store without atomic renames) can leave a committed step
whose items, or arrays within an item, come from different runs: params and config of one, Adam moments of the
other. Each save therefore writes, beside its items, ``RUN_DIR/checkpoints/STEP/integrity/`` (Orbax JSON)::

    {"run": "4f0c...",              the writer's identity (its lease token; a random id without a lease)
     "step": 120,
     "arrays": {"params.layers.q_proj.kernel": [sum, weighted], ...,
                "train_state.opt_state.0.mu.layers.q_proj.kernel": [...], ...},
     "data_iter": "sha256 of process 0's data iterator state",
     "config": "sha256 of the resolved run config"}

An array's fingerprint is two sums, modulo 2**32, of its elements' bit patterns (as unsigned integers): plain, and
weighted by (flat index x 2654435761 + 1). Integer sums do not depend on the order of reduction, so the fingerprint
is the same on any mesh and sharding, on devices or in host numpy. Restoring compares every restored part with the
record and names those that disagree; a step that disagrees is refused like a damaged one.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Mapping, Optional

import jax
import numpy as np

from jaxtune.checkpoint.errors import CheckpointError, complete_step_hint, restore_boundary
from jaxtune.paths import as_path

INTEGRITY_ITEM = "integrity"
_WEIGHT = 2654435761  # Knuth's multiplicative hash constant: positions weigh differently


def _dotted(path: tuple) -> str:
    return ".".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def _unsigned(dtype: Any) -> Any:
    return {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]


@functools.lru_cache(maxsize=None)
def _device_fingerprinter(treedef: Any, out_sharding: Any) -> Any:
    import jax.numpy as jnp

    def one(x: Any) -> Any:
        bits = jax.lax.bitcast_convert_type(x, _unsigned(x.dtype)) if x.dtype != jnp.bool_ else x
        bits = bits.astype(jnp.uint32).reshape(-1)
        position = jax.lax.iota(jnp.uint32, bits.size) * jnp.uint32(_WEIGHT) + jnp.uint32(1)
        return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * position, dtype=jnp.uint32)])

    # Replicated output: every process of a multi-host run reads the whole (small) result.
    return jax.jit(lambda leaves: jnp.stack([one(x) for x in leaves]), out_shardings=out_sharding)


def _host_fingerprint(x: Any) -> list[int]:
    x = np.asarray(x)
    bits = (x if x.dtype == np.bool_ else x.view(_unsigned(x.dtype))).astype(np.uint32).reshape(-1)
    position = np.arange(bits.size, dtype=np.uint32) * np.uint32(_WEIGHT) + np.uint32(1)
    with np.errstate(over="ignore"):
        return [int(np.sum(bits, dtype=np.uint32)), int(np.sum(bits * position, dtype=np.uint32))]


def array_fingerprints(tree: Any, prefix: str) -> dict[str, list[int]]:
    """{``prefix.dotted.name``: [sum, weighted sum]} for every array of ``tree`` (device arrays in one jitted
    program, host arrays with numpy; the same numbers either way)."""
    flat = [(f"{prefix}.{_dotted(k)}", x) for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
    out = {k: _host_fingerprint(x) for k, x in flat if not isinstance(x, jax.Array)}
    on_device = [(k, x) for k, x in flat if isinstance(x, jax.Array)]
    if on_device:
        leaves = [
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x for _, x in on_device
        ]
        mesh = next((x.sharding.mesh for x in leaves if isinstance(x.sharding, jax.sharding.NamedSharding)), None)
        replicated = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        values = np.asarray(jax.device_get(_device_fingerprinter(jax.tree.structure(leaves), replicated)(leaves)))
        out.update({k: [int(a), int(b)] for (k, _), (a, b) in zip(on_device, values)})
    return out


def digest(value: Any) -> str:
    """sha256 of a JSON-able value (keys sorted), as it reads back from JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def data_state(data_iter: Any) -> Any:
    """The data iterator's position as JSON reads it back (grain returns bytes or a dict)."""
    state = data_iter.get_state()
    return state.decode() if isinstance(state, bytes) else state


def integrity_record(
    run: str, step: int, params: Any, train_fields: Any, data_iter: Any, config: Mapping[str, Any]
) -> dict:
    """The record saved with a step (see the module docstring); every process computes the fingerprints."""
    arrays = {**array_fingerprints(params, "params"), **array_fingerprints(train_fields, "train_state")}
    return {
        "run": run,
        "step": int(step),
        "arrays": arrays,
        "data_iter": digest(data_state(data_iter)),
        "config": digest(json.loads(json.dumps(dict(config), default=str))),
    }


def disagreements(
    record: Mapping[str, Any],
    params: Any,
    train_fields: Optional[Any] = None,
    data_iter: Any = None,
    config: Optional[Mapping[str, Any]] = None,
) -> list[str]:
    """The parts of a restored step that do not match its integrity record, grouped by item (empty: one save).
    ``train_fields``, ``data_iter`` and ``config`` are checked when given (eval and export-hf read params only)."""
    got = array_fingerprints(params, "params")
    if train_fields is not None:
        got.update(array_fingerprints(train_fields, "train_state"))
    want = {k: v for k, v in record.get("arrays", {}).items() if train_fields is not None or k.startswith("params.")}
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    parts: list[str] = []
    for item in ("params", "train_state"):
        names = [k[len(item) + 1 :] for k in bad if k.startswith(item + ".")]
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            parts.append(f"{item} ({len(names)} arrays: {shown})")
    if data_iter is not None and record.get("data_iter") != digest(data_state(data_iter)):
        parts.append("data_iter")
    if config is not None and record.get("config") != digest(dict(config)):
        parts.append("config")
    return parts


def refuse_mixed(step_dir: Any, record: Mapping[str, Any], parts: list[str]) -> None:
    """Raise a CheckpointError naming ``parts`` (from :func:`disagreements`) when there are any."""
    if parts:
        raise CheckpointError(
            f"{step_dir}: the step mixes two writers: {'; '.join(parts)} disagree with the integrity record of "
            f"run {record.get('run')} at step {record.get('step')} (two runs wrote into one run directory)"
            f"{complete_step_hint(step_dir)}"
        )


def check_recorded_params(step_dir: Any, params: Any) -> None:
    """For a train checkpoint's step folder read as a params-only checkpoint (eval, export-hf): refuse params that
    are not the ones its integrity record names; nothing to check in a folder without a record."""
    import orbax.checkpoint as ocp

    record_dir = as_path(step_dir) / INTEGRITY_ITEM
    if not record_dir.is_dir():
        return
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader, restore_boundary(step_dir, f"{INTEGRITY_ITEM}/"):
        record = reader.restore(record_dir)
    refuse_mixed(step_dir, record, disagreements(record, params))
