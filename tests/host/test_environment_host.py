"""The host kernel (cgroup v1 or hybrid here) enforces what cgctl relies on, in our own v1 groups.

Each test creates ``cgctl-test-<hex>`` groups in the v1 hierarchies (the ``v1_cgroup`` fixture), moves
only processes it started into them, and reads the kernel's own files back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kernel import read, read_keyed
from tests.procs import FORK_UNTIL_REFUSED, Children, cpu_ticks, wait_until

pytestmark = pytest.mark.host

MakeGroup = Callable[[str], Path]


def test_busy_loop_under_cfs_quota_is_throttled(v1_cgroup: MakeGroup, children: Children) -> None:
    group = v1_cgroup("cpu")
    (group / "cpu.cfs_period_us").write_text("100000")
    # 5 % of one CPU: low enough that the loop exhausts it even on a machine busy with other work.
    (group / "cpu.cfs_quota_us").write_text("5000")
    loop = children.busy_loop(cgroups=[group])

    wait_until(
        lambda: read_keyed(group / "cpu.stat")["nr_throttled"] >= 5,
        20,
        lambda: (group / "cpu.stat").read_text(),
        interval=0.05,
    )
    start_ticks, start = cpu_ticks(loop.pid), time.monotonic()
    time.sleep(1.0)
    share = (cpu_ticks(loop.pid) - start_ticks) / 100 / (time.monotonic() - start)

    assert read_keyed(group / "cpu.stat")["throttled_time"] > 0
    assert share < 0.25, f"a 5 % quota let the loop use {share:.0%} of a CPU"


def test_pids_max_stops_a_fork(v1_cgroup: MakeGroup, children: Children) -> None:
    group = v1_cgroup("pids")
    (group / "pids.max").write_text("5")
    forker = children.python(FORK_UNTIL_REFUSED, cgroups=[group])
    output, _ = forker.communicate(timeout=60)

    assert output.split() == [b"4"]  # the parent is task 1 of 5
    assert read_keyed(group / "pids.events")["max"] >= 1


def wait_for_state(group: Path, state: str) -> None:
    wait_until(lambda: read(group / "freezer.state") == state, 10, f"freezer never reached {state}")


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
    wait_until(
        lambda: cpu_ticks(loop.pid) != frozen_ticks, 5, "the thawed loop never ran again", interval=0.05
    )
