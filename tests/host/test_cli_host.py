"""The cgctl command on this host's own kernel (cgroup v1 / hybrid here): the shared end-to-end cases,
plus rollback after failures only v1 produces."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests import kernel
from tests.cli_cases import *  # noqa: F403 - the shared cases run here with this module's marker
from tests.cli_cases import Env, snapshot

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(kernel.is_pure_v2(), reason="host is pure cgroup v2: the v1 cases do not apply"),
]


def test_kernel_rejecting_a_cpuset_mid_apply_rolls_back_to_an_identical_tree(env: Env) -> None:
    env.cgctl(
        "apply",
        str(
            env.policy(
                """
groups:
  a: {cpu: {weight: 100}}
  p:
    cpu: {cpus: "0"}
    groups:
      c: {pids: {max: 9}}
"""
            )
        ),
    )
    before = snapshot(env.root)
    # v1 requires a child's cpuset to be a subset of its parent's; the kernel refuses cpus 1 under 0.
    bad = env.policy(
        """
groups:
  a: {cpu: {weight: 300}}
  p:
    cpu: {cpus: "0"}
    groups:
      c: {pids: {max: 4}, cpu: {cpus: "1"}}
  new: {pids: {max: 3}}
""",
        name="bad.yaml",
    )
    proc = env.cgctl("apply", str(bad), check=1)
    assert "apply failed" in proc.stderr and "cpuset.cpus" in proc.stderr
    assert "kernel said:" in proc.stderr
    assert "the tree is as it was before" in proc.stderr
    assert snapshot(env.root) == before
    assert not kernel.exists(env.root, "new")


def test_lowering_memory_max_below_usage_fails_with_ebusy_and_rolls_back(env: Env) -> None:
    policy = env.policy(
        """
groups:
  a: {cpu: {weight: 100}}
  hog: {memory: {max: 512M}}
"""
    )
    env.cgctl("apply", str(policy))
    # v1 charges memory where it was allocated: the hog must allocate after joining (cgctl exec).
    hog = env.spawn(
        sys.executable,
        "-m",
        "cgctl",
        "exec",
        "hog",
        "--root",
        env.root,
        "--driver",
        "cgroupfs",
        "--",
        sys.executable,
        "-c",
        "import time; x = b'\\x01' * (96 << 20); time.sleep(300)",
    )
    usage = kernel.v1_dir("memory", env.root, "hog", "memory.usage_in_bytes")
    deadline = time.monotonic() + 20
    while int(kernel.read(usage)) < 90 << 20:
        assert time.monotonic() < deadline, "the allocation never showed up in memory.usage_in_bytes"
        time.sleep(0.1)
    before = snapshot(env.root)
    lower = env.policy(
        """
groups:
  a: {cpu: {weight: 300}}
  hog: {memory: {max: 16M}}
""",
        name="lower.yaml",
    )
    plan = env.cgctl("apply", str(lower), "--dry-run")
    assert "below current usage" in plan.stderr
    proc = env.cgctl("apply", str(lower), check=1)
    assert "memory.limit_in_bytes" in proc.stderr and "Device or resource busy" in proc.stderr
    assert "the tree is as it was before" in proc.stderr
    assert snapshot(env.root) == before
    assert hog.poll() is None, "apply must never kill processes"


def test_a_swap_limit_without_a_memory_limit_is_refused_before_anything_is_written(env: Env) -> None:
    """v1 limits memory+swap as one file: `swap_max: 0` alone cannot be written, and the plan says so
    (exit 2, FILE:LINE, nothing created) instead of failing and rolling back mid-apply."""
    if not os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"):
        pytest.skip("swap accounting is off on this host (no memory.memsw.*)")
    policy = env.policy(
        """
groups:
  web:
    pids: {max: 10}
    memory:
      swap_max: 0
"""
    )
    proc = env.cgctl("apply", str(policy), check=2)
    assert f"{policy}:9:17: groups.web.memory.swap_max" in proc.stderr, proc.stderr
    assert "needs a memory.max limit" in proc.stderr
    assert not kernel.exists(env.root)
    fixed = env.policy(
        """
groups:
  web:
    pids: {max: 10}
    memory: {max: 64M, swap_max: 0}
""",
        name="fixed.yaml",
    )
    env.cgctl("apply", str(fixed))
    memsw = kernel.v1_dir("memory", env.root, "web") + "/memory.memsw.limit_in_bytes"
    assert kernel.read(memsw) == str(64 << 20)


def test_a_child_cpuset_dropped_while_its_parent_shrinks_applies(env: Env) -> None:
    """The child goes back to inheriting (v1: a copy of the parent's list) while the parent narrows:
    the child narrows first, the parent follows, the reset comes last (this was an EBUSY rollback)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs CPUs 0 and 1")
    env.cgctl(
        "apply",
        str(
            env.policy('\ngroups:\n  p:\n    cpu: {cpus: "0-1"}\n    groups:\n      c: {cpu: {cpus: "1"}}\n')
        ),
    )
    narrow = env.policy(
        '\ngroups:\n  p:\n    cpu: {cpus: "0"}\n    groups:\n      c: {pids: {max: 5}}\n', "b.yaml"
    )
    proc = env.cgctl("apply", str(narrow))
    assert proc.stdout.index("/p/c/cpuset.cpus: 1 -> 0") < proc.stdout.index("/p/cpuset.cpus: 0-1 -> 0")
    assert kernel.read(kernel.v1_dir("cpuset", env.root, "p", "cpuset.cpus")) == "0"
    assert kernel.read(kernel.v1_dir("cpuset", env.root, "p", "c", "cpuset.cpus")) == "0"
    assert env.cgctl("diff", str(narrow)).returncode == 0
