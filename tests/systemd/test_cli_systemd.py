"""The cgctl command through the systemd driver, against a real systemd as PID 1 (the systemd VM), and
the parity of the two drivers: one policy applied through cgroupfs and through systemd gives the same
kernel files, knob by knob, with systemd's documented CPU-quota rounding as the only allowed difference.

The cgroupfs half of the parity test writes inside this test's own delegated cgroup (the harness runs
the command as a ``Delegate=yes`` service): the test first moves itself into a leaf
(``…/supervisor``, the no-internal-processes rule), exactly what an operator does to run the cgroupfs
driver on a systemd host without two writers.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.api import CpuMax
from drivers.systemd import SystemdDriver, naming, properties
from tests.cgctl_cli import run_cgctl

USABLE, WHY = SystemdDriver.usable()
pytestmark = [pytest.mark.systemd, pytest.mark.skipif(not USABLE, reason=WHY)]

MOUNT = "/sys/fs/cgroup"


@dataclass
class Env:
    root: str
    tmp: Path
    units: list[str] = field(default_factory=list)
    pids: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def policy(
        self, body: str, *, driver: str = "systemd", root: str | None = None, name: str = "p.yaml"
    ) -> Path:
        path = self.tmp / name
        path.write_text(f"version: 1\ndriver: {driver}\nroot: {root or self.root}\n{body}")
        return path

    def cgctl(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        return run_cgctl(self.tmp, *args, timeout=300, check=check)

    def unit(self, *path: str) -> str:
        return naming.slice_name(self.root, tuple(path))

    def cgroup(self, *path: str) -> str:
        unit = self.unit(*path)
        out = subprocess.run(
            ["systemctl", "show", "-p", "ControlGroup", "--value", unit],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert out, f"{unit} has no cgroup (not active?)"
        return MOUNT + out


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(root=f"cgctl-test-{uuid.uuid4().hex[:8]}", tmp=tmp_path)
    try:
        yield e
    finally:
        for proc in e.pids:
            proc.kill()
            proc.wait()
        root_unit = e.unit()
        subprocess.run(["systemctl", "thaw", root_unit], capture_output=True)
        subprocess.run(["systemctl", "stop", root_unit], capture_output=True)
        for unit in e.units:
            subprocess.run(["systemctl", "unmask", "--runtime", unit], capture_output=True)


def read(directory: str, name: str) -> str:
    return Path(directory, name).read_text().strip()


def frozen(directory: str) -> str:
    return dict(line.split() for line in read(directory, "cgroup.events").splitlines())["frozen"]


BASIC = """groups:
  web:
    cpu: {weight: 200, max: 0.5}
    memory: {max: 64M, high: 48M}
    pids: {max: 50}
    groups:
      worker: {pids: {max: 10}}
  batch:
    cpu: {weight: 50}
"""


def test_apply_diff_reapply_and_prune_through_systemd(env: Env) -> None:
    policy = env.policy(BASIC)
    plan = env.cgctl("apply", str(policy), "--dry-run").stdout
    # The plan speaks systemd: units and properties, old -> new.
    assert f"set    {env.unit('web')}: CPUWeight=100 -> CPUWeight=200" in plan
    assert f"set    {env.unit('web')}: MemoryMax=infinity -> MemoryMax=67108864" in plan
    env.cgctl("apply", str(policy))
    web = env.cgroup("web")
    assert read(web, "cpu.weight") == "200"
    assert read(web, "cpu.max") == "50000 100000"
    assert read(web, "memory.max") == str(64 << 20) and read(web, "memory.high") == str(48 << 20)
    assert read(web, "pids.max") == "50"
    assert read(env.cgroup("web", "worker"), "pids.max") == "10"
    env.cgctl("diff", str(policy), check=0)
    assert "nothing to do" in env.cgctl("apply", str(policy)).stdout
    smaller = env.policy("groups:\n  web:\n    pids: {max: 50}\n", name="small.yaml")
    out = env.cgctl("apply", str(smaller), "--prune").stdout
    assert "remove batch" in out and "remove web/worker" in out
    state = subprocess.run(["systemctl", "is-active", env.unit("batch")], capture_output=True, text=True)
    assert state.stdout.strip() != "active"
    # A knob cgctl set before and the policy dropped goes back to systemd's default.
    assert read(env.cgroup("web"), "cpu.weight") == "100"


def test_freeze_thaw_exec_and_move_through_systemd(env: Env) -> None:
    env.cgctl("apply", str(env.policy(BASIC)))
    target = ("--root", env.root, "--driver", "systemd")
    out = env.cgctl("exec", "batch", *target, "--", "cat", "/proc/self/cgroup").stdout
    assert f"/{env.unit('batch')}/" in out and ".scope" in out
    loop = subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
    env.pids.append(loop)
    env.cgctl("move", "web/worker", str(loop.pid), *target)
    assert env.unit("web", "worker") in Path(f"/proc/{loop.pid}/cgroup").read_text()
    env.cgctl("freeze", "web", *target)
    assert frozen(env.cgroup("web", "worker")) == "1"
    ticks = Path(f"/proc/{loop.pid}/stat").read_text().rsplit(")", 1)[1].split()[11]
    time.sleep(0.5)
    assert Path(f"/proc/{loop.pid}/stat").read_text().rsplit(")", 1)[1].split()[11] == ticks
    env.cgctl("thaw", "web", *target)
    assert frozen(env.cgroup("web", "worker")) == "0"


def test_auto_picks_systemd_here_and_check_says_why(env: Env) -> None:
    report = env.cgctl("check").stdout
    assert "Driver:           systemd" in report
    policy = env.policy(BASIC, driver="auto")
    assert f"{env.unit('web')}" in env.cgctl("apply", str(policy), "--dry-run").stdout


def test_a_unit_systemd_refuses_mid_apply_leaves_every_unit_as_it_was(env: Env) -> None:
    env.cgctl("apply", str(env.policy("groups:\n  a: {cpu: {weight: 100}, pids: {max: 20}}\n")))
    a = env.cgroup("a")
    before = (read(a, "cpu.weight"), read(a, "pids.max"))
    blocked = env.unit("znew")
    env.units.append(blocked)
    subprocess.run(["systemctl", "mask", "--runtime", blocked], check=True, capture_output=True)
    bad = env.policy(
        "groups:\n  a: {cpu: {weight: 300}, pids: {max: 5}}\n  znew: {pids: {max: 3}}\n", name="bad.yaml"
    )
    proc = env.cgctl("apply", str(bad), check=1)
    assert blocked in proc.stderr and "the tree is as it was before" in proc.stderr
    assert (read(a, "cpu.weight"), read(a, "pids.max")) == before
    props = subprocess.run(
        ["systemctl", "show", "-p", "CPUWeight", "-p", "TasksMax", "--value", env.unit("a")],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert props == ["100", "20"]


def test_busy_loop_in_a_slice_with_cpu_max_is_throttled(env: Env) -> None:
    env.cgctl("apply", str(env.policy("groups:\n  hot: {cpu: {max: 0.1}}\n")))
    loop = subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
    env.pids.append(loop)
    env.cgctl("move", "hot", str(loop.pid), "--root", env.root, "--driver", "systemd")
    hot = env.cgroup("hot")

    def stat() -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in read(hot, "cpu.stat").splitlines())}

    start = stat()
    time.sleep(2)
    end = stat()
    assert end["nr_throttled"] - start["nr_throttled"] >= 5
    assert end["usage_usec"] - start["usage_usec"] < 600_000  # 0.1 CPU for 2 s ≈ 0.2 s, not 2 s


# ---------------------------------------------------------------------------------------------------
# Parity: the same policy through cgroupfs and through systemd, compared in the kernel's files
# ---------------------------------------------------------------------------------------------------

PARITY = """groups:
  web:
    cpu: {weight: 250, max: 0.5, cpus: "0", mems: "0"}
    memory: {min: 8M, low: 16M, high: 96M, max: 128M, swap_max: 0}
    io:
      weight: 300
      max: [{device: /dev/vda, rbps: 2M, wiops: 120}]
    pids: {max: 7}
    groups:
      worker:
        cpu: {weight: 50, max: 0.12345}
        frozen: true
"""

# The knobs the policy names, per group, as kernel files: the table is the test. (A file the policy does
# not name may differ legitimately: cgroupfs enables only the controllers a group needs, systemd more.)
PARITY_FILES = [
    *(
        (("web",), name)
        for name in (
            "cpu.weight",
            "cpu.max",
            "cpuset.cpus",
            "cpuset.mems",
            "memory.min",
            "memory.low",
            "memory.high",
            "memory.max",
            "memory.swap.max",
            "io.weight",
            "io.max",
            "pids.max",
        )
    ),
    (("web", "worker"), "cpu.weight"),
    (("web", "worker"), "cpu.max"),
]


def _island() -> str:
    """The delegated cgroup this test may manage with the cgroupfs driver (relative to the mount).
    The harness's service is ``Delegate=yes`` and runs its command in a leaf below it; if this process
    still sits in the service's own cgroup, it moves itself into a leaf first (no internal processes)."""
    own = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
    if own.rsplit("/", 1)[-1].endswith(".service"):
        os.makedirs(f"{MOUNT}{own}/supervisor", exist_ok=True)
        Path(f"{MOUNT}{own}/supervisor/cgroup.procs").write_text(str(os.getpid()))
        return own.lstrip("/")
    return own.rsplit("/", 1)[0].lstrip("/")


def test_cgroupfs_refuses_to_write_a_systemd_owned_cgroup(env: Env) -> None:
    policy = env.policy(
        "groups:\n  x: {pids: {max: 5}}\n", driver="cgroupfs", root="system.slice/cgctl-intruder"
    )
    proc = env.cgctl("apply", str(policy), check=None)
    assert proc.returncode != 0 and "driver: systemd" in proc.stderr
    assert not os.path.exists(f"{MOUNT}/system.slice/cgctl-intruder")


def test_same_policy_same_kernel_files_through_cgroupfs_and_systemd(env: Env) -> None:
    if not os.path.exists("/sys/block/vda"):
        pytest.skip("the VM's scratch disk /dev/vda is missing")
    delegated = _island()
    fs_root = f"{delegated}/parity-{uuid.uuid4().hex[:6]}"
    fs_policy = env.policy(PARITY, driver="cgroupfs", root=fs_root, name="fs.yaml")
    sd_policy = env.policy(PARITY, driver="systemd", name="sd.yaml")
    try:
        env.cgctl("apply", str(fs_policy))
        env.cgctl("apply", str(sd_policy))
        rows: list[tuple[str, str, str, str]] = []
        for group, name in PARITY_FILES:
            fs_value = read(os.path.join(MOUNT, fs_root, *group), name)
            sd_value = read(env.cgroup(*group), name)
            rows.append(("/".join(group), name, fs_value, sd_value))
        for group in (("web",), ("web", "worker")):
            rows.append(
                (
                    "/".join(group),
                    "frozen",
                    frozen(os.path.join(MOUNT, fs_root, *group)),
                    frozen(env.cgroup(*group)),
                )
            )
        print("\nparity table (group, file, cgroupfs, systemd):")
        for row in rows:
            print("  " + " | ".join(row))
        # The one documented difference: systemd keeps the CPU quota in 10 ms-per-second steps.
        quota = CpuMax(12_345, 100_000)
        rounded = properties.kernel_cpu_max(quota)
        assert rounded == CpuMax(13_000, 100_000)
        for group, name, fs_value, sd_value in rows:
            if (group, name) == ("web/worker", "cpu.max"):
                assert fs_value == str(quota) and sd_value == str(rounded)
            else:
                assert fs_value == sd_value, f"{group} {name}: cgroupfs {fs_value!r} != systemd {sd_value!r}"
    finally:
        subprocess.run(
            ["sh", "-c", f"echo 0 > {MOUNT}/{fs_root}/web/worker/cgroup.freeze"], capture_output=True
        )
        for sub in ("web/worker", "web", ""):
            path = os.path.join(MOUNT, fs_root, sub).rstrip("/")
            if os.path.isdir(path):
                os.rmdir(path)
