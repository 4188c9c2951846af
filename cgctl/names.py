"""Group names and paths: what may become a directory under the managed root.

Children share a cgroup's namespace with the kernel's interface files, so a group must never be named
like one (``cgroup.procs``, ``memory.max``, ``tasks``…; anchors §3 pitfall 4), and no name may leave
the root (``.``, ``..``, ``/``). This module has no heavy imports: the fast CLI paths use it.
"""

from __future__ import annotations

import re

from drivers.api import GroupPath

MAX_DEPTH = 16
MAX_NAME_BYTES = 255

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

# Prefixes of interface files, v1 and v2 (a group "cpu.x" would collide with a controller's files).
CONTROLLER_PREFIXES = (
    "cgroup",
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "io",
    "blkio",
    "pids",
    "freezer",
    "devices",
    "hugetlb",
    "rdma",
    "dmem",
    "irq",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
)
RESERVED_NAMES = frozenset({"tasks", "notify_on_release", "release_agent", "cgroup.procs"})


class InvalidNameError(ValueError):
    pass


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a group name, or None when it can."""
    if name in ("", ".", ".."):
        return f"{name!r} is not a group name"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if not _NAME_RE.match(name):
        return "only letters, digits, '_', '-' and '.' are allowed"
    if name in RESERVED_NAMES:
        return f"{name!r} is a name the kernel uses for its own files"
    prefix = name.split(".", 1)[0]
    if "." in name and prefix in CONTROLLER_PREFIXES:
        return f"names starting with '{prefix}.' collide with the kernel's {prefix} interface files"
    return None


def parse_group_path(text: str) -> GroupPath:
    """``web/worker`` → ``('web', 'worker')``; refuses anything that could escape the root."""
    if text.startswith("/"):
        raise InvalidNameError("must be relative to the managed root (no leading '/')")
    parts = tuple(text.strip("/").split("/")) if text.strip("/") else ()
    if not parts:
        raise InvalidNameError("empty group path")
    if len(parts) > MAX_DEPTH:
        raise InvalidNameError(f"deeper than {MAX_DEPTH} levels")
    for part in parts:
        problem = name_problem(part)
        if problem:
            raise InvalidNameError(f"{part!r}: {problem}")
    return parts
