"""usage.read_v1 against the host's real v1 hierarchies: values equal the kernel's files read in the test.

Creates its own ``cgctl-test-<hex>`` groups, moves only the busy-work process it started, and removes
everything in a finalizer (also when an assertion fails).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.api import CpuMax
from drivers.cgroupfs import usage as u
from exporters.collector import AgentMetrics, Snapshot
from exporters.server import MetricsServer, SnapshotCache

pytestmark = pytest.mark.host

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer", "blkio")

# Spins for 0.4 s of CPU, touches 24 MiB, writes and fsyncs a file, then waits (so values are stable).
BUSY = """
import os, sys, tempfile, time
sys.stdin.readline()
end = time.process_time() + 0.4
while time.process_time() < end:
    pass
block = bytearray(24 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
with tempfile.TemporaryFile() as f:
    f.write(os.urandom(1 << 20)); f.flush(); os.fsync(f.fileno())
print("ready", flush=True)
sys.stdin.readline()
"""


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
def groups() -> Iterator[Groups]:
    hierarchies = u.v1_hierarchies()
    if os.geteuid() != 0 or any(ctrl not in hierarchies for ctrl in CONTROLLERS):
        pytest.skip("needs root and v1 hierarchies for " + ", ".join(CONTROLLERS))
    root = f"/cgctl-test-{secrets.token_hex(4)}"
    g = Groups({c: hierarchies[c] for c in CONTROLLERS}, root, root + "/busy", root + "/idle")
    created: list[str] = []
    try:
        for ctrl in CONTROLLERS:
            for cgroup in (g.root, g.busy, g.idle):
                os.mkdir(g.hierarchies[ctrl] + cgroup)
                created.append(g.hierarchies[ctrl] + cgroup)
        yield g
    finally:
        for directory in reversed(created):
            for _ in range(50):  # a just-killed task can keep the group busy for a moment
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


@pytest.fixture
def busy_process(groups: Groups) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BUSY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        for ctrl in CONTROLLERS:
            groups.write(ctrl, groups.busy, "cgroup.procs", str(proc.pid))
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _keyed(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}


def _between(value: float | None, first: float, second: float) -> bool:
    return value is not None and min(first, second) <= value <= max(first, second)


def test_v1_usage_equals_the_kernel_files(groups: Groups, busy_process: subprocess.Popen[str]) -> None:
    g = groups
    g.write("cpu", g.busy, "cpu.cfs_quota_us", "20000")  # after the busy loop: limits only
    g.write("memory", g.busy, "memory.limit_in_bytes", str(256 << 20))
    g.write("pids", g.busy, "pids.max", "50")
    tck = os.sysconf("SC_CLK_TCK")

    def kernel() -> dict[str, float]:
        acct = _keyed(g.read("cpuacct", g.busy, "cpuacct.stat"))
        cpu = _keyed(g.read("cpu", g.busy, "cpu.stat"))
        stat = _keyed(g.read("memory", g.busy, "memory.stat"))
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
            "oom_kill": _keyed(g.read("memory", g.busy, "memory.oom_control"))["oom_kill"],
            "pids": int(g.read("pids", g.busy, "pids.current")),
        }

    before = kernel()
    result = u.read_v1(g.hierarchies, [g.busy, g.idle, g.root + "/absent"], limits=True)
    after = kernel()

    assert sorted(result) == [g.busy, g.idle]
    busy = result[g.busy]
    assert busy.cgroup == g.busy
    assert _between(busy.cpu_usage_seconds, before["cpu"], after["cpu"])
    assert busy.cpu_usage_seconds is not None and busy.cpu_usage_seconds >= 0.3  # ns → s, not ns
    assert _between(busy.cpu_user_seconds, before["user"], after["user"])
    assert _between(busy.cpu_system_seconds, before["system"], after["system"])
    assert _between(busy.cpu_periods, before["periods"], after["periods"])
    assert _between(busy.cpu_throttled_seconds, before["throttled_s"], after["throttled_s"])
    assert _between(busy.memory_usage_bytes, before["mem"], after["mem"])
    assert busy.memory_usage_bytes is not None and busy.memory_usage_bytes >= 24 << 20
    assert _between(busy.memory_stat_bytes["anon"], before["anon"], after["anon"])
    inactive = busy.memory_stat_bytes["inactive_file"]
    assert _between(inactive, before["inactive_file"], after["inactive_file"])
    assert busy.memory_working_set_bytes == max(busy.memory_usage_bytes - inactive, 0)
    assert _between(busy.memory_peak_bytes, before["peak"], after["peak"])
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


def test_v1_frozen_follows_freezer_state(groups: Groups, busy_process: subprocess.Popen[str]) -> None:
    g = groups
    g.write("freezer", g.busy, "freezer.state", "FROZEN")
    try:
        deadline = time.monotonic() + 5
        while g.read("freezer", g.busy, "freezer.state").strip() != "FROZEN":
            assert time.monotonic() < deadline, "kernel did not confirm the freeze"
            time.sleep(0.01)
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
    groups: Groups, busy_process: subprocess.Popen[str]
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
    assert _between(samples[("cgroup_cpu_usage_seconds_total", g.busy, "busy")], cpu_before, cpu_after)
    assert _between(samples[("cgroup_memory_usage_bytes", g.busy, "busy")], mem_before, mem_after)
    assert samples[("cgroup_pids_current", g.busy, "busy")] == 1
    assert samples[("cgroup_pids_max", g.idle, "")] == math.inf
    assert samples[("cgroup_frozen", g.busy, "busy")] == 0
    assert samples[("cgctl_scrape_cgroups", None, None)] == 2
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
        assert result.returncode == 0, result.stdout + result.stderr
