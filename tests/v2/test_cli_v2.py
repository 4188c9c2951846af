"""The cgctl command on a pure cgroup v2 kernel (runs in the VM): the shared end-to-end cases, plus a
rollback caused by the v2 no-internal-processes rule."""

from __future__ import annotations

import pytest

from tests import kernel
from tests.cli_cases import *  # noqa: F403 - the shared cases run here with this module's marker
from tests.cli_cases import Env, snapshot

pytestmark = [pytest.mark.cgroupv2]


def test_enabling_a_controller_in_a_populated_group_fails_and_rolls_back(env: Env) -> None:
    env.cgctl(
        "apply",
        str(
            env.policy(
                """
groups:
  a: {cpu: {weight: 100}}
  app: {}
"""
            )
        ),
    )
    sleeper = env.spawn("sleep", "300")
    env.cgctl("move", "app", str(sleeper.pid), "--root", env.root, "--driver", "cgroupfs")
    before = snapshot(env.root)
    root_subtree = kernel.read(kernel.v2_dir(env.root, "cgroup.subtree_control"))
    # app now holds a process: the kernel refuses to enable a domain controller (+memory) in its
    # subtree_control (EBUSY, the no-internal-processes rule; pids would be allowed: it is threaded).
    bad = env.policy(
        """
groups:
  a: {cpu: {weight: 300}}
  app:
    groups:
      child: {memory: {max: 64M}}
""",
        name="bad.yaml",
    )
    proc = env.cgctl("apply", str(bad), check=1)
    assert "subtree_control" in proc.stderr and "the tree is as it was before" in proc.stderr
    assert snapshot(env.root) == before
    assert kernel.read(kernel.v2_dir(env.root, "cgroup.subtree_control")) == root_subtree
    assert not kernel.exists(env.root, "app", "child")
    assert sleeper.poll() is None


def test_a_group_made_threaded_outside_cgctl_gets_plan_errors_not_failed_writes(env: Env) -> None:
    env.cgctl("apply", str(env.policy("groups:\n  app:\n    groups:\n      t: {cpu: {weight: 50}}\n")))
    # Someone turns app/t threaded (app, whose subtree_control holds only cpu, becomes its thread root).
    kernel.write(kernel.v2_dir(env.root, "app", "t", "cgroup.type"), "threaded")
    assert kernel.read(kernel.v2_dir(env.root, "app", "cgroup.type")) == "domain threaded"
    before = snapshot(env.root)
    # memory is not a threaded controller: its files are gone from app/t, so a limit there is a plan error
    # (exit 2, nothing written), not a write failing half-way.
    bad = env.policy(
        "groups:\n  app:\n    groups:\n      t: {cpu: {weight: 60}, memory: {max: 64M}}\n", name="bad.yaml"
    )
    proc = env.cgctl("apply", str(bad), check=2)
    assert "bad.yaml:7:" in proc.stderr and "groups.app.groups.t.memory.max" in proc.stderr
    assert "cgroup.type is 'threaded'" in proc.stderr and "memory is not a threaded controller" in proc.stderr
    assert snapshot(env.root) == before
    # Threaded controllers work: cpu in app/t, and pids in a new child, which the kernel creates
    # "domain invalid" (no processes allowed) under a threaded group: cgctl makes it threaded first.
    good = env.policy(
        """
groups:
  app:
    groups:
      t:
        cpu: {weight: 60}
        groups:
          w: {pids: {max: 7}}
"""
    )
    proc = env.cgctl("apply", str(good))
    assert "cgroup.type: domain invalid -> threaded" in proc.stdout
    assert kernel.read(kernel.v2_dir(env.root, "app", "t", "cpu.weight")) == "60"
    assert kernel.read(kernel.v2_dir(env.root, "app", "t", "w", "cgroup.type")) == "threaded"
    assert kernel.read(kernel.v2_dir(env.root, "app", "t", "w", "pids.max")) == "7"
    where = ("--root", env.root, "--driver", "cgroupfs")
    proc = env.cgctl("exec", "app/t/w", *where, "--", "cat", "/proc/self/cgroup")
    assert proc.stdout.strip() == f"0::/{env.root}/app/t/w"  # a "domain invalid" group would refuse it
    env.cgctl("diff", str(good))  # in sync: exit 0
