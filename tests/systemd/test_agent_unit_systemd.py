"""The shipped unit, systemd/cgctl-agent.service, run by a real systemd (PID 1 in the systemd VM):
installed, started (active only after READY=1, which the agent sends after its first reconcile),
scraped, reloaded (SIGHUP re-reads the policy), and stopped cleanly.

The test installs from this checkout rather than a system install, so a drop-in points ExecStart at the
checkout's virtualenv and lifts only the two sandboxing options that would hide that checkout
(``ProtectHome``/``PrivateTmp`` — the checkout or its interpreter may live under /root or /tmp). Every
other hardening option of the shipped unit stays in force.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.systemd import SystemdDriver, naming

USABLE, WHY = SystemdDriver.usable()
pytestmark = [pytest.mark.systemd, pytest.mark.skipif(not USABLE, reason=WHY)]

REPO = Path(__file__).resolve().parents[2]
UNIT = "cgctl-agent.service"
PORT = 9746  # the shipped default


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=check, timeout=300)


def prop(name: str, unit: str = UNIT) -> str:
    return systemctl("show", "-p", name, "--value", unit).stdout.strip()


def write_policy(root: str, pids: int) -> None:
    Path("/etc/cgctl").mkdir(parents=True, exist_ok=True)
    Path("/etc/cgctl/policy.yaml").write_text(
        f"version: 1\ndriver: systemd\nroot: {root}\ngroups:\n  web:\n    cpu: {{weight: 200}}\n"
        f"    pids: {{max: {pids}}}\n"
    )


def kernel_pids_max(root: str) -> str:
    cgroup = prop("ControlGroup", naming.slice_name(root, ("web",)))
    return Path(f"/sys/fs/cgroup{cgroup}/pids.max").read_text().strip() if cgroup else ""


@pytest.fixture
def installed() -> Iterator[str]:
    root = f"cgctlunit{uuid.uuid4().hex[:6]}"
    write_policy(root, 50)
    shutil.copy(REPO / "systemd" / UNIT, f"/etc/systemd/system/{UNIT}")
    dropin = Path(f"/etc/systemd/system/{UNIT}.d")
    dropin.mkdir(exist_ok=True)
    cgctl = Path(sys.executable).with_name("cgctl")
    (dropin / "test.conf").write_text(
        f"[Service]\nExecStart=\nExecStart={cgctl} agent --policy /etc/cgctl/policy.yaml --interval 2\n"
        "ProtectHome=no\nPrivateTmp=no\n"
    )
    systemctl("daemon-reload")
    try:
        yield root
    finally:
        systemctl("stop", UNIT, check=False)
        systemctl("stop", naming.slice_name(root, ()), check=False)
        shutil.rmtree(dropin, ignore_errors=True)
        os.unlink(f"/etc/systemd/system/{UNIT}")
        systemctl("daemon-reload")


def test_shipped_unit_passes_systemd_analyze_verify() -> None:
    # verify resolves ExecStart: give it an executable at the shipped path.
    link = Path("/usr/local/bin/cgctl")
    if not link.exists():
        link.symlink_to(Path(sys.executable).with_name("cgctl"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(REPO / "systemd" / UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(REPO / "systemd" / UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    print("\n" + security.stdout.strip().splitlines()[-1] if security.stdout.strip() else security.stderr)


def test_agent_unit_is_active_only_after_ready_serves_metrics_reloads_and_stops(installed: str) -> None:
    root = installed
    systemctl("start", "--no-block", UNIT)
    seen: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = prop("ActiveState")
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in ("active", "failed"):
            break
        time.sleep(0.2)
    journal = subprocess.run(["journalctl", "-u", UNIT, "--no-pager"], capture_output=True, text=True).stdout
    assert seen[-1] == "active", f"states {seen}; journal:\n{journal}"
    assert "activating" in seen, f"never seen activating before active (Type=notify): {seen}"
    # READY=1 came only after the first reconcile: the group already carries the policy's limit.
    assert kernel_pids_max(root) == "50"
    assert prop("Type") == "notify" and prop("WatchdogUSec") == "30s"

    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=60) as resp:
        body = resp.read().decode()
    assert 'group="web"' in body and "cgroup_pids_max" in body and "cgctl_build_info" in body

    main_pid = prop("MainPID")
    write_policy(root, 60)
    systemctl("reload", UNIT)
    deadline = time.monotonic() + 120
    while kernel_pids_max(root) != "60":
        assert time.monotonic() < deadline, "reload did not apply the changed policy"
        time.sleep(0.5)
    assert prop("MainPID") == main_pid, "reload must not restart the agent"

    systemctl("stop", UNIT)
    assert prop("ActiveState") == "inactive"
    assert prop("Result") == "success"
    assert prop("ExecMainStatus") == "0"
