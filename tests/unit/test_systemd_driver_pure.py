"""The systemd driver's pure parts: reading a captured GetAll answer, describing settings for plans.

The property dict below was captured from systemd 252 (GetAll on org.freedesktop.systemd1.Slice) after
setting cpu.weight 250, cpu.max "12345 50000", cpuset.cpus 0,2-3,9, memory.max 128M, pids.max 7 through
this driver; the tests need no systemd.
"""

from __future__ import annotations

from typing import Any

import pytest

from cgctl.plan import Op, OpKind
from drivers.api import CpuList, CpuMax, DriverOptions, IoMax, Knob, setting_key
from drivers.systemd import SystemdDriver
from drivers.systemd.driver import describe

U64 = 2**64 - 1
CAPTURED_252: dict[str, Any] = {
    "CPUWeight": 250,
    "CPUQuotaPerSecUSec": 250000,
    "CPUQuotaPeriodUSec": 50000,
    "AllowedCPUs": b"\r\x02\x00\x00\x00\x00\x00\x00",
    "AllowedMemoryNodes": b"",
    "MemoryMin": 0,
    "MemoryLow": 0,
    "MemoryHigh": U64,
    "MemoryMax": 134217728,
    "MemorySwapMax": U64,
    "IOWeight": U64,
    "IOReadBandwidthMax": [],
    "IOWriteBandwidthMax": [],
    "IOReadIOPSMax": [],
    "IOWriteIOPSMax": [],
    "TasksMax": 7,
    "ControlGroup": "/cgctl\\x2dcap.slice",
}


@pytest.fixture
def driver() -> SystemdDriver:
    return SystemdDriver(DriverOptions(root="cgctl"))  # no connection is made until a call needs one


def test_captured_properties_read_back_as_cgctl_values(driver: SystemdDriver) -> None:
    values = driver._decode_all(CAPTURED_252, ())
    assert values == {
        "cpu.weight": 250,
        "cpu.max": CpuMax(12_500, 50_000),  # 12345/50000 = 246.9 ms/s → 250 ms/s
        "cpuset.cpus": CpuList((0, 2, 3, 9)),
        "cpuset.mems": CpuList(),
        "memory.min": 0,
        "memory.low": 0,
        "memory.high": None,
        "memory.max": 134217728,
        "memory.swap.max": None,
        "io.weight": 100,
        "pids.max": 7,
    }
    assert values["cpu.max"] == driver.effective_value("cpu.max", CpuMax(12_345, 50_000))


def test_an_asked_for_device_without_limits_reads_unlimited(driver: SystemdDriver) -> None:
    key = setting_key(Knob.IO_MAX, "254:0")
    assert driver._decode_all(CAPTURED_252, [key])[key] == IoMax()


def test_properties_an_old_systemd_lacks_are_not_invented(driver: SystemdDriver) -> None:
    old = {
        k: v for k, v in CAPTURED_252.items() if k not in ("AllowedCPUs", "AllowedMemoryNodes", "MemoryMin")
    }
    values = driver._decode_all(old, ())
    assert "cpuset.cpus" not in values and "cpuset.mems" not in values and "memory.min" not in values


def test_settings_are_described_in_systemd_terms(driver: SystemdDriver) -> None:
    assert driver.describe_value("cpu.max", CpuMax(12_345, 100_000)) == (
        "CPUQuotaPerSecUSec=130000 CPUQuotaPeriodUSec=100000"
    )
    assert driver.describe_value("memory.max", None) == "MemoryMax=infinity"
    assert driver.describe_value("cpuset.cpus", CpuList((0, 1, 2, 5))) == "AllowedCPUs=0-2,5"
    assert driver.describe_value("pids.max", 0).startswith("pids.max=0 (")
    assert "not expressible" in driver.describe_value("memory.oom.group", True)
    io = driver.describe_value("io.max[4095:4095]", IoMax(rbps=1024))
    assert io.startswith("IOReadBandwidthMax=4095:4095 1024 IOWriteBandwidthMax=4095:4095 infinity")


def test_groups_are_named_with_their_unit_in_plan_lines(driver: SystemdDriver) -> None:
    assert driver.describe_group(("web", "worker")) == "web/worker (cgctl-web-worker.slice)"
    assert driver.describe_group(()) == "/ (cgctl.slice)"
    op = Op(OpKind.CREATE, ("web",))
    assert op.describe(driver) == "create web (cgctl-web.slice)"
    assert op.describe() == "create web"


def test_ownership_mark() -> None:
    assert describe("cgctl", ()) == "cgctl: managed root cgctl"
    assert describe("cgctl", ("web", "worker")) == "cgctl: managed group web/worker"
