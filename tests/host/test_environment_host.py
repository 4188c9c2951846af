"""The host kernel (cgroup v1 or hybrid here) enforces what cgctl relies on, in our own v1 groups.

Each test creates ``cgctl-test-<hex>`` groups in the v1 hierarchies (the ``v1_cgroup`` fixture), moves
only processes it started into them, and reads the kernel's own files back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Children

pytestmark = pytest.mark.host

MakeGroup = Callable[[str], Path]


def keyed(path: Path) -> dict[str, int]:
    return {key: int(value) for key, value in (line.split() for line in path.read_text().splitlines())}


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def test_busy_loop_under_cfs_quota_is_throttled(v1_cgroup: MakeGroup, children: Children) -> None:
    group = v1_cgroup("cpu")
    (group / "cpu.cfs_period_us").write_text("100000")
    # 5 % of one CPU: low enough that the loop exhausts it even on a machine busy with other work.
    (group / "cpu.cfs_quota_us").write_text("5000")
    loop = children.busy_loop(cgroups=[group])

    deadline = time.monotonic() + 20
    while keyed(group / "cpu.stat")["nr_throttled"] < 5:
        assert time.monotonic() < deadline, (group / "cpu.stat").read_text()
        time.sleep(0.05)
    start_ticks, start = cpu_ticks(loop.pid), time.monotonic()
    time.sleep(1.0)
    share = (cpu_ticks(loop.pid) - start_ticks) / 100 / (time.monotonic() - start)

    assert keyed(group / "cpu.stat")["throttled_time"] > 0
    assert share < 0.25, f"a 5 % quota let the loop use {share:.0%} of a CPU"


FORK_UNTIL_REFUSED = """
import os, time
forked = 0
for _ in range(10):
    try:
        pid = os.fork()
    except BlockingIOError:
        break
    if pid == 0:
        os.close(1)  # so the test sees end-of-output as soon as the parent is done
        time.sleep(60)
        os._exit(0)
    forked += 1
print(forked, flush=True)
"""


def test_pids_max_stops_a_fork(v1_cgroup: MakeGroup, children: Children) -> None:
    group = v1_cgroup("pids")
    (group / "pids.max").write_text("5")
    forker = children.start(
        [sys.executable, "-c", FORK_UNTIL_REFUSED], cgroups=[group], stdout=subprocess.PIPE
    )
    output, _ = forker.communicate(timeout=60)

    assert output.split() == [b"4"]  # the parent is task 1 of 5
    assert keyed(group / "pids.events")["max"] >= 1


def wait_for_state(group: Path, state: str) -> None:
    deadline = time.monotonic() + 10
    while (group / "freezer.state").read_text().strip() != state:
        assert time.monotonic() < deadline, f"freezer never reached {state}"
        time.sleep(0.02)


def test_freezer_stops_work_and_thaw_resumes_it(v1_cgroup: MakeGroup, children: Children) -> None:
    group = v1_cgroup("freezer")
    loop = children.busy_loop(cgroups=[group])
    time.sleep(0.2)

    (group / "freezer.state").write_text("FROZEN")
    wait_for_state(group, "FROZEN")
    frozen_ticks = cpu_ticks(loop.pid)
    time.sleep(0.5)
    assert cpu_ticks(loop.pid) == frozen_ticks

    (group / "freezer.state").write_text("THAWED")
    wait_for_state(group, "THAWED")
    deadline = time.monotonic() + 5
    while cpu_ticks(loop.pid) == frozen_ticks:
        assert time.monotonic() < deadline, "the thawed loop never ran again"
        time.sleep(0.05)
