"""End-to-end cases for the ``cgctl`` command against the real kernel, shared by the host suite (cgroup
v1/hybrid: tests/host/test_cli_host.py) and the pure-v2 suite (tests/v2/test_cli_v2.py). Each case runs
the real command in a subprocess under a uniquely named root and reads the kernel's own files back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import kernel, procs
from tests.cgctl_cli import REPO, run_cgctl


@dataclass
class Env:
    root: str
    tmp: Path
    pids: set[int] = field(default_factory=set)

    def policy(self, body: str, name: str = "policy.yaml") -> Path:
        path = self.tmp / name
        path.write_text(f"version: 1\ndriver: cgroupfs\nroot: {self.root}\n" + textwrap.dedent(body))
        return path

    def cgctl(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        return run_cgctl(self.tmp, *args, timeout=120, check=check)

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv))
        self.pids.add(proc.pid)
        return proc


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(root=f"cgctl-test-{uuid.uuid4().hex[:10]}", tmp=tmp_path)
    try:
        yield e
    finally:
        kernel.remove_tree(e.root, e.pids)
        for pid in e.pids:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        assert not kernel.exists(e.root), f"test root {e.root} left behind"


BASIC = """
groups:
  web:
    cpu: {weight: 200, max: 0.5}
    memory: {max: 64M}
    pids: {max: 50}
    groups:
      worker:
        pids: {max: 10}
  batch:
    cpu: {weight: 50}
"""


def kernel_limits(root: str, *group: str) -> dict[str, str]:
    """The limits as the kernel reports them, in v2 vocabulary, read from the files directly."""
    if kernel.is_pure_v2():
        d = kernel.v2_dir(root, *group)
        out = {}
        for name in ("cpu.weight", "cpu.max", "memory.max", "pids.max"):
            p = os.path.join(d, name)
            if os.path.exists(p):
                out[name] = kernel.read(p)
        return out
    cpu, mem, pids = (kernel.v1_dir(h, root, *group) for h in ("cpu", "memory", "pids"))
    shares = int(kernel.read(f"{cpu}/cpu.shares"))
    quota = int(kernel.read(f"{cpu}/cpu.cfs_quota_us"))
    period = kernel.read(f"{cpu}/cpu.cfs_period_us")
    limit = int(kernel.read(f"{mem}/memory.limit_in_bytes"))
    return {
        "cpu.weight": str(round(shares * 100 / 1024)),
        "cpu.max": f"{'max' if quota < 0 else quota} {period}",
        "memory.max": "max" if limit >= 2**62 else str(limit),
        "pids.max": kernel.read(f"{pids}/pids.max"),
    }


# Limit files only: usage counters and statistics change on their own.
LIMIT_PREFIXES = ("cpu.", "memory.", "pids.", "cpuset.", "io.", "blkio.throttle")
NOT_LIMITS = ("stat", "current", "events", "pressure", "usage", "peak", "failcnt", "numa")


def snapshot(root: str) -> dict[str, object]:
    """Every group dir under the root with every readable limit file's content: 'the tree'."""
    tree: dict[str, object] = {}
    for top in kernel.group_dirs(root):
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                if name.startswith(LIMIT_PREFIXES) and not any(s in name for s in NOT_LIMITS):
                    try:
                        tree[os.path.join(dirpath, name)] = kernel.read(os.path.join(dirpath, name))
                    except OSError:
                        continue
    return tree


def test_apply_writes_the_kernel_files_then_diff_is_clean_and_reapply_writes_nothing(env: Env) -> None:
    policy = env.policy(BASIC)
    env.cgctl("apply", str(policy))
    assert kernel_limits(env.root, "web") == {
        "cpu.weight": "200",
        "cpu.max": "50000 100000",
        "memory.max": str(64 << 20),
        "pids.max": "50",
    }
    assert kernel_limits(env.root, "web", "worker")["pids.max"] == "10"
    assert kernel_limits(env.root, "batch")["cpu.weight"] == "50"
    assert env.cgctl("diff", str(policy)).stdout.strip().endswith("in sync: nothing to do")
    before = snapshot(env.root)
    again = env.cgctl("apply", str(policy))
    assert "nothing to do" in again.stdout
    assert snapshot(env.root) == before


def test_one_shot_commands_run_without_an_event_loop(env: Env) -> None:
    """apply, freeze and thaw with the cgroupfs driver never import asyncio (cgctl/oneshot.py: 25-50 ms
    of every start), and still do their work."""
    policy = env.policy(BASIC)
    probe = (
        "import sys\n"
        "from cgctl.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('asyncio loaded:', 'asyncio' in sys.modules)\n"
        "sys.exit(rc)\n"
    )
    runs = [
        ["apply", str(policy)],
        ["freeze", "--root", env.root, "web"],
        ["thaw", "--root", env.root, "web"],
    ]
    for args in runs:
        proc = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            env=dict(
                os.environ,
                CGCTL_STATE_DIR=str(env.tmp / "state"),
                CGCTL_RUN_DIR=str(env.tmp / "run"),
                CGCTL_AGENT_SOCKET=str(env.tmp / "no-agent.sock"),
            ),
            cwd=REPO,
            timeout=120,
        )
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
        assert "asyncio loaded: False" in proc.stdout, (args, proc.stdout)
    assert kernel_limits(env.root, "web")["pids.max"] == "50"
    assert env.cgctl("diff", str(policy)).returncode == 0


def test_dropped_knob_is_reset_and_knobs_never_named_are_left_alone(env: Env) -> None:
    env.cgctl("apply", str(env.policy(BASIC)))
    # Someone else limits batch's pids: the policy never named it, so cgctl must leave it alone.
    if kernel.is_pure_v2():
        kernel.write(kernel.v2_dir(env.root, "batch", "pids.max"), "77")
    else:
        kernel.write(kernel.v1_dir("pids", env.root, "batch", "pids.max"), "77")
    changed = env.policy(BASIC.replace("    pids: {max: 50}\n", ""))
    diff = env.cgctl("diff", str(changed), check=1)
    assert "reset" in diff.stdout and "pids.max" in diff.stdout and "50 -> max" in diff.stdout
    env.cgctl("apply", str(changed))
    assert kernel_limits(env.root, "web")["pids.max"] == "max"
    assert kernel_limits(env.root, "batch")["pids.max"] == "77"
    env.cgctl("diff", str(changed), check=0)


def test_invalid_policy_exits_2_with_file_line_and_writes_nothing(env: Env) -> None:
    policy = env.policy(
        """
groups:
  web:
    memory: {max: lots}
"""
    )
    proc = env.cgctl("apply", str(policy), check=2)
    assert f"{policy}:7:" in proc.stderr and "groups.web.memory.max" in proc.stderr
    assert not kernel.exists(env.root)


@pytest.mark.parametrize(
    "name",
    ["..", "cgroup.procs", "memory.max", "tasks", "a/b", "../../escape"],
)
def test_hostile_group_names_are_refused_and_nothing_is_written(env: Env, name: str) -> None:
    policy = env.policy(f'\ngroups:\n  "{name}":\n    pids: {{max: 5}}\n')
    proc = env.cgctl("apply", str(policy), check=2)
    assert str(policy) in proc.stderr
    assert not kernel.exists(env.root)
    assert not os.path.exists("/sys/fs/cgroup/escape")


def test_hostile_group_argument_is_refused(env: Env) -> None:
    env.cgctl("apply", str(env.policy(BASIC)))
    for arg in ("../x", "/etc", "web/../../x", "cgroup.procs"):
        proc = env.cgctl("freeze", arg, "--root", env.root, "--driver", "cgroupfs", check=2)
        assert "GROUP" in proc.stderr


def test_commands_on_a_missing_group_exit_2_naming_it(env: Env) -> None:
    env.cgctl("apply", str(env.policy(BASIC)))
    where = ["--root", env.root, "--driver", "cgroupfs"]
    sleeper = env.spawn("sleep", "60")
    for command in (
        ["move", "nope", str(sleeper.pid), *where],
        ["exec", "web/nope", *where, "--", "true"],
        ["freeze", "nope", *where],
    ):
        proc = env.cgctl(*command, check=2)
        assert f"group '{command[1]}' does not exist under root '{env.root}'" in proc.stderr


def test_freeze_stops_all_work_until_thaw(env: Env) -> None:
    env.cgctl("apply", str(env.policy(BASIC)))
    loop = env.spawn(*procs.SHELL_SPIN)
    target = ("--root", env.root, "--driver", "cgroupfs")
    env.cgctl("move", "web/worker", str(loop.pid), *target)
    env.cgctl("freeze", "web", *target)  # the ancestor's freeze must reach web/worker
    t0 = procs.cpu_ticks(loop.pid)
    time.sleep(0.6)
    assert procs.cpu_ticks(loop.pid) == t0, "a frozen process kept running"
    env.cgctl("thaw", "web", *target)
    time.sleep(0.6)
    assert procs.cpu_ticks(loop.pid) > t0, "a thawed process did not resume"


def test_a_parent_cpuset_narrowed_with_its_children_applies(env: Env) -> None:
    """v1 refuses a parent cpuset that leaves a child outside it (EBUSY): the children go first."""
    wide = "\ngroups:\n  web:\n    cpu: {cpus: 0-1}\n    groups:\n      a: {cpu: {cpus: 0-1}}\n"
    env.cgctl("apply", str(env.policy(wide)))
    narrow = env.policy("\ngroups:\n  web:\n    cpu: {cpus: '0'}\n    groups:\n      a: {cpu: {cpus: '0'}}\n")
    env.cgctl("apply", str(narrow))
    assert env.cgctl("diff", str(narrow)).returncode == 0
    if kernel.is_pure_v2():
        assert kernel.read(kernel.v2_dir(env.root, "web", "a", "cpuset.cpus")) == "0"
    else:
        assert kernel.read(kernel.v1_dir("cpuset", env.root, "web", "cpuset.cpus")) == "0"
        assert kernel.read(kernel.v1_dir("cpuset", env.root, "web", "a", "cpuset.cpus")) == "0"
    env.cgctl("apply", str(env.policy(wide)))  # and back: parents widen first
    assert env.cgctl("diff", str(env.policy(wide))).returncode == 0


def test_frozen_in_the_policy_freezes_stays_in_sync_and_false_thaws(env: Env) -> None:
    frozen = env.policy("\ngroups:\n  web:\n    pids: {max: 50}\n    frozen: true\n  batch: {}\n")
    env.cgctl("apply", str(frozen))
    loop = env.spawn(*procs.SHELL_SPIN)
    env.cgctl("move", "web", str(loop.pid), "--root", env.root, "--driver", "cgroupfs")
    t0 = procs.cpu_ticks(loop.pid)
    time.sleep(0.6)
    assert procs.cpu_ticks(loop.pid) == t0, "a process moved into a frozen group ran"
    assert env.cgctl("diff", str(frozen)).returncode == 0  # frozen and populated: in sync
    thawed = env.policy("\ngroups:\n  web:\n    pids: {max: 50}\n    frozen: false\n  batch: {}\n")
    proc = env.cgctl("diff", str(thawed), check=1)
    assert "thaw" in proc.stdout
    env.cgctl("apply", str(thawed))
    time.sleep(0.6)
    assert procs.cpu_ticks(loop.pid) > t0, "frozen: false did not thaw the group"
    assert env.cgctl("diff", str(thawed)).returncode == 0


def test_exec_runs_the_command_inside_the_group(env: Env) -> None:
    env.cgctl("apply", str(env.policy(BASIC)))
    proc = env.cgctl(
        "exec", "batch", "--root", env.root, "--driver", "cgroupfs", "--", "cat", "/proc/self/cgroup"
    )
    assert f"/{env.root}/batch" in proc.stdout


def test_prune_removes_only_empty_groups_cgctl_created(env: Env) -> None:
    env.cgctl("apply", str(env.policy(BASIC)))
    sleeper = env.spawn("sleep", "300")
    env.cgctl("move", "batch", str(sleeper.pid), "--root", env.root, "--driver", "cgroupfs")
    smaller = env.policy(
        """
groups:
  keep:
    pids: {max: 5}
"""
    )
    plan = env.cgctl("apply", str(smaller), "--prune", "--dry-run").stdout
    assert "remove web/worker" in plan and "remove web" in plan and "remove batch" not in plan
    assert "kept batch" in plan
    env.cgctl("apply", str(smaller), "--prune")
    assert not kernel.exists(env.root, "web")
    assert kernel.exists(env.root, "batch"), "a populated group was removed"
    assert kernel.exists(env.root, "keep")


def test_show_puts_limits_next_to_live_usage(env: Env) -> None:
    policy = env.policy(BASIC)
    env.cgctl("apply", str(policy))
    sleeper = env.spawn("sleep", "300")
    env.cgctl("move", "web/worker", str(sleeper.pid), "--root", env.root, "--driver", "cgroupfs")
    rows = {
        r["group"]: r
        for r in json.loads(env.cgctl("show", "--policy", str(policy), "--output", "json").stdout)["groups"]
    }
    assert rows["web"]["memory_max"] == 64 << 20 and rows["web"]["pids_max"] == 50
    assert rows["web/worker"]["pids"] == 1 and rows["web/worker"]["pids_max"] == 10
    assert rows["web/worker"]["populated"] is True and rows["batch"]["frozen"] is False
    tree = env.cgctl("show", "--policy", str(policy)).stdout
    assert tree.splitlines()[0] == f"{env.root}/"
    assert "└─ worker" in tree and "1 / 10" in tree


def test_check_describes_the_host_and_whether_it_can_honour_a_policy(env: Env) -> None:
    report = json.loads(env.cgctl("check", "--output", "json").stdout)
    mode = report["drivers"]["cgroupfs"]["mode"]
    assert mode == (
        "v2" if kernel.is_pure_v2() else "hybrid" if os.path.isdir("/sys/fs/cgroup/unified") else "v1"
    )
    assert "CONFIG_CGROUPS" in report["kernel_config"]["flags"]
    ok = json.loads(env.cgctl("check", str(env.policy(BASIC)), "--output", "json").stdout)
    assert ok["policy"]["errors"] == [] and ok["policy"]["pending_changes"] > 0
    assert not kernel.exists(env.root), "check must not write"
