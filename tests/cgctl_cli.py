"""Running the real ``cgctl`` command from tests: one subprocess, its state, lock and agent socket kept in
the test's own directory so no test touches /var/lib/cgctl or /run/cgctl."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cgctl(
    tmp: Path,
    *args: str,
    agent_socket: Path | None = None,
    timeout: float = 120,
    check: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m cgctl ARGS`` with CGCTL_STATE_DIR/RUN_DIR under ``tmp``. ``agent_socket`` is where the
    CLI looks for an agent (default: a path where none listens). ``check``: the exit code required."""
    env = dict(
        os.environ,
        CGCTL_STATE_DIR=str(tmp / "state"),
        CGCTL_RUN_DIR=str(tmp / "run"),
        CGCTL_AGENT_SOCKET=str(agent_socket or tmp / "no-agent.sock"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "cgctl", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )
    if check is not None and proc.returncode != check:
        raise AssertionError(
            f"cgctl {' '.join(args)} exited {proc.returncode}, wanted {check}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc
