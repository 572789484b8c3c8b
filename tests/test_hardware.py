"""jaxtune.hardware: the one accelerator table (the values plan, validate and the MFU figure had each kept), slice
names and their layouts, and errors naming the known kinds."""

from __future__ import annotations

import pytest

from jaxtune.errors import JaxtuneError
from jaxtune.hardware import (
    ACCELERATORS,
    GIB,
    AcceleratorError,
    accelerator_spec,
    parse_accelerator,
    peak_flops_of_device_kind,
    tpu_topology,
)

# The per-chip HBM `jaxtune plan` budgeted with, and the peak FLOP/s by JAX device kind the MFU figure used, before
# they moved here.
HBM_BEFORE = {
    "v4": 32 * GIB,
    "v5p": int(95.74 * GIB),
    "v5e": 16 * GIB,
    "v5litepod": 16 * GIB,
    "v6e": 32 * GIB,
    "h100": 80 * 10**9,
    "h200": 141 * 10**9,
    "a100": 80 * 10**9,
}
PEAK_FLOPS_BEFORE = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


@pytest.mark.parametrize("kind, hbm", sorted(HBM_BEFORE.items()))
def test_hbm_per_chip_is_what_plan_budgeted_with(kind, hbm):
    assert accelerator_spec(kind).hbm_bytes == hbm
    assert parse_accelerator(f"{kind}-16").hbm_bytes == hbm


@pytest.mark.parametrize("device_kind, flops", sorted(PEAK_FLOPS_BEFORE.items()))
def test_peak_flops_by_device_kind_are_the_mfu_figures(device_kind, flops):
    assert peak_flops_of_device_kind(device_kind) == flops


def test_each_device_kind_belongs_to_one_accelerator_kind():
    kinds = [k for spec in ACCELERATORS.values() for k in spec.device_kinds]
    assert sorted(kinds) == sorted(PEAK_FLOPS_BEFORE)
    assert accelerator_spec("cpu").peak_flops is None and accelerator_spec("cpu").hbm_bytes == 0


def test_unknown_device_kinds_match_the_longest_known_prefix_or_nothing():
    assert peak_flops_of_device_kind("NVIDIA H100 PCIe") == 989e12
    assert peak_flops_of_device_kind("TPU v5 litepod") == 197e12  # "TPU v5 lite", not "TPU v5"
    assert peak_flops_of_device_kind("cpu") is None and peak_flops_of_device_kind("") is None


@pytest.mark.parametrize(
    "name, platform, chips, topology, per_host, hosts, chip_config",
    [
        ("v5p-16", "tpu", 8, "v5:2x2x2", (2, 2, 1), 2, "default"),
        ("v5p-8", "tpu", 4, "v5:2x2x1", (2, 2, 1), 1, "default"),
        ("v5p-32", "tpu", 16, "v5:2x2x4", (2, 2, 1), 4, "default"),
        ("v4-32", "tpu", 16, "v4:2x2x4", (2, 2, 1), 4, "megacore"),
        ("v4-4", "tpu", 2, "v4:1x2x1", (1, 2, 1), 1, "megacore"),
        ("v5e-64", "tpu", 64, "v5e:8x8", (2, 2, 1), 16, "default"),
        ("v5e-8", "tpu", 8, "v5e:2x4", (2, 4, 1), 1, "default"),
        ("v5litepod-16", "tpu", 16, "v5e:4x4", (2, 2, 1), 4, "default"),
        ("v6e-16", "tpu", 16, "v6e:4x4", (2, 2, 1), 4, "default"),
        ("v6e-1", "tpu", 1, "v6e:1x1", (1, 1, 1), 1, "default"),
        ("h200-8", "gpu", 8, None, (8, 1, 1), 1, "default"),
        ("h100-16", "gpu", 16, None, (8, 1, 1), 2, "default"),
        ("A100-1", "gpu", 1, None, (8, 1, 1), 1, "default"),
        ("cpu-8", "cpu", 8, None, (8, 1, 1), 1, "default"),
    ],
)
def test_slice_names(name, platform, chips, topology, per_host, hosts, chip_config):
    acc = parse_accelerator(name)
    assert acc.name == name.lower()
    assert (acc.platform, acc.chips, acc.topology, acc.chips_per_host, acc.hosts, acc.chip_config) == (
        platform,
        chips,
        topology,
        per_host,
        hosts,
        chip_config,
    )


@pytest.mark.parametrize(
    "name, message",
    [
        ("v5p-15", "'v5p-15': v5p names count TensorCores (2 per chip): use an even count"),
        ("v5p-0", "'v5p-0': the count must be at least 1"),
        ("tpu", "'tpu': expected one of v4-N, v5p-N, v5e-N, v5litepod-N, v6e-N (TPU), h100-N, h200-N, a100-N (GPU)"),
        ("v5e-12", "'v5e-12': no TPU slice has 12 chips in a 2-D topology; slices have 1, 4, 8, 16"),
    ],
)
def test_bad_names_say_what_is_wrong(name, message):
    with pytest.raises(AcceleratorError) as e:
        parse_accelerator(name)
    assert str(e.value).startswith(f"--accelerator {message}")
    assert isinstance(e.value, JaxtuneError)  # the CLI prints it as a message and exits with status 2


def test_an_unknown_accelerator_names_the_known_ones():
    known = "v4, v5p, v5e, v5litepod, v6e, h100, h200, a100, cpu"
    with pytest.raises(AcceleratorError) as e:
        parse_accelerator("v5x-8")
    assert str(e.value).startswith(
        f"--accelerator 'v5x-8': unknown accelerator kind 'v5x' (did you mean 'v5p'?); known: {known}"
    )
    with pytest.raises(AcceleratorError, match=f"^unknown accelerator kind 'x9'; known: {known}$"):
        accelerator_spec("x9")
    assert tpu_topology(8, 3) == "2x2x2"
