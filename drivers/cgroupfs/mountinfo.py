"""Which cgroup hierarchies are mounted where, from ``/proc/self/mountinfo``.

The layout decides the mode (kernel ``cgroup-v2.rst`` and systemd's "hybrid" terminology):

* **v2**: a cgroup2 mount and no v1 controller hierarchy — every controller lives in the unified tree;
* **v1**: only v1 hierarchies (named ones such as ``name=systemd`` carry no controller);
* **hybrid**: v1 controller hierarchies plus a cgroup2 mount (usually ``/sys/fs/cgroup/unified``) whose
  controllers are all bound to v1, so limits go through v1.

Only mounts at or below the configured mount point count: a container runtime may have mounted other
cgroup filesystems elsewhere, and those are not ours to manage.
"""

from __future__ import annotations

import re

from drivers.api import CgroupMode
from drivers.records import field, record

# Every controller a v1 hierarchy can carry. Super options that are not in this set (``rw``, ``xattr``,
# ``release_agent=…``, ``clone_children``, ``noprefix``…) are mount flags, not controllers.
V1_CONTROLLERS = frozenset(
    {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "net_prio",
        "blkio",
        "perf_event",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    }
)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field_text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\040`` etc."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field_text)


@record(frozen=True)
class Hierarchy:
    """One v1 hierarchy: where it is mounted and the controllers bound to it (co-mounts share one)."""

    mountpoint: str
    controllers: frozenset[str]
    name: str | None = None  # ``name=systemd`` → "systemd"
    root: str = "/"  # the mount's root inside the hierarchy (not "/" inside a cgroup namespace)


@record(frozen=True)
class CgroupLayout:
    mode: CgroupMode | None  # None: no cgroup filesystem mounted under the mount point
    unified: str | None = None  # the cgroup2 mount point, if any
    unified_options: frozenset[str] = frozenset()  # e.g. nsdelegate, memory_recursiveprot
    hierarchies: tuple[Hierarchy, ...] = ()
    # v1 controller → its hierarchy (co-mounted controllers point at the same Hierarchy).
    by_controller: dict[str, Hierarchy] = field(default_factory=dict)

    def describe(self) -> dict[str, str]:
        """Mount facts for ``cgctl check``."""
        out: dict[str, str] = {"cgroup_mode": self.mode.value if self.mode else "none"}
        if self.unified:
            out["cgroup2_mount"] = self.unified
        for hierarchy in self.hierarchies:
            label = ",".join(sorted(hierarchy.controllers)) or f"name={hierarchy.name}"
            out[f"cgroup1_mount[{label}]"] = hierarchy.mountpoint
        return out


def _under(path: str, base: str) -> bool:
    base = base.rstrip("/") or "/"
    return path == base or path.startswith(base + "/") or base == "/"


def parse_mountinfo(text: str, mountpoint: str = "/sys/fs/cgroup") -> CgroupLayout:
    """Parse mountinfo text. Format (proc(5)): ``ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] -
    FSTYPE SOURCE SUPEROPTS``; the optional tags end at the lone ``-``."""
    unified: str | None = None
    unified_options: frozenset[str] = frozenset()
    hierarchies: dict[str, Hierarchy] = {}
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 4:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        fstype, super_options = fields[sep + 1], fields[sep + 3].split(",")
        if not _under(point, mountpoint):
            continue
        if fstype == "cgroup2":
            # Prefer the mount point itself (pure v2), then the conventional hybrid place.
            preferred = unified is None or point == mountpoint.rstrip("/")
            if preferred:
                unified, unified_options = point, frozenset(super_options)
        elif fstype == "cgroup":
            controllers = frozenset(opt for opt in super_options if opt in V1_CONTROLLERS)
            names = [opt.split("=", 1)[1] for opt in super_options if opt.startswith("name=")]
            # A hierarchy mounted twice (bind mounts) keeps its first mount point.
            key = ",".join(sorted(controllers)) or f"name={names[0] if names else ''}"
            hierarchies.setdefault(key, Hierarchy(point, controllers, names[0] if names else None, root))
    ordered = tuple(sorted(hierarchies.values(), key=lambda h: h.mountpoint))
    by_controller = {c: h for h in ordered for c in h.controllers}
    if by_controller:
        mode: CgroupMode | None = CgroupMode.HYBRID if unified else CgroupMode.V1
    elif unified:
        mode = CgroupMode.V2
    else:
        mode = CgroupMode.V1 if ordered else None
    return CgroupLayout(mode, unified, unified_options, ordered, by_controller)


def read_layout(mountpoint: str = "/sys/fs/cgroup") -> CgroupLayout:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read(), mountpoint)
