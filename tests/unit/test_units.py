"""Unit parsing and formatting: sizes, durations, CPU amounts, weights, counts, lists, booleans."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import pytest

from cgctl import units
from cgctl.units import CpuQuota
from drivers.api import CpuList, CpuMax, IoMax

GIB = 1 << 30
MIB = 1 << 20
SIZE = "must be a size like 512M or max"


# -- sizes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("4096B", 4096),
        ("512K", 512 << 10),
        ("512M", 512 * MIB),
        ("512Mi", 512 * MIB),
        ("512MiB", 512 * MIB),
        ("1.5G", 3 * GIB // 2),
        ("1.5Gi", 3 * GIB // 2),
        ("2T", 2 << 40),
        ("1P", 1 << 50),
        (" 64M ", 64 * MIB),
        ("64 M", 64 * MIB),
        (".5G", GIB // 2),
        ("max", None),
    ],
)
def test_parse_size_accepts_bytes_binary_suffixes_and_max(text: object, expected: int | None) -> None:
    assert units.parse_size(text) == expected


def test_parse_size_truncates_fractions_to_whole_bytes() -> None:
    assert units.parse_size("0.3K") == 307  # 307.2 bytes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "12MB",
            f"{SIZE}: unit 'MB' is ambiguous (1000 or 1024?); write M or Mi, both 1024-based",
        ),
        (
            "1kb",
            f"{SIZE}: unit 'kb' is ambiguous (1000 or 1024?); write K or Ki, both 1024-based",
        ),
        ("512m", "must be a size like 512M or max: units are upper-case: did you mean 512M?"),
        ("2gi", "must be a size like 512M or max: units are upper-case: did you mean 2Gi?"),
        (
            "5X",
            f"{SIZE}: unknown unit 'X' (use K, M, G, T, P or Ki, Mi, Gi, Ti, Pi; all 1024-based)",
        ),
        ("-5M", "must be a size like 512M or max (got '-5M')"),
        (-5, "must be a size like 512M or max, not a negative number"),
        (
            1.5,
            "must be a size like 512M or max: a number without a unit is bytes and must be whole (got 1.5)",
        ),
        ("1.5", "must be a size like 512M or max: bytes must be whole (got '1.5')"),
        ("lots", "must be a size like 512M or max (got 'lots')"),
        ("", "must be a size like 512M or max (got '')"),
        (True, "must be a size like 512M or max"),
        (None, "must be a size like 512M or max"),
        ([1], "must be a size like 512M or max"),
        ("9999999P", "must be a size like 512M or max: '9999999P' is too large (write max for no limit)"),
        (1 << 63, f"must be a size like 512M or max: {1 << 63} is too large (write max for no limit)"),
    ],
)
def test_parse_size_rejects_with_a_precise_message(text: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        units.parse_size(text)
    assert str(info.value) == message


def test_parse_size_without_max_refuses_max() -> None:
    with pytest.raises(ValueError, match=r"^must be a size like 512M \(max is not allowed here\)$"):
        units.parse_size("max", allow_max=False)


@pytest.mark.parametrize(
    ("size", "exact", "inexact"),
    [
        (None, "max", "max"),
        (0, "0", "0"),
        (1023, "1023", "1023"),
        (1024, "1K", "1K"),
        (512 * MIB, "512M", "512M"),
        (3 * GIB // 2, "1536M", "1.5G"),
        (GIB, "1G", "1G"),
        (123_456_789, "123456789", "117.7M"),
        (1 << 50, "1P", "1P"),
    ],
)
def test_format_size(size: int | None, exact: str, inexact: str) -> None:
    assert units.format_size(size) == exact
    assert units.format_size(size, exact=False) == inexact


@pytest.mark.parametrize("size", [0, 1, 1023, 4096, 512 * MIB, 3 * GIB // 2, 123_456_789, 5 << 40])
def test_format_size_round_trips(size: int) -> None:
    assert units.parse_size(units.format_size(size)) == size


# -- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "usec"),
    [
        (250, 250),
        ("250", 250),
        ("250us", 250),
        ("250µs", 250),
        ("100ms", 100_000),
        ("1s", 1_000_000),
        ("1.5s", 1_500_000),
        ("0.5ms", 500),
        ("2.5 ms", 2_500),
    ],
)
def test_parse_duration_us(text: object, usec: int) -> None:
    assert units.parse_duration_us(text) == usec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5us", "must be a duration like 100ms: '1.5us' is not a whole number of microseconds"),
        ("10m", "must be a duration like 100ms: unknown unit 'm' (use us, ms or s)"),
        (0.1, "must be a duration like 100ms: a number without a unit is microseconds and must be whole"),
        (-1, "must be a duration like 100ms, not a negative number"),
        ("soon", "must be a duration like 100ms (got 'soon')"),
        (False, "must be a duration like 100ms"),
    ],
)
def test_parse_duration_rejects(text: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        units.parse_duration_us(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("usec", "text"),
    [
        (0, "0us"),
        (250, "250us"),
        (1_000, "1ms"),
        (1_500, "1.5ms"),
        (100_000, "100ms"),
        (1_000_000, "1s"),
        (1_500_000, "1.5s"),
        (1_234_567, "1.234567s"),
    ],
)
def test_format_duration_is_exact_and_round_trips(usec: int, text: str) -> None:
    assert units.format_duration_us(usec) == text
    assert units.parse_duration_us(text) == usec


def test_period_must_be_between_1ms_and_1s() -> None:
    assert units.parse_period_us("1ms") == 1_000
    assert units.parse_period_us("1s") == 1_000_000
    assert units.parse_period_us(100_000) == 100_000
    with pytest.raises(ValueError, match=r"^must be between 1ms and 1s \(got 999us\)$"):
        units.parse_period_us(999)
    with pytest.raises(ValueError, match=r"^must be between 1ms and 1s \(got 1.001s\)$"):
        units.parse_period_us("1001ms")


# -- cpu.max -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "quota"),
    [
        (1.5, CpuQuota(cpus=Fraction(3, 2))),
        (2, CpuQuota(cpus=Fraction(2))),
        ("1.5", CpuQuota(cpus=Fraction(3, 2))),
        ("150%", CpuQuota(cpus=Fraction(3, 2))),
        ("50 %", CpuQuota(cpus=Fraction(1, 2))),
        ("12.5%", CpuQuota(cpus=Fraction(1, 8))),
        ("50ms", CpuQuota(quota_us=50_000)),
        ("max", CpuQuota()),
    ],
)
def test_parse_cpu_quota(text: object, quota: CpuQuota) -> None:
    assert units.parse_cpu_quota(text) == quota


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (0, f"{units.CPU_MAX_HINT}; it must be more than 0"),
        ("0%", f"{units.CPU_MAX_HINT}; it must be more than 0"),
        (-1, f"{units.CPU_MAX_HINT}; it must be more than 0"),
        (100000, f"{units.CPU_MAX_HINT}; 100000 CPUs is more than any machine has"),
        ("lots", f"{units.CPU_MAX_HINT} (got 'lots')"),
        ("x%", f"{units.CPU_MAX_HINT} (got 'x%')"),
        ("500us", "a quota must be at least 1ms, the kernel's minimum (got '500us')"),
        (True, units.CPU_MAX_HINT),
        (float("inf"), f"{units.CPU_MAX_HINT} (got inf)"),
    ],
)
def test_parse_cpu_quota_rejects(text: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        units.parse_cpu_quota(text)
    assert str(info.value) == message


def test_cpu_quota_resolves_against_the_period() -> None:
    assert CpuQuota(cpus=Fraction(3, 2)).resolve(100_000) == CpuMax(150_000, 100_000)
    assert CpuQuota(cpus=Fraction(3, 2)).resolve(50_000) == CpuMax(75_000, 50_000)
    assert CpuQuota(quota_us=20_000).resolve(100_000) == CpuMax(20_000, 100_000)
    assert CpuQuota().resolve(250_000) == CpuMax(None, 250_000)


def test_cpu_quota_below_the_kernel_minimum_is_refused_after_scaling() -> None:
    with pytest.raises(ValueError) as info:
        CpuQuota(cpus=Fraction(1, 100)).resolve(10_000)  # 100 µs
    assert str(info.value) == "gives a quota of 100us per 10ms period; the kernel's minimum quota is 1ms"


@pytest.mark.parametrize(
    ("cpu_max", "text"),
    [
        (CpuMax(None), "max"),
        (CpuMax(150_000, 100_000), "1.5"),
        (CpuMax(100_000, 100_000), "1"),
        (CpuMax(100_000, 300_000), "0.333"),
        (CpuMax(25_000, 50_000), "0.5"),
    ],
)
def test_format_cpus(cpu_max: CpuMax, text: str) -> None:
    assert units.format_cpus(cpu_max) == text


# -- weights, counts, booleans -----------------------------------------------------------------------


def test_parse_weight_bounds() -> None:
    assert units.parse_weight(1) == 1
    assert units.parse_weight(10_000) == 10_000
    assert units.parse_weight("200") == 200
    for bad, shown in ((0, "0"), (10_001, "10001")):
        with pytest.raises(ValueError) as info:
            units.parse_weight(bad)
        assert str(info.value) == f"must be a whole number from 1 to 10000 (got {shown})"
    for wrong in (1.5, "high", True, None):
        with pytest.raises(ValueError, match=r"^must be a whole number from 1 to 10000"):
            units.parse_weight(wrong)


def test_parse_count_positive_or_max() -> None:
    assert units.parse_count(256) == 256
    assert units.parse_count("max") is None
    assert units.parse_count("64") == 64
    with pytest.raises(ValueError, match=r"^must be a whole number of at least 1 or max \(got 0\)$"):
        units.parse_count(0)
    with pytest.raises(ValueError, match=r"^must be a whole number of at least 1 or max \(got 'many'\)$"):
        units.parse_count("many")
    with pytest.raises(ValueError, match=r"^must be a whole number of at least 1$"):
        units.parse_count(True, allow_max=False)


def test_parse_bool_is_strict() -> None:
    assert units.parse_bool(True) is True
    assert units.parse_bool(False) is False
    for bad in ("yes", "true", 1, 0, None):
        with pytest.raises(ValueError, match=r"^must be true or false \(got "):
            units.parse_bool(bad)


# -- cpu lists ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ids"),
    [("0-1,4", (0, 1, 4)), ("3", (3,)), (0, (0,)), ("4,0-1", (0, 1, 4)), (" 0 - 2 , 5 ", (0, 1, 2, 5))],
)
def test_parse_cpu_list(text: object, ids: tuple[int, ...]) -> None:
    assert units.parse_cpu_list(text) == CpuList(ids)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'must be a list like "0-3,8"; it must name at least one id (leave the key out to inherit)'),
        ("3-1", "must be a list like \"0-3,8\" (range '3-1' runs backwards)"),
        ("a", "must be a list like \"0-3,8\" (bad part 'a' in 'a')"),
        ("0,,2", "must be a list like \"0-3,8\" (bad part '' in '0,,2')"),
        ("-1", "must be a list like \"0-3,8\" (bad part '-1' in '-1')"),
        ("0-4000000000", 'must be a list like "0-3,8" (id 4000000000 is beyond any machine)'),
        (1.5, 'must be a list like "0-3,8"'),
    ],
)
def test_parse_cpu_list_rejects(text: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        units.parse_cpu_list(text)
    assert str(info.value) == message


# -- display -----------------------------------------------------------------------------------------


def test_format_setting_uses_each_knobs_unit() -> None:
    assert units.format_setting("memory.max", 512 * MIB) == "512M"
    assert units.format_setting("memory.high", None) == "max"
    assert units.format_setting("cpu.max", CpuMax(150_000, 100_000)) == "1.5 CPUs (150000 100000)"
    assert units.format_setting("cpu.max", CpuMax(None, 50_000)) == "max (period 50ms)"
    assert units.format_setting("cpu.weight", 200) == "200"
    assert units.format_setting("pids.max", None) == "max"
    assert units.format_setting("memory.oom.group", True) == "true"
    assert units.format_setting("cpuset.cpus", CpuList((0, 1, 4))) == "0-1,4"
    assert (
        units.format_setting("io.max[8:0]", IoMax(rbps=50 * MIB, riops=1000))
        == "rbps=50M wbps=max riops=1000 wiops=max"
    )


def test_units_module_imports_neither_yaml_nor_pydantic() -> None:
    code = "import sys, cgctl.units; print(sorted(m for m in ('yaml', 'pydantic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
