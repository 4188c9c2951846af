"""The knob → systemd property table: names, D-Bus signatures, both conversions, rounding, version gates."""

from __future__ import annotations

from typing import Any

import pytest
from dbus_fast import Variant

from drivers.api import KERNEL_DEFAULTS, CpuList, CpuMax, IoMax, Knob, Value
from drivers.systemd import properties as p
from drivers.systemd.driver import parse_version

U64 = 2**64 - 1
V252 = 252


def wire(assignments: list[tuple[str, Variant]]) -> list[tuple[str, str, Any]]:
    return [(name, variant.signature, variant.value) for name, variant in assignments]


def as_read_back(assignments: list[tuple[str, Variant]]) -> dict[str, Any]:
    """What GetAll returns after systemd stored these assignments (a(st) entries become a list)."""
    return {name: variant.value for name, variant in assignments}


def test_every_knob_is_mapped_or_declared_inexpressible() -> None:
    assert set(p.TABLE) | set(p.NOT_EXPRESSIBLE) == set(Knob)
    assert not set(p.TABLE) & set(p.NOT_EXPRESSIBLE)


@pytest.mark.parametrize(
    ("knob", "names", "signature"),
    [
        (Knob.CPU_WEIGHT, ("CPUWeight",), "t"),
        (Knob.CPU_MAX, ("CPUQuotaPerSecUSec", "CPUQuotaPeriodUSec"), "t"),
        (Knob.CPUSET_CPUS, ("AllowedCPUs",), "ay"),
        (Knob.CPUSET_MEMS, ("AllowedMemoryNodes",), "ay"),
        (Knob.MEMORY_MIN, ("MemoryMin",), "t"),
        (Knob.MEMORY_LOW, ("MemoryLow",), "t"),
        (Knob.MEMORY_HIGH, ("MemoryHigh",), "t"),
        (Knob.MEMORY_MAX, ("MemoryMax",), "t"),
        (Knob.MEMORY_SWAP_MAX, ("MemorySwapMax",), "t"),
        (Knob.IO_WEIGHT, ("IOWeight",), "t"),
        (
            Knob.IO_MAX,
            ("IOReadBandwidthMax", "IOWriteBandwidthMax", "IOReadIOPSMax", "IOWriteIOPSMax"),
            "a(st)",
        ),
        (Knob.PIDS_MAX, ("TasksMax",), "t"),
    ],
)
def test_table_names_and_signatures(knob: Knob, names: tuple[str, ...], signature: str) -> None:
    mapping = p.TABLE[knob]
    assert tuple(prop.name for prop in mapping.properties) == names
    assert {prop.signature for prop in mapping.properties} == {signature}


def test_weights_encode_as_uint64_and_unset_reads_as_kernel_default() -> None:
    assert wire(p.encode(Knob.CPU_WEIGHT, 250, V252)) == [("CPUWeight", "t", 250)]
    assert wire(p.encode(Knob.IO_WEIGHT, 10_000, V252)) == [("IOWeight", "t", 10_000)]
    assert p.decode(Knob.CPU_WEIGHT, {"CPUWeight": 250}) == 250
    assert p.decode(Knob.CPU_WEIGHT, {"CPUWeight": U64}) == 100
    assert p.decode(Knob.IO_WEIGHT, {"IOWeight": U64}) == 100


@pytest.mark.parametrize("bad", [0, 10_001, None, True, CpuMax(1, 2)])
def test_weights_out_of_range_are_refused(bad: Value) -> None:
    with pytest.raises(p.ConversionError):
        p.encode(Knob.CPU_WEIGHT, bad, V252)


@pytest.mark.parametrize(
    ("knob", "prop"),
    [
        (Knob.MEMORY_MIN, "MemoryMin"),
        (Knob.MEMORY_LOW, "MemoryLow"),
        (Knob.MEMORY_HIGH, "MemoryHigh"),
        (Knob.MEMORY_MAX, "MemoryMax"),
        (Knob.MEMORY_SWAP_MAX, "MemorySwapMax"),
        (Knob.PIDS_MAX, "TasksMax"),
    ],
)
def test_limits_use_uint64_max_for_infinity(knob: Knob, prop: str) -> None:
    assert wire(p.encode(knob, 134_217_728, V252)) == [(prop, "t", 134_217_728)]
    assert wire(p.encode(knob, None, V252)) == [(prop, "t", U64)]
    assert p.decode(knob, {prop: 134_217_728}) == 134_217_728
    assert p.decode(knob, {prop: U64}) is None


def test_tasks_max_zero_has_no_systemd_equivalent() -> None:
    with pytest.raises(p.ConversionError, match="TasksMax"):
        p.encode(Knob.PIDS_MAX, 0, V252)
    assert wire(p.encode(Knob.PIDS_MAX, 1, V252)) == [("TasksMax", "t", 1)]


def test_memory_zero_is_a_valid_protection() -> None:
    assert wire(p.encode(Knob.MEMORY_LOW, 0, V252)) == [("MemoryLow", "t", 0)]


@pytest.mark.parametrize(
    ("value", "per_sec", "kernel"),
    [
        # exact multiples of 10 ms/s pass unchanged
        (CpuMax(50_000, 100_000), 500_000, CpuMax(50_000, 100_000)),
        (CpuMax(200_000, 100_000), 2_000_000, CpuMax(200_000, 100_000)),
        # 123.45 ms/s → 130 ms/s (rounded up to systemd's whole percent)
        (CpuMax(12_345, 100_000), 130_000, CpuMax(13_000, 100_000)),
        # 333.33 ms/s → 340 ms/s, written with the 50 ms period: 17000
        (CpuMax(16_666, 50_000), 340_000, CpuMax(17_000, 50_000)),
        # a quota below 1 ms per period: systemd lengthens the period so the quota is >= 1 ms
        (CpuMax(500, 100_000), 10_000, CpuMax(1_000, 100_000)),
        (CpuMax(1_000, 10_000), 100_000, CpuMax(1_000, 10_000)),
    ],
)
def test_cpu_max_rounding(value: CpuMax, per_sec: int, kernel: CpuMax) -> None:
    assert wire(p.encode(Knob.CPU_MAX, value, V252)) == [
        ("CPUQuotaPerSecUSec", "t", per_sec),
        ("CPUQuotaPeriodUSec", "t", value.period_us),
    ]
    assert p.kernel_cpu_max(value) == kernel
    # observe reads what set wrote, and normalize predicts it: re-apply is a no-op
    read = p.decode(Knob.CPU_MAX, as_read_back(p.encode(Knob.CPU_MAX, value, V252)))
    assert read == kernel == p.normalize(Knob.CPU_MAX, value)


def test_cpu_max_period_is_clamped_like_systemd_does() -> None:
    # 10 ms/s at a 50 ms period would be 0.5 ms: systemd stretches the period to 100 ms
    assert p.kernel_cpu_max(CpuMax(500, 50_000)) == CpuMax(1_000, 100_000)
    # periods above 1 s are clamped to 1 s
    assert p.kernel_cpu_max(CpuMax(3_000_000, 2_000_000)) == CpuMax(1_500_000, 1_000_000)


def test_unlimited_cpu_max_always_reads_as_the_default_period() -> None:
    assignments = p.encode(Knob.CPU_MAX, CpuMax(None, 50_000), V252)
    assert wire(assignments) == [("CPUQuotaPerSecUSec", "t", U64), ("CPUQuotaPeriodUSec", "t", 50_000)]
    assert p.decode(Knob.CPU_MAX, as_read_back(assignments)) == CpuMax(None, 100_000)
    assert p.normalize(Knob.CPU_MAX, CpuMax(None, 50_000)) == CpuMax(None, 100_000)
    assert (
        p.decode(Knob.CPU_MAX, {"CPUQuotaPerSecUSec": U64, "CPUQuotaPeriodUSec": U64})
        == KERNEL_DEFAULTS[Knob.CPU_MAX]
    )


def test_cpu_max_before_systemd_242_has_no_period() -> None:
    assert wire(p.encode(Knob.CPU_MAX, CpuMax(20_000, 100_000), 241)) == [
        ("CPUQuotaPerSecUSec", "t", 200_000)
    ]
    with pytest.raises(p.ConversionError, match="242"):
        p.encode(Knob.CPU_MAX, CpuMax(20_000, 50_000), 241)


@pytest.mark.parametrize(
    ("cpus", "mask"),
    [
        ((), b""),
        ((0,), b"\x01"),
        ((0, 1), b"\x03"),
        ((1, 3), b"\x0a"),
        ((7, 8), b"\x80\x01"),
        ((0, 1, 2, 3, 16), b"\x0f\x00\x01"),
    ],
)
def test_cpuset_bitmask(cpus: tuple[int, ...], mask: bytes) -> None:
    assert p.cpus_to_mask(CpuList(cpus)) == mask
    assert p.mask_to_cpus(mask) == CpuList(cpus)
    assert wire(p.encode(Knob.CPUSET_CPUS, CpuList(cpus), V252)) == [("AllowedCPUs", "ay", mask)]
    assert wire(p.encode(Knob.CPUSET_MEMS, CpuList(cpus), V252)) == [("AllowedMemoryNodes", "ay", mask)]
    assert p.decode(Knob.CPUSET_CPUS, {"AllowedCPUs": mask}) == CpuList(cpus)
    assert p.decode(Knob.CPUSET_MEMS, {"AllowedMemoryNodes": list(mask)}) == CpuList(cpus)


def test_io_max_sets_each_field_for_one_device_path() -> None:
    value = IoMax(rbps=2_097_152, wbps=None, riops=None, wiops=120)
    assignments = p.encode(Knob.IO_MAX, value, V252, "/dev/vda")
    assert wire(assignments) == [
        ("IOReadBandwidthMax", "a(st)", [["/dev/vda", 2_097_152]]),
        ("IOWriteBandwidthMax", "a(st)", [["/dev/vda", U64]]),
        ("IOReadIOPSMax", "a(st)", [["/dev/vda", U64]]),
        ("IOWriteIOPSMax", "a(st)", [["/dev/vda", 120]]),
    ]
    read = as_read_back(assignments)
    read["IOReadBandwidthMax"] = [["/dev/vdb", 5], ["/dev/vda", 2_097_152]]
    assert p.decode(Knob.IO_MAX, read, lambda path: path == "/dev/vda") == value
    assert p.decode(Knob.IO_MAX, read, lambda path: path == "/dev/vdb") == IoMax(rbps=5)
    assert p.decode(Knob.IO_MAX, read, lambda path: False) == IoMax()


def test_io_max_needs_a_device_path() -> None:
    with pytest.raises(p.ConversionError, match="device"):
        p.encode(Knob.IO_MAX, IoMax(rbps=1), V252, None)


def test_oom_group_is_not_expressible_on_a_slice() -> None:
    with pytest.raises(p.ConversionError, match="OOMPolicy"):
        p.encode(Knob.MEMORY_OOM_GROUP, True, V252)
    assert "OOMPolicy" in p.unsupported_knobs(V252, unified=True)[Knob.MEMORY_OOM_GROUP]


def test_version_gates_name_the_version() -> None:
    assert set(p.unsupported_knobs(252, unified=True)) == {Knob.MEMORY_OOM_GROUP}
    old = p.unsupported_knobs(243, unified=True)
    assert set(old) == {Knob.MEMORY_OOM_GROUP, Knob.CPUSET_CPUS, Knob.CPUSET_MEMS}
    assert "systemd >= 244" in old[Knob.CPUSET_CPUS] and "systemd 243" in old[Knob.CPUSET_CPUS]
    older = p.unsupported_knobs(239, unified=True)
    assert "systemd >= 240" in older[Knob.MEMORY_MIN]
    assert Knob.MEMORY_MAX not in older


def test_v2_only_properties_are_unsupported_on_hybrid_hosts() -> None:
    hybrid = p.unsupported_knobs(252, unified=False)
    for knob in (Knob.CPUSET_CPUS, Knob.MEMORY_MIN, Knob.MEMORY_LOW, Knob.MEMORY_HIGH, Knob.MEMORY_SWAP_MAX):
        assert "unified" in hybrid[knob]
    for knob in (Knob.CPU_WEIGHT, Knob.CPU_MAX, Knob.MEMORY_MAX, Knob.PIDS_MAX, Knob.IO_MAX):
        assert knob not in hybrid


@pytest.mark.parametrize(("text", "version"), [("252.39-1~deb12u2", 252), ("255", 255), ("v257.1", 257)])
def test_parse_version(text: str, version: int) -> None:
    assert parse_version(text) == version
