"""The pure cgroup v2 environment (tests/vm/run) enforces what cgctl relies on.

Each test works in its own ``cgctl-test-<hex>`` group (the ``v2_cgroup_root`` fixture) and reads the
kernel's own files back.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel import read_keyed
from tests.procs import ALLOCATE_200M, FORK_UNTIL_REFUSED, Children, wait_until

pytestmark = pytest.mark.cgroupv2

CONTROLLERS = {"cpu", "memory", "io", "pids", "cpuset"}


def child_group(root: Path, name: str) -> Path:
    group = root / name
    group.mkdir()
    return group


def test_controllers_are_enabled_top_down_into_a_test_group(v2_cgroup_root: Path) -> None:
    leaf = child_group(v2_cgroup_root, "leaf")

    assert set((leaf / "cgroup.controllers").read_text().split()) >= CONTROLLERS
    for knob in ("cpu.max", "memory.max", "io.max", "pids.max", "cpuset.cpus"):
        assert (leaf / knob).is_file(), knob


def test_busy_loop_under_cpu_max_is_throttled(v2_cgroup_root: Path, children: Children) -> None:
    group = child_group(v2_cgroup_root, "cpu")
    # 5 % of one CPU: low enough that the loop exhausts it even when the emulator gets little host CPU.
    (group / "cpu.max").write_text("5000 100000")
    children.busy_loop(cgroups=[group])

    wait_until(
        lambda: read_keyed(group / "cpu.stat")["nr_throttled"] >= 5,
        30,
        lambda: (group / "cpu.stat").read_text(),
        interval=0.1,
    )
    start_usage, start = read_keyed(group / "cpu.stat")["usage_usec"], time.monotonic()
    time.sleep(1.0)
    stat = read_keyed(group / "cpu.stat")
    share = (stat["usage_usec"] - start_usage) / ((time.monotonic() - start) * 1e6)

    assert stat["throttled_usec"] > 0
    assert share < 0.25, f"a 5 % quota let the loop use {share:.0%} of a CPU"


def test_pids_max_stops_a_fork(v2_cgroup_root: Path, children: Children) -> None:
    group = child_group(v2_cgroup_root, "pids")
    (group / "pids.max").write_text("3")
    forker = children.python(FORK_UNTIL_REFUSED, cgroups=[group])
    output, _ = forker.communicate(timeout=120)

    assert output.split() == [b"2"]  # the parent is task 1 of 3
    assert read_keyed(group / "pids.events")["max"] >= 1


def test_memory_max_oom_kills_an_allocation_beyond_it(v2_cgroup_root: Path, children: Children) -> None:
    group = child_group(v2_cgroup_root, "memory")
    (group / "memory.max").write_text(str(48 << 20))
    (group / "memory.swap.max").write_text("0")
    hog = children.python(ALLOCATE_200M, cgroups=[group])

    assert hog.wait(timeout=120) == -9
    assert read_keyed(group / "memory.events")["oom_kill"] >= 1


def test_cpuset_pins_a_process_to_the_chosen_cpu(v2_cgroup_root: Path, children: Children) -> None:
    group = child_group(v2_cgroup_root, "cpuset")
    (group / "cpuset.cpus").write_text("0")
    sleeper = children.sleeper(cgroups=[group])

    assert (group / "cpuset.cpus.effective").read_text().strip() == "0"
    assert os.sched_getaffinity(sleeper.pid) == {0}


def scratch_device() -> tuple[str, str]:
    """(path, MAJ:MIN) of the VM's scratch disk."""
    sysfs = Path("/sys/block/vda/dev")
    if not sysfs.exists():
        pytest.skip("no scratch block device /dev/vda (tests/vm/run provides one)")
    return "/dev/vda", sysfs.read_text().strip()


def test_io_max_on_the_scratch_device_reads_back_and_holds_writes(
    v2_cgroup_root: Path, children: Children
) -> None:
    device, majmin = scratch_device()
    group = child_group(v2_cgroup_root, "io")
    (group / "io.max").write_text(f"{majmin} wbps=1048576 riops=1000")

    assert (group / "io.max").read_text().split() == [
        majmin,
        "rbps=max",
        "wbps=1048576",
        "riops=1000",
        "wiops=max",
    ]

    start = time.monotonic()
    writer = children.start(
        ["dd", "if=/dev/zero", f"of={device}", "bs=256K", "count=12", "oflag=direct"],
        cgroups=[group],
        stderr=subprocess.DEVNULL,
    )
    assert writer.wait(timeout=120) == 0
    elapsed = time.monotonic() - start

    assert elapsed > 1.5, f"3 MiB at 1 MiB/s took only {elapsed:.2f} s"
    assert keyed_io_stat(group, majmin)["wbytes"] >= 3 << 20


def keyed_io_stat(group: Path, majmin: str) -> dict[str, int]:
    for line in (group / "io.stat").read_text().splitlines():
        device, *fields = line.split()
        if device == majmin:
            return {key: int(value) for key, value in (field.split("=") for field in fields)}
    raise AssertionError(f"{majmin} missing from io.stat")
