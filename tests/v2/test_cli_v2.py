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
