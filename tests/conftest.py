"""Environment selection and shared fixtures for every suite.

Markers (declared in pyproject.toml) decide where a test can run; a test whose environment is missing is
skipped with the reason, so ``pytest`` alone works anywhere:

- ``host``: root and a writable cgroup filesystem on this machine (any layout);
- ``cgroupv2``: root and a pure cgroup2 mount on /sys/fs/cgroup with controllers (here: ``tests/vm/run``);
- ``systemd``: root, systemd as PID 1 and a system bus that answers (here: ``tests/vm/run --systemd``).

Fixtures: ``unique_name`` (``cgctl-test-<hex>``), ``children`` (processes killed at teardown: tests/procs.py),
``v2_cgroup_root`` (a fresh v2 group with controllers enabled for its children) and ``v1_cgroup`` (fresh
groups in the v1 hierarchies). Every group they create is killed empty and removed at teardown, also
when the test fails. They know nothing of cgctl.

When ``CGCTL_SUITE_REPORT`` names a file, the session's counts are written there as JSON
(``tests/run-suites`` reads them to tell "ran nothing" from "passed").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import kernel
from tests.procs import Children

CGROUP_MOUNT = Path("/sys/fs/cgroup")
TEST_PREFIX = "cgctl-test-"
V2_TEST_CONTROLLERS = ("cpu", "memory", "io", "pids", "cpuset")

# --------------------------------------------------------------------------------------------------
# What this machine offers (each probe runs at most once per session)
# --------------------------------------------------------------------------------------------------


def _mounts() -> list[tuple[str, str, list[str], list[str]]]:
    """(mount point, fstype, mount options, super options) for each line of /proc/self/mountinfo."""
    entries = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 6 and len(tail) >= 3:
                entries.append((fields[4], tail[0], fields[5].split(","), tail[2].split(",")))
    return entries


def v1_hierarchies() -> dict[str, Path]:
    """Controller name → mount point of its v1 hierarchy (empty on a pure v2 machine)."""
    hierarchies: dict[str, Path] = {}
    for mount_point, fstype, _, super_options in _mounts():
        if fstype == "cgroup":
            for option in super_options:
                hierarchies.setdefault(option, Path(mount_point))
    return hierarchies


@functools.cache
def host_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for mount_point, fstype, options, _ in _mounts():
        if fstype in ("cgroup", "cgroup2") and "rw" in options and os.access(mount_point, os.W_OK):
            return None
    return "no writable cgroup filesystem on this machine"


@functools.cache
def cgroupv2_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    fstypes = [fstype for mount_point, fstype, _, _ in _mounts() if mount_point == str(CGROUP_MOUNT)]
    if not fstypes or fstypes[-1] != "cgroup2":
        return f"{CGROUP_MOUNT} is not a pure cgroup2 mount (run the suite with tests/vm/run)"
    try:
        controllers = (CGROUP_MOUNT / "cgroup.controllers").read_text().split()
    except OSError as error:
        return f"cannot read {CGROUP_MOUNT}/cgroup.controllers: {error}"
    if not controllers:
        return "the cgroup2 hierarchy has no controllers (they are bound to v1)"
    return None


@functools.cache
def systemd_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError as error:
        return f"cannot read /proc/1/comm: {error}"
    if pid1 != "systemd":
        return f"PID 1 is {pid1}, not systemd (run the suite with tests/vm/run --systemd)"
    try:
        asyncio.run(asyncio.wait_for(_ping_systemd(), timeout=30))
    except Exception as error:
        return f"systemd does not answer on the system bus: {error!r}"
    return None


async def _ping_systemd() -> None:
    from dbus_fast import BusType, Message, MessageType  # only needed where systemd runs
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.systemd1",
                path="/org/freedesktop/systemd1",
                interface="org.freedesktop.DBus.Peer",
                member="Ping",
            )
        )
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            raise RuntimeError(f"Ping failed: {reply.body if reply else 'no reply'}")
    finally:
        bus.disconnect()


ENVIRONMENT_PROBES: dict[str, Callable[[], str | None]] = {
    "host": host_unavailable_reason,
    "cgroupv2": cgroupv2_unavailable_reason,
    "systemd": systemd_unavailable_reason,
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, probe in ENVIRONMENT_PROBES.items():
        if item.get_closest_marker(marker) is not None and (reason := probe()) is not None:
            pytest.skip(f"{marker}: {reason}")


# --------------------------------------------------------------------------------------------------
# The policy cache: the session's own (never /var/cache/cgctl), inherited by every cgctl it starts
# --------------------------------------------------------------------------------------------------

_SESSION_CACHE: tempfile.TemporaryDirectory[str] | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION_CACHE
    if "CGCTL_CACHE_DIR" not in os.environ:
        _SESSION_CACHE = tempfile.TemporaryDirectory(prefix="cgctl-test-cache-")
        os.environ["CGCTL_CACHE_DIR"] = _SESSION_CACHE.name


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_CACHE is not None:
        _SESSION_CACHE.cleanup()


# --------------------------------------------------------------------------------------------------
# Counts for tests/run-suites
# --------------------------------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    report_path = os.environ.get("CGCTL_SUITE_REPORT")
    if not report_path:
        return
    stats = terminalreporter.stats
    counts = {
        key: len(stats.get(key, []))
        for key in ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected")
    }
    counts["exitstatus"] = int(exitstatus)
    Path(report_path).write_text(json.dumps(counts) + "\n")


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def unique_name() -> str:
    """A fresh name for a test's own cgroup, unit or file: ``cgctl-test-<8 hex digits>``."""
    return f"{TEST_PREFIX}{secrets.token_hex(4)}"


def _thaw_own_v1_freezer(pid: int) -> None:
    """Thaw the v1 freezer group of ``pid`` if it is one of the tests' own (``cgctl-test-*``) groups."""
    freezer = v1_hierarchies().get("freezer")
    if freezer is None:
        return
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(",") and TEST_PREFIX in path:
            with contextlib.suppress(OSError):
                (freezer / path.lstrip("/") / "freezer.state").write_text("THAWED")


@pytest.fixture
def children() -> Iterator[Children]:
    started = Children(before_kill=_thaw_own_v1_freezer)  # a v1-frozen task does not die until thawed
    try:
        yield started
    finally:
        started.kill_all()


def v2_cgroup_base() -> Path:
    """Where tests may create their roots: the VM harness says (root cgroup, or systemd's delegation)."""
    return Path(os.environ.get("CGCTL_TEST_CGROUP_BASE", str(CGROUP_MOUNT)))


@pytest.fixture
def v2_cgroup_root(unique_name: str) -> Iterator[Path]:
    """A fresh v2 group ``<base>/cgctl-test-<hex>`` whose children get cpu, memory, io, pids and cpuset.

    The controllers are enabled top-down (base → root → children). The base's ``cgroup.subtree_control``
    is only written inside the throw-away VM (``CGCTL_VM`` set); elsewhere a missing controller skips.
    """
    if (reason := cgroupv2_unavailable_reason()) is not None:
        pytest.skip(reason)
    base = v2_cgroup_base()
    available = (base / "cgroup.controllers").read_text().split()
    wanted = [c for c in V2_TEST_CONTROLLERS if c in available]
    enabled = (base / "cgroup.subtree_control").read_text().split()
    missing = [c for c in wanted if c not in enabled]
    if missing:
        if not os.environ.get("CGCTL_VM"):
            pytest.skip(f"{', '.join(missing)} not enabled in {base}/cgroup.subtree_control (not in a VM)")
        (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
    root = base / unique_name
    root.mkdir()
    try:
        (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
        yield root
    finally:
        kernel.kill_and_remove_v2_tree(root)


def _remove_v1_group(group: Path) -> None:
    """Kill everything in ``group`` and the groups a test made below it, then remove them, deepest first."""
    tree = [
        *sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True),
        group,
    ]
    for member in tree:
        if (member / "freezer.state").exists():
            (member / "freezer.state").write_text("THAWED")
    deadline = time.monotonic() + 30
    while True:
        pids = [int(pid) for member in tree for pid in (member / "cgroup.procs").read_text().split()]
        if not pids:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{group} still has processes {pids} 30 s after SIGKILL")
        for pid in pids:  # only the tests' own children can be in a group this session created
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    for member in tree:
        member.rmdir()


@pytest.fixture
def v1_cgroup(unique_name: str) -> Iterator[Callable[[str], Path]]:
    """A factory: ``v1_cgroup("pids")`` creates ``<pids hierarchy>/cgctl-test-<hex>`` (skips if absent)."""
    if (reason := host_unavailable_reason()) is not None:
        pytest.skip(reason)
    hierarchies = v1_hierarchies()
    created: list[Path] = []

    def make(controller: str) -> Path:
        if controller not in hierarchies:
            pytest.skip(f"no v1 {controller} hierarchy on this machine")
        group = hierarchies[controller] / unique_name
        if group not in created:
            group.mkdir()
            created.append(group)
        return group

    try:
        yield make
    finally:
        errors = []
        for group in reversed(created):
            try:
                _remove_v1_group(group)
            except (OSError, RuntimeError) as error:
                errors.append(f"{group}: {error}")
        if errors:
            raise RuntimeError("could not clean up: " + "; ".join(errors))
