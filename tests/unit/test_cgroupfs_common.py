"""Pure helpers of the cgroupfs driver: which writes may run inline, the managed root's path."""

from __future__ import annotations

import pytest

from drivers.api import CpuList, CpuMax, IoMax, UnsafePathError, Value
from drivers.cgroupfs.common import parse_flat_keyed, root_parts, write_is_quick

MIB = 2**20


def never() -> int | None:
    raise AssertionError("usage must not be read for this knob")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cpu.weight", 200),
        ("cpu.max", CpuMax(50_000)),
        ("pids.max", 5),
        ("io.max[8:0]", IoMax(rbps=1)),
        ("memory.low", 0),
        ("memory.oom.group", True),
        ("memory.max", None),
        ("memory.swap.max", None),
    ],
)
def test_writes_that_cannot_block_are_quick_without_reading_usage(key: str, value: Value) -> None:
    assert write_is_quick(key, value, never)


def test_memory_limits_are_quick_only_above_current_usage() -> None:
    assert write_is_quick("memory.max", 512 * MIB, lambda: 100 * MIB)
    assert not write_is_quick("memory.max", 64 * MIB, lambda: 100 * MIB)  # the kernel would reclaim
    assert not write_is_quick("memory.high", 64 * MIB, lambda: None)  # unknown usage: be careful
    assert not write_is_quick("memory.swap.max", 0, never)


def test_cpuset_writes_run_off_the_loop() -> None:
    assert not write_is_quick("cpuset.cpus", CpuList((0,)), never)


def test_managed_root_path() -> None:
    assert root_parts("cgctl") == ("cgctl",)
    assert root_parts("/a/b/") == ("a", "b")
    for bad in ("", "/", "../x", "a/../b", "a/./b"):
        with pytest.raises(UnsafePathError):
            root_parts(bad)


def test_flat_keyed_files() -> None:
    assert parse_flat_keyed("populated 1\nfrozen 0\n") == {"populated": "1", "frozen": "0"}
    assert parse_flat_keyed(None) == {}
