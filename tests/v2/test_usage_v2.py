"""usage.read_v2 against a real pure-v2 hierarchy (the VM): values equal the kernel's files read in the test.

Run: ``tests/vm/run -- .venv/bin/python -m pytest -p no:cacheprovider -m cgroupv2 tests/v2/test_usage_v2.py``
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.api import CpuMax
from drivers.cgroupfs import usage as u
from exporters.collector import AgentMetrics, Snapshot, build_families
from exporters.exposition import render
from exporters.server import SnapshotCache
from tests.kernel import between, keyed
from tests.procs import Children, go_until_ready, settled_usage, wait_until

pytestmark = pytest.mark.cgroupv2

CONTROLLERS = ("cpu", "memory", "io", "pids")

# Python under TCG is slow: a short spin, 16 MiB touched, 1 MiB read from the scratch disk (if any).
READ_1M_FROM_VDA = """
import os
if os.path.exists("/dev/vda"):
    fd = os.open("/dev/vda", os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.read(fd, 1 << 20)
    os.close(fd)
"""
BUSY = settled_usage(0.15, 16, io=READ_1M_FROM_VDA)


@dataclass
class Groups:
    mount: str
    root: str
    busy: str
    idle: str

    def read(self, cgroup: str, name: str) -> str:
        with open(f"{self.mount}{cgroup}/{name}") as handle:
            return handle.read()

    def write(self, cgroup: str, name: str, value: str) -> None:
        with open(f"{self.mount}{cgroup}/{name}", "w") as handle:
            handle.write(value)


def _wait_events(g: Groups, cgroup: str, key: str, value: int) -> None:
    wait_until(
        lambda: keyed(g.read(cgroup, "cgroup.events"))[key] == value,
        10,
        f"{cgroup}: {key} never became {value}",
        interval=0.01,
    )


@pytest.fixture
def groups(v2_cgroup_root: Path) -> Groups:
    """``/cgctl-test-<hex>`` (v2_cgroup_root: removed at teardown with all below it, after cgroup.kill)
    with ``busy`` and ``idle`` below it, both with the CONTROLLERS."""
    enabled = (v2_cgroup_root / "cgroup.subtree_control").read_text().split()
    if any(c not in enabled for c in CONTROLLERS):
        pytest.skip("needs a v2 hierarchy with " + ", ".join(CONTROLLERS))
    root = "/" + v2_cgroup_root.name
    g = Groups(str(v2_cgroup_root.parent), root, root + "/busy", root + "/idle")
    for cgroup in (g.busy, g.idle):
        os.mkdir(g.mount + cgroup)
    return g


@pytest.fixture
def busy_process(groups: Groups, children: Children) -> subprocess.Popen[bytes]:
    """BUSY, started in ``busy``, once it has done its work."""
    proc = children.python(BUSY, cgroups=[Path(groups.mount + groups.busy)])
    go_until_ready(proc)
    return proc


def _psi_total(text: str, kind: str) -> float:
    for line in text.splitlines():
        if line.startswith(kind):
            return int(line.rsplit("total=", 1)[1]) / 1e6
    raise AssertionError(f"no {kind} line")


def test_v2_usage_equals_the_kernel_files(groups: Groups, busy_process: subprocess.Popen[bytes]) -> None:
    g = groups
    g.write(g.busy, "cpu.max", "20000 100000")
    g.write(g.busy, "memory.max", str(256 << 20))
    g.write(g.busy, "pids.max", "50")

    def kernel() -> dict[str, float]:
        cpu = keyed(g.read(g.busy, "cpu.stat"))
        stat = keyed(g.read(g.busy, "memory.stat"))
        return {
            "cpu": cpu["usage_usec"] / 1e6,
            "user": cpu["user_usec"] / 1e6,
            "system": cpu["system_usec"] / 1e6,
            "periods": cpu["nr_periods"],
            "mem": int(g.read(g.busy, "memory.current")),
            "anon": stat["anon"],
            "inactive_file": stat["inactive_file"],
            "cpu_some": _psi_total(g.read(g.busy, "cpu.pressure"), "some"),
            "mem_full": _psi_total(g.read(g.busy, "memory.pressure"), "full"),
        }

    before = kernel()
    result = u.read_v2(g.mount, [g.busy, g.idle, g.root + "/absent"], limits=True)
    after = kernel()

    assert sorted(result) == [g.busy, g.idle]
    busy = result[g.busy]
    assert between(busy.cpu_usage_seconds, before["cpu"], after["cpu"])
    assert busy.cpu_usage_seconds is not None and busy.cpu_usage_seconds >= 0.1  # µs → s
    assert between(busy.cpu_user_seconds, before["user"], after["user"])
    assert between(busy.cpu_system_seconds, before["system"], after["system"])
    assert between(busy.cpu_periods, before["periods"], after["periods"])
    assert between(busy.memory_usage_bytes, before["mem"], after["mem"])
    assert busy.memory_usage_bytes is not None and busy.memory_usage_bytes >= 16 << 20
    assert between(busy.memory_stat_bytes["anon"], before["anon"], after["anon"])
    inactive = busy.memory_stat_bytes["inactive_file"]
    assert between(inactive, before["inactive_file"], after["inactive_file"])
    assert busy.memory_working_set_bytes == max(busy.memory_usage_bytes - inactive, 0)
    assert busy.memory_events == keyed(g.read(g.busy, "memory.events"))
    if os.path.exists(f"{g.mount}{g.busy}/memory.peak"):
        assert busy.memory_peak_bytes is not None and busy.memory_peak_bytes >= busy.memory_usage_bytes
    else:
        assert busy.memory_peak_bytes is None  # never a fake 0
    if os.path.exists(f"{g.mount}{g.busy}/memory.swap.current"):
        assert busy.memory_swap_usage_bytes == int(g.read(g.busy, "memory.swap.current"))
    io_stat = g.read(g.busy, "io.stat")
    for line in io_stat.splitlines():
        device, *fields = line.split()
        values = dict(f.split("=") for f in fields)
        assert busy.io[device]["rbytes"] == int(values["rbytes"])
        assert busy.io[device]["wios"] == int(values["wios"])
    if os.path.exists("/dev/vda"):
        assert sum(d["rbytes"] for d in busy.io.values()) >= 1 << 20
    assert busy.pids_current == 1
    assert busy.pids_max == 50.0
    assert between(busy.pressure_some_seconds["cpu"], before["cpu_some"], after["cpu_some"])
    assert between(busy.pressure_full_seconds["memory"], before["mem_full"], after["mem_full"])
    assert (busy.frozen, busy.populated) == (False, True)
    assert busy.limits["cpu.max"] == CpuMax(20000, 100000)
    assert busy.limits["memory.max"] == 256 << 20
    assert busy.limits["pids.max"] == 50
    assert busy.limits["cpu.weight"] == int(g.read(g.busy, "cpu.weight"))

    idle = result[g.idle]
    assert idle.cpu_usage_seconds == 0.0
    assert (idle.pids_current, idle.pids_max) == (0, math.inf)
    assert idle.populated is False
    assert idle.limits["memory.max"] is None


def test_v2_frozen_follows_cgroup_events(groups: Groups, busy_process: subprocess.Popen[bytes]) -> None:
    g = groups
    g.write(g.busy, "cgroup.freeze", "1")
    try:
        _wait_events(g, g.busy, "frozen", 1)
        assert u.read_v2(g.mount, [g.busy])[g.busy].frozen is True
    finally:
        g.write(g.busy, "cgroup.freeze", "0")
    _wait_events(g, g.busy, "frozen", 0)
    assert u.read_v2(g.mount, [g.busy])[g.busy].frozen is False


def test_v2_root_group_has_no_memory_files_and_no_fake_values(groups: Groups) -> None:
    root = u.read_v2(groups.mount, ["/"])["/"]
    assert root.cpu_usage_seconds is not None
    assert root.memory_usage_bytes is None  # the root has no memory.current
    assert root.frozen is None  # nor cgroup.events
    assert u.discover(groups.mount, [groups.root]) == [groups.root, groups.busy, groups.idle]


def test_v2_exposition_reports_the_kernel_values(
    groups: Groups, busy_process: subprocess.Popen[bytes]
) -> None:
    """Batched reads off the loop → snapshot cache → families → exposition text = kernel files. (The VM has
    no loopback interface, so the HTTP leg is covered by the host and unit tests.)"""
    g = groups

    async def collect() -> Snapshot:
        found = await asyncio.to_thread(u.read_v2, g.mount, [g.busy, g.idle], limits=True)
        return Snapshot(usage=found, names={g.busy: "busy"})

    async def scrape() -> str:
        agent = AgentMetrics("test", "cgroupfs", "v2")
        snapshot = await SnapshotCache(collect, agent).get()
        return render(build_families(snapshot, agent.state()), openmetrics=False).decode()

    cpu_before = keyed(g.read(g.busy, "cpu.stat"))["usage_usec"] / 1e6
    some_before = _psi_total(g.read(g.busy, "memory.pressure"), "some")
    text = asyncio.run(scrape())
    cpu_after = keyed(g.read(g.busy, "cpu.stat"))["usage_usec"] / 1e6
    some_after = _psi_total(g.read(g.busy, "memory.pressure"), "some")

    samples = {
        (s.name, s.labels.get("cgroup"), s.labels.get("resource") or s.labels.get("kind")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert between(samples[("cgroup_cpu_usage_seconds_total", g.busy, None)], cpu_before, cpu_after)
    waiting = samples[("cgroup_pressure_waiting_seconds_total", g.busy, "memory")]
    assert between(waiting, some_before, some_after)
    assert samples[("cgroup_pids_max", g.idle, None)] == math.inf
    assert samples[("cgroup_limit_memory_bytes", g.idle, "max")] == math.inf
    assert samples[("cgroup_frozen", g.busy, None)] == 0
    has_peak = os.path.exists(f"{g.mount}{g.busy}/memory.peak")
    assert (("cgroup_memory_peak_bytes", g.busy, None) in samples) == has_peak
