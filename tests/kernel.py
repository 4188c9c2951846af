"""Test-side access to the real kernel's cgroup files, independent of cgctl's own code (a test that read
the kernel through cgctl's driver would prove nothing about the driver)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

MOUNT = "/sys/fs/cgroup"
V1_HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "blkio", "pids", "freezer")


def is_pure_v2() -> bool:
    return os.path.exists(f"{MOUNT}/cgroup.controllers")


def v2_dir(root: str, *group: str) -> str:
    return os.path.join(MOUNT, root, *group)


def v1_dir(hierarchy: str, root: str, *group: str) -> str:
    return os.path.join(MOUNT, hierarchy, root, *group)


def read(path: str) -> str:
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


def busy_loop() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    fields = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@contextlib.contextmanager
def started(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(list(argv))
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
