"""Test-side access to the real kernel's cgroup files, independent of cgctl's own code (a test that read
the kernel through cgctl's driver would prove nothing about the driver)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

MOUNT = "/sys/fs/cgroup"
V1_HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "blkio", "pids", "freezer")


def is_pure_v2() -> bool:
    return os.path.exists(f"{MOUNT}/cgroup.controllers")


def v2_dir(root: str, *group: str) -> str:
    return os.path.join(MOUNT, root, *group)


def v1_dir(hierarchy: str, root: str, *group: str) -> str:
    return os.path.join(MOUNT, hierarchy, root, *group)


def read(path: str | os.PathLike[str]) -> str:
    with open(path) as f:
        return f.read().strip()


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def group_dirs(root: str, *group: str) -> list[str]:
    """Every directory the group has: one on v2, one per mounted v1 hierarchy."""
    if is_pure_v2():
        return [v2_dir(root, *group)]
    return [v1_dir(h, root, *group) for h in V1_HIERARCHIES if os.path.isdir(os.path.join(MOUNT, h))]


def exists(root: str, *group: str) -> bool:
    return any(os.path.isdir(d) for d in group_dirs(root, *group))


def procs_under(directory: str) -> list[int]:
    pids: list[int] = []
    for dirpath, _dirs, files in os.walk(directory):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids.extend(int(p) for p in read(os.path.join(dirpath, "cgroup.procs")).split())
    return pids


def remove_tree(root: str, own_pids: set[int] | None = None) -> None:
    """Remove a test's whole managed root, bottom-up, in every hierarchy. Only processes the test
    started (own_pids) are killed; anything else found there makes this fail loudly instead."""
    own = own_pids or set()
    for top in group_dirs(root):
        if not os.path.isdir(top):
            continue
        # Thaw first: a frozen task cannot die.
        for dirpath, _dirs, files in os.walk(top):
            for name, value in (("cgroup.freeze", "0"), ("freezer.state", "THAWED")):
                if name in files:
                    with contextlib.suppress(OSError):
                        write(os.path.join(dirpath, name), value)
        for pid in procs_under(top):
            if pid in own:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            while True:
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def kill_and_remove_v2_tree(top: str | os.PathLike[str]) -> None:
    """Kill everything in ``top``, a v2 group the test created (so every process there is the test's own),
    and remove it, deepest groups first. Nothing to do when it is not there."""
    root = Path(top)
    if not root.exists():
        return
    if (root / "cgroup.freeze").exists():
        (root / "cgroup.freeze").write_text("0")
    if (root / "cgroup.kill").exists():
        (root / "cgroup.kill").write_text("1")
    else:  # kernels before 5.14: signal each member ourselves
        for pid in procs_under(str(root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while read_keyed(root / "cgroup.events").get("populated") != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{root} still populated 30 s after cgroup.kill")
        time.sleep(0.02)
    for group in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        group.rmdir()
    root.rmdir()


def keyed(text: str) -> dict[str, int]:
    """A flat keyed file's text (``cpu.stat``, ``memory.stat``, ``*.events``, ``memory.oom_control``):
    one ``key value`` pair a line."""
    return {
        key: int(value) for key, value in (line.split()[:2] for line in text.splitlines() if line.strip())
    }


def read_keyed(path: str | os.PathLike[str]) -> dict[str, int]:
    return keyed(read(path))


def between(value: float | None, first: float, second: float) -> bool:
    """Whether a value read once lies between two readings of the same growing kernel figure, taken just
    before and just after it."""
    return value is not None and min(first, second) <= value <= max(first, second)
