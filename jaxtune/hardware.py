"""The accelerator facts, in one table: what each kind of chip holds and computes, how its slices are named and laid
out, and how many chips a host carries. ``jaxtune plan`` (per-chip memory budgets, TPU topologies to compile for),
``jaxtune validate`` (devices and hosts of an accelerator name) and the trainer's MFU figure read them here.

:data:`ACCELERATORS` maps each accelerator kind (:data:`jaxtune.names.ACCELERATOR_KINDS`) to its
:class:`AcceleratorSpec`:

=====  ========  =================  ==============  =================  =================  ========================
kind   platform  HBM per chip       peak bf16/chip  a name ``KIND-N``  topology           hosts
                                                    counts
=====  ========  =================  ==============  =================  =================  ========================
v4     tpu       32 GiB             275 TFLOP/s     TensorCores (2 a   ``v4:AxBxC``       2x2 chips (megacore:
                                                    chip)                                 one device per chip)
v5p    tpu       95.74 GiB          459 TFLOP/s     TensorCores        ``v5:AxBxC``       2x2 chips
v5e    tpu       16 GiB             197 TFLOP/s     chips              ``v5e:AxB``        2x2 chips; a 2x4 slice
                                                                                          is one host of 8
v6e    tpu       32 GiB             918 TFLOP/s     chips              ``v6e:AxB``        as v5e
h100   gpu       80 GB              989 TFLOP/s     GPUs               (none)             8 GPUs
h200   gpu       141 GB             989 TFLOP/s     GPUs               (none)             8 GPUs
a100   gpu       80 GB              312 TFLOP/s     GPUs               (none)             8 GPUs
cpu    cpu       (no budget)        (none)          simulated devices  (none)             8 devices
=====  ========  =================  ==============  =================  =================  ========================

TPU HBM is what the TPU compiler reports per chip (v5p measured: 95.74 GiB), GPU HBM the vendor's figure; peak
FLOP/s are dense bf16 from the vendors' data sheets. ``v5litepod`` is Cloud TPU's other name for ``v5e``
(:data:`ACCELERATOR_ALIASES`). TPU slices are laid out as Cloud TPU lays them (``v5p-16``: 8 chips, ``v5:2x2x2``,
2 hosts of 4); a slice's chip count must be one of the topology table's.

:func:`parse_accelerator` turns a name (``v5p-16``, ``v6e-16``, ``h100-8``, ``cpu-8``) into an :class:`Accelerator`
(chips, HBM, topology, host bounds); :func:`peak_flops_of_device_kind` finds the peak of a JAX ``device_kind``
(``TPU v5 lite``, ``NVIDIA H100 80GB HBM3``) for MFU. Errors are :class:`AcceleratorError`, naming the known kinds.

This module imports nothing of jaxtune but :mod:`jaxtune.errors` and :mod:`jaxtune.names`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Optional

from jaxtune.errors import JaxtuneError
from jaxtune.names import ACCELERATOR_KINDS, AcceleratorKind, unknown_name_message

GIB = 1024**3

Platform = Literal["tpu", "gpu", "cpu"]


class AcceleratorError(JaxtuneError, ValueError):
    """An accelerator name that names no known kind, or a slice size no such slice has; the message names the
    valid forms."""


@dataclass(frozen=True)
class AcceleratorSpec:
    """The facts of one accelerator kind (one row of the module docstring's table)."""

    platform: Platform
    hbm_bytes: int
    """HBM per chip (0 for simulated CPU devices: no memory budget to plan against)."""
    peak_flops: Optional[float]
    """Dense bf16 peak FLOP/s per chip (None: unknown, so no MFU)."""
    device_kinds: tuple[str, ...] = ()
    """JAX's ``Device.device_kind`` of this chip (the MFU lookup's keys; longer ones win a prefix match)."""
    counts_cores: bool = False
    """A slice name counts TensorCores, two per chip (``v5p-16`` is 8 chips); otherwise chips (GPUs, devices)."""
    topology_prefix: Optional[str] = None
    """TPUs: the compiler's topology name before the layout (``v5`` of ``v5:2x2x2``)."""
    topology_dims: int = 0
    """TPUs: 3 (v4, v5p: a 3-D torus) or 2 (v5e, v6e)."""
    chip_config: str = "default"
    """TPUs: the compiler's chip configuration (``megacore``: v4 runs its two TensorCores as one device)."""
    host_chips: Optional[int] = None
    """Chips per host when fixed (GPU nodes, and the CPU devices ``validate`` counts alike: 8); None for TPUs, whose
    hosts hold what the slice's topology gives (:func:`tpu_host_bounds`)."""


_GPU_NODE = 8  # GPUs per host (an HGX/DGX node)

ACCELERATORS: dict[AcceleratorKind, AcceleratorSpec] = {
    "v4": AcceleratorSpec(
        "tpu",
        32 * GIB,
        275e12,
        ("TPU v4",),
        counts_cores=True,
        topology_prefix="v4",
        topology_dims=3,
        chip_config="megacore",
    ),
    "v5p": AcceleratorSpec(
        "tpu",
        int(95.74 * GIB),
        459e12,
        ("TPU v5", "TPU v5p"),
        counts_cores=True,
        topology_prefix="v5",
        topology_dims=3,
    ),
    "v5e": AcceleratorSpec("tpu", 16 * GIB, 197e12, ("TPU v5 lite", "TPU v5e"), topology_prefix="v5e", topology_dims=2),
    "v6e": AcceleratorSpec("tpu", 32 * GIB, 918e12, ("TPU v6 lite", "TPU v6e"), topology_prefix="v6e", topology_dims=2),
    "h100": AcceleratorSpec("gpu", 80 * 10**9, 989e12, ("NVIDIA H100 80GB HBM3", "NVIDIA H100"), host_chips=_GPU_NODE),
    "h200": AcceleratorSpec("gpu", 141 * 10**9, 989e12, ("NVIDIA H200",), host_chips=_GPU_NODE),
    # The A100 40 GB shares the 80 GB model's peak; plans use the 80 GB model's memory.
    "a100": AcceleratorSpec(
        "gpu", 80 * 10**9, 312e12, ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB"), host_chips=_GPU_NODE
    ),
    "cpu": AcceleratorSpec("cpu", 0, None, host_chips=_GPU_NODE),
}
"""Every accelerator kind's facts, keyed by :data:`jaxtune.names.ACCELERATOR_KINDS`."""

ACCELERATOR_ALIASES: dict[str, AcceleratorKind] = {"v5litepod": "v5e"}
"""Other names of a kind in slice names (Cloud TPU calls v5e slices ``v5litepod-N``)."""

# TPU topologies by chip count, as Cloud TPU lays slices out.
_TOPOLOGIES = {
    3: {
        1: "1x1x1",
        2: "1x2x1",
        4: "2x2x1",
        8: "2x2x2",
        16: "2x2x4",
        32: "2x4x4",
        64: "4x4x4",
        128: "4x4x8",
        256: "4x8x8",
        512: "8x8x8",
        1024: "8x8x16",
        2048: "8x16x16",
        4096: "16x16x16",
    },
    2: {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
}


@dataclass(frozen=True)
class Accelerator:
    """One accelerator slice: how many chips, their memory, and for TPUs the topology the compiler needs."""

    name: str
    platform: Platform
    chips: int
    hbm_bytes: int
    """Per chip (0: no budget, simulated CPU devices)."""
    topology: Optional[str] = None
    """TPUs: the compiler's topology name (``v5:2x2x2``)."""
    chips_per_host: tuple[int, int, int] = (2, 2, 1)
    """Bounds of the chips one host holds (TPUs: from the topology; GPUs and CPU devices: ``(8, 1, 1)``)."""
    chip_config: str = "default"
    """TPUs: ``megacore`` for v4 (two TensorCores as one device)."""

    @property
    def hosts(self) -> int:
        """Hosts of the slice: its chips over the chips one host holds."""
        return max(1, -(-self.chips // math.prod(self.chips_per_host)))


def accelerator_spec(kind: str) -> AcceleratorSpec:
    """The facts of ``kind`` (an alias such as ``v5litepod`` resolves); AcceleratorError naming the known kinds."""
    key = ACCELERATOR_ALIASES.get(kind, kind)
    if key not in ACCELERATORS:
        raise AcceleratorError(unknown_name_message("accelerator kind", kind, _known_kinds()))
    return ACCELERATORS[key]  # type: ignore[index]


def _known_kinds() -> list[str]:
    aliases = {target: alias for alias, target in ACCELERATOR_ALIASES.items()}
    return [k for kind in ACCELERATOR_KINDS for k in (kind, aliases.get(kind)) if k]


def _name_forms() -> str:
    """``v4-N, v5p-N, ... (TPU), h100-N, ... (GPU), cpu-N``: the forms of a slice name, from the table."""
    groups = []
    for platform, label in (("tpu", " (TPU)"), ("gpu", " (GPU)"), ("cpu", "")):
        kinds = [k for k in _known_kinds() if accelerator_spec(k).platform == platform]
        groups.append(", ".join(f"{k}-N" for k in kinds) + label)
    return ", ".join(groups)


def tpu_topology(chips: int, dims: int) -> str:
    """The layout of a TPU slice of ``chips`` chips in a ``dims``-D topology (``8, 3`` -> ``2x2x2``); AcceleratorError
    listing the chip counts slices have."""
    table = _TOPOLOGIES[dims]
    if chips not in table:
        raise AcceleratorError(
            f"no TPU slice has {chips} chips in a {dims}-D topology; slices have {', '.join(str(c) for c in table)} "
            "chips"
        )
    return table[chips]


def tpu_host_bounds(layout: str) -> tuple[int, int, int]:
    """Chips per host of a TPU slice's layout: up to 4 (2x2) on multi-host slices; a single-host 2x4 holds 8, a 1x1
    one."""
    dims = [int(x) for x in layout.split("x")] + [1]
    if math.prod(dims) == 8 and len(layout.split("x")) == 2:
        return (2, 4, 1)
    return (min(2, dims[0]), min(2, dims[1]), 1)


def parse_accelerator(name: str) -> Accelerator:
    """``v5p-16`` (TPU v4/v5p names count TensorCores: v5p-16 is 8 chips), ``v5e-64``/``v6e-16`` (chips),
    ``h100-8``/``h200-1`` (GPUs), ``cpu-8`` (simulated CPU devices). Raises AcceleratorError naming the valid
    forms."""
    text = name.strip().lower()
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    if not m:
        raise AcceleratorError(f"--accelerator {name!r}: expected one of {_name_forms()}")
    kind, count = m.group(1), int(m.group(2))
    if count < 1:
        raise AcceleratorError(f"--accelerator {name!r}: the count must be at least 1")
    try:
        spec = accelerator_spec(kind)
    except AcceleratorError as e:
        raise AcceleratorError(f"--accelerator {name!r}: {e} (a name is KIND-N, e.g. v5p-16)") from None
    if spec.platform != "tpu":
        per_host = (spec.host_chips or 1, 1, 1)
        return Accelerator(
            name=text, platform=spec.platform, chips=count, hbm_bytes=spec.hbm_bytes, chips_per_host=per_host
        )
    chips = count // 2 if spec.counts_cores else count
    if spec.counts_cores and (count % 2 or chips < 1):
        raise AcceleratorError(
            f"--accelerator {name!r}: {kind} names count TensorCores (2 per chip): use an even count"
        )
    try:
        layout = tpu_topology(chips, spec.topology_dims)
    except AcceleratorError as e:
        raise AcceleratorError(f"--accelerator {name!r}: {e}") from None
    return Accelerator(
        name=text,
        platform="tpu",
        chips=chips,
        hbm_bytes=spec.hbm_bytes,
        topology=f"{spec.topology_prefix}:{layout}",
        chips_per_host=tpu_host_bounds(layout),
        chip_config=spec.chip_config,
    )


def peak_flops_of_device_kind(device_kind: str) -> Optional[float]:
    """Peak FLOP/s of one device of JAX's ``device_kind``: the table's entry for that kind, else for the longest
    known kind it starts with (``NVIDIA H100 PCIe`` -> ``NVIDIA H100``), else None (no MFU)."""
    peaks = {kind: spec.peak_flops for spec in ACCELERATORS.values() for kind in spec.device_kinds}
    if device_kind in peaks:
        return peaks[device_kind]
    for known, flops in sorted(peaks.items(), key=lambda kv: -len(kv[0])):
        if device_kind.startswith(known):
            return flops
    return None
