"""usage.read_v1 against the host's real v1 hierarchies: values equal the kernel's files read in the test.

Creates its own ``cgctl-test-<hex>`` groups (the ``v1_cgroup`` fixture), starts the busy-work process in
them (the ``children`` fixture), and both fixtures remove what they made, also when an assertion fails.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.api import CpuMax
from drivers.cgroupfs import usage as u
from exporters.collector import AgentMetrics, Snapshot
from exporters.server import MetricsServer, SnapshotCache
from tests.kernel import between, keyed
from tests.procs import Children, go_until_ready, settled_usage, wait_until

pytestmark = pytest.mark.host

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer", "blkio")

# Spins for 0.4 s of CPU, touches 24 MiB, writes and fsyncs a file, then waits (so values are stable).
WRITE_AND_FSYNC_1M = """
import os, tempfile
with tempfile.TemporaryFile() as f:
    f.write(os.urandom(1 << 20)); f.flush(); os.fsync(f.fileno())
"""
BUSY = settled_usage(0.4, 24, io=WRITE_AND_FSYNC_1M)


@dataclass
class Groups:
    hierarchies: dict[str, str]
    root: str  # "/cgctl-test-<hex>"
    busy: str  # root + "/busy"
    idle: str  # root + "/idle"

    def path(self, ctrl: str, cgroup: str, name: str) -> str:
        return f"{self.hierarchies[ctrl]}{cgroup}/{name}"

    def read(self, ctrl: str, cgroup: str, name: str) -> str:
        with open(self.path(ctrl, cgroup, name)) as handle:
            return handle.read()

    def write(self, ctrl: str, cgroup: str, name: str, value: str) -> None:
        with open(self.path(ctrl, cgroup, name), "w") as handle:
            handle.write(value)


@pytest.fixture
def groups(v1_cgroup: Callable[[str], Path]) -> Groups:
    """``/cgctl-test-<hex>`` with ``busy`` and ``idle`` below it, in each of the CONTROLLERS' hierarchies
    (v1_cgroup removes all of them at teardown, after killing what is left in them)."""
    hierarchies = u.v1_hierarchies()
    if any(ctrl not in hierarchies for ctrl in CONTROLLERS):
        pytest.skip("needs v1 hierarchies for " + ", ".join(CONTROLLERS))
    tops = {ctrl: v1_cgroup(ctrl) for ctrl in CONTROLLERS}
    root = "/" + tops["cpu"].name
    g = Groups({c: hierarchies[c] for c in CONTROLLERS}, root, root + "/busy", root + "/idle")
    for ctrl, top in tops.items():
        assert str(top) == hierarchies[ctrl] + root, "cgctl and the tests see different v1 mounts"
    for directory in {hierarchies[c] + cgroup for c in CONTROLLERS for cgroup in (g.busy, g.idle)}:
        os.mkdir(directory)  # once per mount: controllers can share one (cpu,cpuacct)
    return g


@pytest.fixture
def busy_process(groups: Groups, children: Children) -> subprocess.Popen[bytes]:
    """BUSY, started in ``busy`` in every hierarchy, once it has done its work."""
    proc = children.python(BUSY, cgroups=[Path(groups.hierarchies[c] + groups.busy) for c in CONTROLLERS])
    go_until_ready(proc)
    return proc


def test_v1_usage_equals_the_kernel_files(groups: Groups, busy_process: subprocess.Popen[bytes]) -> None:
    g = groups
    g.write("cpu", g.busy, "cpu.cfs_quota_us", "20000")  # after the busy loop: limits only
    g.write("memory", g.busy, "memory.limit_in_bytes", str(256 << 20))
    g.write("pids", g.busy, "pids.max", "50")
    tck = os.sysconf("SC_CLK_TCK")

    def kernel() -> dict[str, float]:
        acct = keyed(g.read("cpuacct", g.busy, "cpuacct.stat"))
        cpu = keyed(g.read("cpu", g.busy, "cpu.stat"))
        stat = keyed(g.read("memory", g.busy, "memory.stat"))
        return {
            "cpu": int(g.read("cpuacct", g.busy, "cpuacct.usage")) / 1e9,
            "user": acct["user"] / tck,
            "system": acct["system"] / tck,
            "periods": cpu["nr_periods"],
            "throttled_s": cpu["throttled_time"] / 1e9,
            "mem": int(g.read("memory", g.busy, "memory.usage_in_bytes")),
            "anon": stat["total_rss"],
            "inactive_file": stat["total_inactive_file"],
            "peak": int(g.read("memory", g.busy, "memory.max_usage_in_bytes")),
            "failcnt": int(g.read("memory", g.busy, "memory.failcnt")),
            "oom_kill": keyed(g.read("memory", g.busy, "memory.oom_control"))["oom_kill"],
            "pids": int(g.read("pids", g.busy, "pids.current")),
        }

    before = kernel()
    result = u.read_v1(g.hierarchies, [g.busy, g.idle, g.root + "/absent"], limits=True)
    after = kernel()

    assert sorted(result) == [g.busy, g.idle]
    busy = result[g.busy]
    assert busy.cgroup == g.busy
    assert between(busy.cpu_usage_seconds, before["cpu"], after["cpu"])
    assert busy.cpu_usage_seconds is not None and busy.cpu_usage_seconds >= 0.3  # ns → s, not ns
    assert between(busy.cpu_user_seconds, before["user"], after["user"])
    assert between(busy.cpu_system_seconds, before["system"], after["system"])
    assert between(busy.cpu_periods, before["periods"], after["periods"])
    assert between(busy.cpu_throttled_seconds, before["throttled_s"], after["throttled_s"])
    assert between(busy.memory_usage_bytes, before["mem"], after["mem"])
    assert busy.memory_usage_bytes is not None and busy.memory_usage_bytes >= 24 << 20
    assert between(busy.memory_stat_bytes["anon"], before["anon"], after["anon"])
    inactive = busy.memory_stat_bytes["inactive_file"]
    assert between(inactive, before["inactive_file"], after["inactive_file"])
    assert busy.memory_working_set_bytes == max(busy.memory_usage_bytes - inactive, 0)
    assert between(busy.memory_peak_bytes, before["peak"], after["peak"])
    assert busy.memory_events == {"max": int(after["failcnt"]), "oom_kill": int(after["oom_kill"])}
    assert busy.pids_current == after["pids"] == 1
    assert busy.pids_max == 50.0
    assert busy.frozen is False
    assert busy.limits["cpu.max"] == CpuMax(20000, 100000)
    assert busy.limits["memory.max"] == 256 << 20
    assert busy.limits["pids.max"] == 50

    idle = result[g.idle]
    assert idle.cpu_usage_seconds == 0.0
    assert idle.pids_current == 0
    assert idle.pids_max == math.inf
    assert idle.limits["memory.max"] is None
    assert idle.limits["pids.max"] is None
    assert idle.memory_peak_bytes == int(g.read("memory", g.idle, "memory.max_usage_in_bytes"))


def test_v1_frozen_follows_freezer_state(groups: Groups, busy_process: subprocess.Popen[bytes]) -> None:
    g = groups
    g.write("freezer", g.busy, "freezer.state", "FROZEN")
    try:
        wait_until(
            lambda: g.read("freezer", g.busy, "freezer.state").strip() == "FROZEN",
            5,
            "kernel did not confirm the freeze",
            interval=0.01,
        )
        assert u.read_v1(g.hierarchies, [g.busy])[g.busy].frozen is True
    finally:
        g.write("freezer", g.busy, "freezer.state", "THAWED")
    assert u.read_v1(g.hierarchies, [g.busy])[g.busy].frozen is False


def test_v1_removed_group_is_left_out(groups: Groups) -> None:
    g = groups
    gone = g.root + "/gone"
    for ctrl in CONTROLLERS:
        os.mkdir(g.hierarchies[ctrl] + gone)
    assert gone in u.read_v1(g.hierarchies, [gone])
    for ctrl in CONTROLLERS:
        os.rmdir(g.hierarchies[ctrl] + gone)
    assert u.read_v1(g.hierarchies, [gone]) == {}


def test_discover_finds_the_test_groups_read_only(groups: Groups) -> None:
    root = groups.hierarchies["memory"]
    assert u.discover(root, [groups.root]) == [groups.root, groups.busy, groups.idle]
    assert u.discover(root, [groups.root], exclude=["*/idle"], max_depth=1) == [groups.root, groups.busy]


def test_v1_scrape_over_http_reports_the_kernel_values(
    groups: Groups, busy_process: subprocess.Popen[bytes]
) -> None:
    """End to end: batched reads off the loop → collector → HTTP → parsed exposition = kernel files."""
    g = groups

    async def collect() -> Snapshot:
        found = await asyncio.to_thread(u.read_v1, g.hierarchies, [g.busy, g.idle], limits=True)
        return Snapshot(usage=found, names={g.busy: "busy"})

    async def scrape() -> str:
        agent = AgentMetrics("test", "cgroupfs", "v1")
        server = MetricsServer(SnapshotCache(collect, agent), agent)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = await asyncio.wait_for(reader.read(), 30)
            writer.close()
        finally:
            await server.close()
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        return body.decode()

    cpu_before = int(g.read("cpuacct", g.busy, "cpuacct.usage")) / 1e9
    mem_before = int(g.read("memory", g.busy, "memory.usage_in_bytes"))
    text = asyncio.run(scrape())
    cpu_after = int(g.read("cpuacct", g.busy, "cpuacct.usage")) / 1e9
    mem_after = int(g.read("memory", g.busy, "memory.usage_in_bytes"))

    samples = {
        (s.name, s.labels.get("cgroup"), s.labels.get("group")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert between(samples[("cgroup_cpu_usage_seconds_total", g.busy, "busy")], cpu_before, cpu_after)
    assert between(samples[("cgroup_memory_usage_bytes", g.busy, "busy")], mem_before, mem_after)
    assert samples[("cgroup_pids_current", g.busy, "busy")] == 1
    assert samples[("cgroup_pids_max", g.idle, "")] == math.inf
    assert samples[("cgroup_frozen", g.busy, "busy")] == 0
    assert samples[("cgctl_scrape_cgroups", None, None)] == 2
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
        assert result.returncode == 0, result.stdout + result.stderr
