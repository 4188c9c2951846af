"""The cgroupfs driver on a pure cgroup v2 hierarchy (runs in the VM: CGCTL_VM=v2).

Run: ``tests/vm/run -- .venv/bin/python -m pytest -p no:cacheprovider -m cgroupv2 \
    tests/v2/test_cgroupfs_v2.py``

One managed root for the module (``cgctl-test-<hex>``); processes are only ever the tests' own children
(the ``children`` fixture kills each test's at its end); at the end ``cgroup.kill`` of our root (which
holds only our children and their forks), then rmdir bottom-up. Python runs 20–60× slower under TCG, so
the workloads are small.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.api import (
    CgroupMode,
    CpuList,
    CpuMax,
    DriverError,
    DriverOptions,
    GroupBusyError,
    IoMax,
    Knob,
    UnsafePathError,
    Value,
)
from drivers.cgroupfs import CgroupfsDriver, mountinfo
from drivers.cgroupfs.ops_v2 import V2Ops
from tests.kernel import kill_and_remove_v2_tree, read_keyed
from tests.procs import ALLOCATE_200M, FORK_UNTIL_REFUSED, IDLE, SPIN, Children, after_go, cpu_ticks, go

pytestmark = pytest.mark.cgroupv2

MIB = 2**20
LAYOUT = mountinfo.read_layout()
CONTROLLERS = {"cpu", "cpuset", "memory", "io", "pids"}

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)
if LAYOUT.mode is not CgroupMode.V2 or LAYOUT.unified is None:
    pytest.skip(
        f"needs pure cgroup v2 (this host is {LAYOUT.mode}): run it in tests/vm/run", allow_module_level=True
    )
MOUNT = Path(LAYOUT.unified)


def vda() -> str | None:
    dev = Path("/sys/block/vda/dev")
    return dev.read_text().strip() if dev.exists() else None


@pytest.fixture(scope="module")
def root_name() -> Iterator[str]:
    name = f"cgctl-test-{secrets.token_hex(4)}"
    yield name
    kill_and_remove_v2_tree(MOUNT / name)  # only the tests' children (and their forks) were moved in


@pytest.fixture(scope="module")
def driver(root_name: str) -> Iterator[CgroupfsDriver]:
    drv = CgroupfsDriver(DriverOptions(root=root_name))
    drv.ops.create(())
    ops = drv.ops
    assert isinstance(ops, V2Ops)
    ops.enable((), CONTROLLERS)
    yield drv
    asyncio.run(drv.close())


async def test_controllers_are_enabled_top_down_and_probe_sees_them(
    driver: CgroupfsDriver, root_name: str
) -> None:
    assert set((MOUNT / "cgroup.subtree_control").read_text().split()) >= CONTROLLERS
    assert set((MOUNT / root_name / "cgroup.subtree_control").read_text().split()) >= CONTROLLERS
    caps = await driver.probe()
    assert caps.mode is CgroupMode.V2 and caps.needs_subtree_control
    assert caps.controllers >= CONTROLLERS
    assert caps.features["cgroup.freeze"] and caps.can_freeze
    assert caps.features["cgroup.kill"] == (MOUNT / root_name / "cgroup.kill").exists()
    assert Knob.MEMORY_OOM_GROUP not in caps.unsupported and Knob.IO_MAX not in caps.unsupported
    seen = await driver.observe([], {})
    assert seen[()].subtree_control >= CONTROLLERS


async def test_undo_removes_only_what_this_driver_added(root_name: str) -> None:
    other = CgroupfsDriver(DriverOptions(root=f"{root_name}-b"))
    try:
        await other.create(())
        root_before = set((MOUNT / "cgroup.subtree_control").read_text().split())
        await other.enable_controllers((), {"pids", "memory"})
        assert {"pids", "memory"} <= set(
            (MOUNT / f"{root_name}-b" / "cgroup.subtree_control").read_text().split()
        )
        await other.disable_controllers((), {"pids", "memory"})
        assert (MOUNT / f"{root_name}-b" / "cgroup.subtree_control").read_text().split() == []
        assert set((MOUNT / "cgroup.subtree_control").read_text().split()) == root_before
    finally:
        await other.remove(())
        await other.close()


async def test_every_v2_knob_round_trips_through_the_kernel_files(
    driver: CgroupfsDriver, root_name: str
) -> None:
    group = ("knobs",)
    await driver.create(group)
    caps = await driver.probe()
    wanted: dict[str, Value] = {
        "cpu.weight": 200,
        "cpu.max": CpuMax(150_000, 100_000),
        "cpuset.cpus": CpuList((0,)),
        "cpuset.mems": CpuList((0,)),
        "memory.min": 16 * MIB,
        "memory.low": 32 * MIB,
        "memory.high": 400 * MIB,
        "memory.max": 512 * MIB,
        "memory.swap.max": 0,
        "memory.oom.group": True,
        "io.weight": 300,
        "pids.max": 256,
    }
    device = vda()
    if device:
        wanted[f"io.max[{device}]"] = IoMax(rbps=50 * MIB, wbps=20 * MIB, riops=1000, wiops=500)
    wanted = {k: v for k, v in wanted.items() if Knob(k.split("[")[0]) not in caps.unsupported}
    for key, value in wanted.items():
        await driver.set(group, key, value)
    seen = (await driver.observe([group], {group: list(wanted)}))[group]
    assert seen.values == {k: driver.effective_value(k, v) for k, v in wanted.items()}
    files = MOUNT / root_name / "knobs"
    assert driver.target_of(group, "cpu.weight") == str(files / "cpu.weight")
    assert (files / "cpu.weight").read_text().strip() == "200"
    assert (files / "cpu.max").read_text().strip() == "150000 100000"
    assert (files / "memory.max").read_text().strip() == str(512 * MIB)
    assert (files / "memory.oom.group").read_text().strip() == "1"
    assert (files / "pids.max").read_text().strip() == "256"
    if device:
        assert (
            files / "io.max"
        ).read_text().strip() == f"{device} rbps={50 * MIB} wbps={20 * MIB} riops=1000 wiops=500"
        await driver.set(group, f"io.max[{device}]", IoMax())
        assert (files / "io.max").read_text().strip() == ""
    # back to defaults: "max", empty cpuset (= inherit)
    await driver.set(group, "memory.max", None)
    await driver.set(group, "cpuset.cpus", CpuList())
    await driver.set(group, "cpu.max", CpuMax(None, 100_000))
    assert (files / "memory.max").read_text().strip() == "max"
    assert (files / "cpuset.cpus").read_text().strip() == ""
    assert (files / "cpu.max").read_text().strip() == "max 100000"
    with pytest.raises(DriverError) as info:
        await driver.set(group, "cpu.weight", 0)  # out of range: the kernel refuses
    assert info.value.errno == errno.ERANGE or info.value.errno == errno.EINVAL
    assert info.value.target == f"{MOUNT}/{root_name}/knobs/cpu.weight" and info.value.value == "0"


async def test_busy_loop_is_throttled_under_cpu_max(
    driver: CgroupfsDriver, children: Children, root_name: str
) -> None:
    await driver.create(("throttled",))
    await driver.set(("throttled",), "cpu.max", CpuMax(10_000, 100_000))
    proc = children.python(SPIN)
    await driver.move(("throttled",), [proc.pid])
    go(proc)
    await asyncio.sleep(1.5)
    stat = read_keyed(MOUNT / root_name / "throttled" / "cpu.stat")
    proc.kill()
    proc.wait()
    assert stat["nr_throttled"] >= 3 and stat["throttled_usec"] > 0


async def test_fork_is_refused_at_pids_max(
    driver: CgroupfsDriver, children: Children, root_name: str
) -> None:
    await driver.create(("forks",))
    await driver.set(("forks",), "pids.max", 3)
    proc = children.python(after_go(FORK_UNTIL_REFUSED))
    await driver.move(("forks",), [proc.pid])
    go(proc)
    assert proc.stdout is not None
    made = int(await asyncio.to_thread(proc.stdout.readline))
    assert made == 2
    assert read_keyed(MOUNT / root_name / "forks" / "pids.events")["max"] >= 1


async def test_allocation_is_oom_killed_at_memory_max_as_a_group(
    driver: CgroupfsDriver, children: Children, root_name: str
) -> None:
    await driver.create(("oom",))
    await driver.set(("oom",), "memory.max", 32 * MIB)
    await driver.set(("oom",), "memory.swap.max", 0)
    await driver.set(("oom",), "memory.oom.group", True)
    proc = children.python(after_go(ALLOCATE_200M))
    await driver.move(("oom",), [proc.pid])
    go(proc)
    assert await asyncio.to_thread(proc.wait, 120) == -signal.SIGKILL
    events = read_keyed(MOUNT / root_name / "oom" / "memory.events")
    assert events["oom_kill"] >= 1 and events["max"] >= 1


async def test_freeze_waits_for_cgroup_events_and_ancestor_freeze_counts(
    driver: CgroupfsDriver, children: Children
) -> None:
    await driver.create(("ice",))
    await driver.create(("ice", "leaf"))
    proc = children.python(SPIN)
    await driver.move(("ice", "leaf"), [proc.pid])
    go(proc)
    await asyncio.sleep(0.3)
    await driver.freeze(("ice",), timeout=30)
    seen = await driver.observe([("ice",), ("ice", "leaf")], {})
    assert seen[("ice",)].frozen and seen[("ice",)].self_frozen
    assert seen[("ice", "leaf")].frozen and not seen[("ice", "leaf")].self_frozen  # frozen by its parent
    # state=[] (a re-apply that names no `frozen`): settings are read, the flags are not
    light = (await driver.observe([("ice",)], {("ice",): ["pids.max"]}, state=[]))[("ice",)]
    assert light.exists and light.values == {"pids.max": None}
    assert not (light.frozen or light.self_frozen or light.populated)
    full = (await driver.observe([("ice",)], {}, state=[("ice",)]))[("ice",)]
    assert full.frozen and full.self_frozen and full.populated
    before = cpu_ticks(proc.pid)
    await asyncio.sleep(0.5)
    assert cpu_ticks(proc.pid) == before
    await driver.thaw(("ice", "leaf"), timeout=5)  # cannot take effect under a frozen parent: returns
    assert (await driver.observe([("ice", "leaf")], {}))[("ice", "leaf")].frozen
    await driver.thaw(("ice",), timeout=30)
    await asyncio.sleep(0.5)
    assert cpu_ticks(proc.pid) > before
    print(
        "\nv2 freeze confirmation under TCG, 1 busy process: "
        f"{(driver.last_confirmation_seconds or 0) * 1000:.2f} ms"
    )
    proc.kill()
    proc.wait()


async def test_remove_refuses_a_populated_group_and_hostile_paths_are_refused(
    driver: CgroupfsDriver, children: Children, root_name: str
) -> None:
    await driver.create(("occupied",))
    proc = children.python(IDLE)
    await driver.move(("occupied",), [proc.pid])
    with pytest.raises(GroupBusyError, match="holds processes"):
        await driver.remove(("occupied",))
    assert (MOUNT / root_name / "occupied").is_dir() and proc.poll() is None
    assert (await driver.observe([("occupied",)], {}))[("occupied",)].populated
    proc.kill()
    proc.wait()
    for _ in range(100):
        if "populated 0" in (MOUNT / root_name / "occupied" / "cgroup.events").read_text():
            break
        await asyncio.sleep(0.05)
    await driver.remove(("occupied",))
    before = sorted(os.listdir(MOUNT))
    for bad in [("..",), ("a/b",), ("..", "x")]:
        with pytest.raises(UnsafePathError):
            await driver.create(bad)
    assert sorted(os.listdir(MOUNT)) == before


async def test_stats_reads_usage(driver: CgroupfsDriver, root_name: str) -> None:
    usage = await driver.stats([("knobs",), ("missing",)])
    assert set(usage) == {("knobs",)} and usage[("knobs",)].cgroup == f"/{root_name}/knobs"
    assert usage[("knobs",)].limits["cpu.weight"] == 200
