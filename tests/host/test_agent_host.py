"""cgctl agent against this host's own kernel (cgroup v1 / hybrid here)."""

from __future__ import annotations

import pytest

from tests.agent_cases import *  # noqa: F403 - the shared cases run here with this module's marker
from tests.agent_cases import RunningAgent

pytestmark = [pytest.mark.host]


BAD_CPUSET = """version: 1
driver: cgroupfs
root: {root}
groups:
  web:
    cpu: {{cpus: "0"}}
    groups:
      c: {{cpu: {{cpus: "1"}}}}
"""


def test_a_failed_apply_through_the_agent_reports_what_the_cli_reports(agent: RunningAgent) -> None:
    """v1 refuses a child cpuset outside its parent's: the agent answers with the same report as the
    CLI (step, file, the kernel's words, whether the rollback put the tree back)."""
    agent.wait_notify("READY=1")
    agent.policy.write_text(BAD_CPUSET.format(root=agent.root))
    proc = agent.cgctl("apply", str(agent.policy))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cgctl: apply failed: write" in proc.stderr and "cpuset.cpus" in proc.stderr
    assert "kernel said:" in proc.stderr
    assert "the tree is as it was before" in proc.stderr
