"""The systemd driver against a real systemd (PID 1 in the VM: tests/vm/run --systemd).

Every test works under its own root slice ``cgctl-test-<hex>`` and stops it at teardown (stopping a slice
stops every scope and slice in it); processes are started by the test and killed by it. Limits are proven
by reading the kernel's files under the unit's ControlGroup — the driver itself never writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from dbus_fast import Variant

from drivers.api import (
    CgroupMode,
    CpuList,
    CpuMax,
    DriverError,
    DriverOptions,
    FreezeTimeoutError,
    GroupBusyError,
    GroupPath,
    IoMax,
    Knob,
    NotOwnedError,
    Value,
    setting_key,
)
from drivers.systemd import SystemdDriver, properties
from drivers.systemd.bus import SLICE_IFACE

USABLE, WHY = SystemdDriver.usable()
pytestmark = [pytest.mark.systemd, pytest.mark.skipif(not USABLE, reason=WHY)]

MOUNT = "/sys/fs/cgroup"
TIMEOUT = 30.0  # the VM runs under TCG: generous, but every wait is still bounded


def scratch_disk() -> str | None:
    """MAJ:MIN of the VM's scratch disk (/dev/vda), if there is one."""
    try:
        return Path("/sys/block/vda/dev").read_text().strip()
    except OSError:
        return None


@pytest.fixture
async def driver() -> AsyncIterator[SystemdDriver]:
    drv = SystemdDriver(DriverOptions(root=f"cgctl-test-{secrets.token_hex(4)}"), timeout=TIMEOUT)
    try:
        yield drv
    finally:
        root = drv._unit(())
        try:
            if await drv._bus.get_unit(root) is not None:
                # systemd refuses to stop a frozen unit; a failed test may have left one frozen.
                with contextlib.suppress(DriverError):
                    await drv._bus.thaw_unit(root)
                await drv._bus.stop_unit(root, mode="replace")
        finally:
            await drv.close()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=TIMEOUT)


def spawn(procs: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(list(argv))
    procs.append(proc)
    return proc


async def cgroup_dir(drv: SystemdDriver, path: GroupPath) -> str:
    name = drv._unit(path)
    obj = await drv._bus.get_unit(name)
    assert obj is not None, f"{name} not loaded"
    control_group = await drv._bus.get_property(obj, SLICE_IFACE, "ControlGroup", unit=name)
    assert control_group, f"{name} has no cgroup"
    return MOUNT + str(control_group)


def read(directory: str, name: str) -> str:
    return Path(directory, name).read_text().strip()


def events(directory: str) -> dict[str, str]:
    return dict(line.split() for line in read(directory, "cgroup.events").splitlines())


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_probe_describes_systemd_on_v2(driver: SystemdDriver) -> None:
    caps = await driver.probe()
    assert caps.driver == "systemd"
    assert caps.mode is CgroupMode.V2
    assert not caps.needs_subtree_control
    assert caps.describes_groups_as == "unit"
    assert caps.can_freeze
    assert int(caps.details["systemd_version"].split(".")[0]) >= 246
    assert set(caps.unsupported) == {Knob.MEMORY_OOM_GROUP}
    print(f"\nsystemd version: {caps.details['systemd_version']}")


def settings(disk: str | None) -> dict[str, Value]:
    out: dict[str, Value] = {
        "cpu.weight": 250,
        "cpu.max": CpuMax(12_345, 100_000),  # systemd: 130 ms/s → 13000
        "cpuset.cpus": CpuList((0,)),
        "cpuset.mems": CpuList((0,)),
        "memory.min": 4 << 20,
        "memory.low": 8 << 20,
        "memory.high": 96 << 20,
        "memory.max": 128 << 20,
        "memory.swap.max": 0,
        "io.weight": 300,
        "pids.max": 7,
    }
    if disk is not None:
        out[setting_key(Knob.IO_MAX, disk)] = IoMax(rbps=2_097_152, wiops=120)
    return out


def kernel_expectations(disk: str | None) -> dict[str, str]:
    out = {
        "cpu.weight": "250",
        "cpu.max": "13000 100000",
        "cpuset.cpus": "0",
        "cpuset.mems": "0",
        "memory.min": str(4 << 20),
        "memory.low": str(8 << 20),
        "memory.high": str(96 << 20),
        "memory.max": str(128 << 20),
        "memory.swap.max": "0",
        "io.weight": "default 300",
        "pids.max": "7",
    }
    if disk is not None:
        out["io.max"] = f"{disk} rbps=2097152 wbps=max riops=max wiops=120"
    return out


async def test_every_knob_round_trips_and_reaches_the_kernel(driver: SystemdDriver) -> None:
    disk = scratch_disk()
    group: GroupPath = ("web",)
    await driver.create(())
    await driver.create(group)
    wanted = settings(disk)
    for key, value in wanted.items():
        await driver.set(group, key, value)

    observed = (await driver.observe([group], {group: list(wanted)}))[group]
    assert observed.exists and observed.display == driver._unit(group)
    for key, value in wanted.items():
        assert observed.values[key] == driver.effective_value(key, value), key

    directory = await cgroup_dir(driver, group)
    seen = {name: read(directory, name) for name in kernel_expectations(disk)}
    print("\nkernel files through systemd:", seen)
    assert seen == kernel_expectations(disk)

    # Back to the defaults: every limit file reads max again.
    await driver.set(group, "cpu.max", CpuMax(None, 100_000))
    await driver.set(group, "memory.max", None)
    await driver.set(group, "memory.high", None)
    await driver.set(group, "pids.max", None)
    if disk is not None:
        await driver.set(group, setting_key(Knob.IO_MAX, disk), IoMax())
    assert read(directory, "cpu.max") == "max 100000"
    assert read(directory, "memory.max") == "max"
    assert read(directory, "memory.high") == "max"
    assert read(directory, "pids.max") == "max"
    if disk is not None:
        assert disk not in read(directory, "io.max")
    observed = (await driver.observe([group], {}))[group]
    assert observed.values["cpu.max"] == CpuMax(None, 100_000)
    assert observed.values["memory.max"] is None


async def test_quota_period_and_rounding_in_the_kernel(driver: SystemdDriver) -> None:
    await driver.create(())
    cases = [
        (CpuMax(50_000, 100_000), "50000 100000"),
        (CpuMax(16_666, 50_000), "17000 50000"),
        (CpuMax(250_000, 1_000_000), "250000 1000000"),
        (CpuMax(None, 50_000), "max 100000"),
    ]
    directory = await cgroup_dir(driver, ())
    for value, expected in cases:
        await driver.set((), "cpu.max", value)
        assert read(directory, "cpu.max") == expected, value
        observed = (await driver.observe([], {}))[()].values["cpu.max"]
        assert observed == driver.effective_value("cpu.max", value) == properties.kernel_cpu_max(value)


async def test_rejected_property_names_unit_and_property_and_changes_nothing(driver: SystemdDriver) -> None:
    await driver.create(())
    await driver.set((), "cpu.weight", 300)
    name = driver._unit(())
    # systemd checks every property before applying any: the valid CPUWeight must not be applied either.
    with pytest.raises(DriverError) as info:
        await driver._bus.set_unit_properties(
            name, [("CPUWeight", Variant("t", 10)), ("CPUQuotaPerSecUSec", Variant("t", 0))], runtime=True
        )
    assert name in str(info.value) and "CPUQuotaPerSecUSec" in str(info.value)
    assert info.value.cause is not None and "InvalidArgs" in info.value.cause
    with pytest.raises(DriverError) as info:
        await driver._bus.set_unit_properties(name, [("MemoryMax", Variant("i", 5))], runtime=True)
    assert "MemoryMax" in str(info.value)
    with pytest.raises(DriverError, match="TasksMax"):
        await driver.set((), "pids.max", 0)
    observed = (await driver.observe([], {}))[()]
    assert observed.values["cpu.weight"] == 300
    assert observed.values["memory.max"] is None
    assert read(await cgroup_dir(driver, ()), "cpu.weight") == "300"


async def test_move_places_processes_in_a_scope_inside_the_slice(
    driver: SystemdDriver, procs: list[subprocess.Popen[bytes]]
) -> None:
    await driver.create(())
    await driver.create(("batch",))
    sleeper = spawn(procs, "sleep", "300")
    await driver.move(("batch",), [sleeper.pid])
    slice_dir = await cgroup_dir(driver, ("batch",))
    own = Path(f"/proc/{sleeper.pid}/cgroup").read_text().strip().split("::", 1)[1]
    assert (MOUNT + own).startswith(slice_dir + "/") and own.endswith(".scope")
    observed = (await driver.observe([("batch",)], {}))[("batch",)]
    assert observed.populated
    # A populated slice (and its parent, which holds it) cannot be removed.
    with pytest.raises(GroupBusyError):
        await driver.remove(("batch",))
    with pytest.raises(GroupBusyError):
        await driver.remove(())
    sleeper.kill()
    sleeper.wait()
    await wait_for(lambda: events(slice_dir)["populated"] == "0", "the slice to empty")
    for _ in range(100):  # the scope is stopped once systemd notices it is empty
        try:
            await driver.remove(("batch",))
            break
        except GroupBusyError:
            await asyncio.sleep(0.1)
    assert not (await driver.observe([("batch",)], {}))[("batch",)].exists
    await driver.remove(())


async def test_freeze_and_thaw_are_confirmed_by_the_kernel(
    driver: SystemdDriver, procs: list[subprocess.Popen[bytes]]
) -> None:
    await driver.create(())
    await driver.create(("app",))
    await driver.create(("app", "inner"))
    sleeper = spawn(procs, "sleep", "300")
    await driver.move(("app", "inner"), [sleeper.pid])
    app_dir = await cgroup_dir(driver, ("app",))
    inner_dir = await cgroup_dir(driver, ("app", "inner"))

    await driver.freeze(("app",), TIMEOUT)
    assert events(app_dir)["frozen"] == "1"
    assert events(inner_dir)["frozen"] == "1"
    observed = await driver.observe([("app",), ("app", "inner")], {})
    assert observed[("app",)].frozen and observed[("app",)].self_frozen
    assert observed[("app", "inner")].frozen and not observed[("app", "inner")].self_frozen
    assert not observed[()].frozen
    await driver.freeze(("app",), TIMEOUT)  # already frozen: no error

    await driver.thaw(("app",), TIMEOUT)
    assert events(app_dir)["frozen"] == "0"
    assert events(inner_dir)["frozen"] == "0"
    observed = await driver.observe([("app",), ("app", "inner")], {})
    assert not observed[("app",)].frozen and not observed[("app", "inner")].frozen


async def test_cpu_quota_throttles_a_busy_loop(
    driver: SystemdDriver, procs: list[subprocess.Popen[bytes]]
) -> None:
    await driver.create(())
    await driver.create(("hog",))
    await driver.set(("hog",), "cpu.max", CpuMax(10_000, 100_000))
    hog = spawn(procs, "sh", "-c", "while :; do :; done")
    await driver.move(("hog",), [hog.pid])
    directory = await cgroup_dir(driver, ("hog",))
    await asyncio.sleep(2.0)
    stat = dict(line.split() for line in read(directory, "cpu.stat").splitlines())
    print(f"\nthrottling through systemd: {stat}")
    assert int(stat["nr_throttled"]) > 0
    # 10 % of one CPU over >= 2 s of wall time: well under the 2 s a free busy loop would get.
    assert int(stat["usage_usec"]) < 1_000_000
    usage = (await driver.stats([("hog",)]))[("hog",)]
    assert usage.cpu_throttled_periods is not None and usage.cpu_throttled_periods > 0
    assert usage.pids_current == 1


async def test_slices_cgctl_did_not_create_are_not_touched(driver: SystemdDriver) -> None:
    await driver.create(())
    foreign = driver._unit(("foreign",))
    await driver._bus.start_transient_unit(foreign, [("Description", Variant("s", "someone else's slice"))])
    with pytest.raises(NotOwnedError):
        await driver.remove(("foreign",))
    with pytest.raises(NotOwnedError):
        await driver.create(("foreign",))
    with pytest.raises(DriverError, match="parent"):
        await driver.create(("missing", "child"))


async def test_usable_and_unknown_groups(driver: SystemdDriver) -> None:
    ok, why = SystemdDriver.usable()
    assert ok, why
    observed = await driver.observe([("nope",)], {})
    assert not observed[()].exists and not observed[("nope",)].exists
    await driver.remove(("nope",))  # removing what is not there is a no-op
    assert await driver.stats([("nope",)]) == {}


async def test_a_dropped_bus_connection_is_reestablished(driver: SystemdDriver) -> None:
    await driver.create(())
    connection = driver._bus._bus
    assert connection is not None
    connection.disconnect()  # as if dbus-daemon had dropped us
    await asyncio.sleep(0.1)
    await driver.set((), "cpu.weight", 150)
    assert (await driver.observe([], {}))[()].values["cpu.weight"] == 150


async def test_properties_of_transient_slices_stay_runtime_even_when_persistent_is_asked() -> None:
    """systemd keeps every property of a transient unit in /run/systemd/transient/<unit>.d, whatever the
    runtime flag of SetUnitProperties says (seen on 252): `persistent: true` cannot outlive a reboot."""
    root = f"cgctl-test-{secrets.token_hex(4)}"
    runtime = SystemdDriver(DriverOptions(root=root), timeout=TIMEOUT)
    persistent = SystemdDriver(DriverOptions(root=root, persistent=True), timeout=TIMEOUT)
    name = runtime._unit(())
    etc_dir = Path(f"/etc/systemd/system.control/{name}.d")
    try:
        await runtime.create(())
        await runtime.set((), "memory.max", 64 << 20)
        await persistent.set((), "pids.max", 9)
        obj = await runtime._bus.get_unit(name)
        assert obj is not None
        drop_ins = await runtime._bus.get_property(
            obj, "org.freedesktop.systemd1.Unit", "DropInPaths", unit=name
        )
        assert sorted(drop_ins) == [
            f"/run/systemd/transient/{name}.d/50-MemoryMax.conf",
            f"/run/systemd/transient/{name}.d/50-TasksMax.conf",
        ]
        assert not etc_dir.exists()
        assert (await persistent.probe()).details["persistent_properties"].startswith("no")
    finally:
        with contextlib.suppress(DriverError):
            await runtime._bus.stop_unit(name, mode="replace")
        for conf in etc_dir.glob("50-*.conf"):  # in case a systemd version does write them
            conf.unlink()
        with contextlib.suppress(OSError):
            etc_dir.rmdir()
        await runtime.close()
        await persistent.close()


async def test_a_freeze_that_is_not_confirmed_in_time_is_reverted(
    driver: SystemdDriver, procs: list[subprocess.Popen[bytes]]
) -> None:
    await driver.create(())
    await driver.create(("slow",))
    sleeper = spawn(procs, "sleep", "300")
    await driver.move(("slow",), [sleeper.pid])
    directory = await cgroup_dir(driver, ("slow",))
    with pytest.raises(FreezeTimeoutError):
        await driver.freeze(("slow",), 1e-6)  # no reply can arrive this fast
    assert events(directory)["frozen"] == "0"
    observed = (await driver.observe([("slow",)], {}))[("slow",)]
    assert not observed.frozen and not observed.self_frozen


async def test_a_process_can_place_itself_as_cgctl_exec_does(driver: SystemdDriver) -> None:
    await driver.create(())
    await driver.create(("exec",))
    program = (
        "import asyncio, os, sys\n"
        "from drivers.api import DriverOptions\n"
        "from drivers.systemd import SystemdDriver\n"
        "async def main():\n"
        f"    drv = SystemdDriver(DriverOptions(root={driver.options.root!r}), timeout={TIMEOUT})\n"
        "    await drv.move(('exec',), [os.getpid()])\n"
        "    await drv.close()\n"
        "asyncio.run(main())\n"
        "print(open('/proc/self/cgroup').read().strip())\n"
    )
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).parents[2])
    )
    out, _ = await asyncio.wait_for(done.communicate(), TIMEOUT * 2)
    assert done.returncode == 0
    own = out.decode().strip().split("::", 1)[1]
    assert (MOUNT + own).startswith(await cgroup_dir(driver, ("exec",)) + "/")
