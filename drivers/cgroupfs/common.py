"""Pieces both backends share: the managed root's path, the write sequence, retries and ownership checks.

All functions block; the driver calls them inside one ``asyncio.to_thread`` per operation or batch.
"""

from __future__ import annotations

import errno as errno_mod
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TypeVar

from drivers.api import (
    DriverError,
    GroupBusyError,
    GroupPath,
    Knob,
    NotOwnedError,
    ObservedGroup,
    SettingKey,
    UnsafePathError,
    Value,
    split_key,
)
from drivers.cgroupfs.knobs import KnobSpec, ParseError, Writes
from drivers.cgroupfs.safefs import GroupDir, Tree, check_name

T = TypeVar("T")

# The mark cgctl leaves on the directories it creates (cgroupfs keeps trusted.* xattrs since 5.x).
OWNER_XATTR = "trusted.cgctl"
OWNER_VALUE = b"created"
# systemd (>= 251) marks delegated cgroups with these; anything else with a unit suffix is systemd's.
DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")
UNIT_SUFFIXES = (".slice", ".scope", ".service")

# observe reads the group's memory usage only when the planner will compare it with one of these
MEMORY_USAGE_KEYS = frozenset({"memory.max", "memory.high", "memory.swap.max"})

# Writes the kernel completes at once. Memory limits may reclaim synchronously (seconds) unless they stay
# above usage; cpuset writes rebuild scheduling domains and may migrate pages.
QUICK_KNOBS = frozenset(
    {
        Knob.CPU_WEIGHT,
        Knob.CPU_MAX,
        Knob.PIDS_MAX,
        Knob.IO_WEIGHT,
        Knob.IO_MAX,
        Knob.MEMORY_MIN,
        Knob.MEMORY_LOW,
        Knob.MEMORY_OOM_GROUP,
    }
)
RECLAIMING_KNOBS = frozenset({Knob.MEMORY_MAX, Knob.MEMORY_HIGH})

RMDIR_TRIES = 10  # with 1 ms doubling backoff: ~1 s for processes that are still exiting (runc)
MOVE_EINVAL_TRIES = 5  # a task in TASK_NEW refuses to move for a moment (runc retries every 30 ms)


def root_parts(root: str) -> tuple[str, ...]:
    """``DriverOptions.root`` ("cgctl", "a/b") → components; the mount root itself is refused."""
    parts = tuple(p for p in root.strip().split("/") if p)
    if not parts:
        raise UnsafePathError(
            "the managed root must be a group below the cgroup mount, not the mount itself", value=root
        )
    for name in parts:
        check_name(name)
    return parts


def read_values(
    gd: GroupDir, keys: Iterable[SettingKey], table: Mapping[Knob, KnobSpec]
) -> dict[SettingKey, Value]:
    """Parse the requested settings from one open group; knobs whose file is absent are left out."""
    cache: dict[str, str | None] = {}

    def get(file: str) -> str | None:
        if file not in cache:
            cache[file] = gd.read_optional(file)
        return cache[file]

    values: dict[SettingKey, Value] = {}
    for key in keys:
        knob, device = split_key(key)
        spec = table.get(knob)
        if spec is None or get(spec.files[0]) is None:
            continue
        try:
            values[key] = spec.parse(get, device)
        except ParseError as exc:
            raise DriverError(
                f"cannot parse {gd.path_of(spec.files[0])}: {exc}",
                group=gd.group,
                target=gd.path_of(spec.files[0]),
            ) from None
    return values


def write_is_quick(key: SettingKey, value: Value, usage: Callable[[], int | None]) -> bool:
    """Whether setting ``key`` can neither block nor reclaim: see QUICK_KNOBS. ``usage`` reads the
    group's current memory usage (only called for memory limits)."""
    knob = split_key(key)[0]
    if knob in QUICK_KNOBS:
        return True
    if knob in RECLAIMING_KNOBS:
        if value is None:
            return True
        current = usage()
        return isinstance(value, int) and current is not None and value > current
    return knob is Knob.MEMORY_SWAP_MAX and value is None


def stale_retry(trees: Sequence[Tree], body: Callable[[], T]) -> T:
    """Run a write that uses cached directory handles; if it fails with ENOENT/ENODEV (a handle whose
    directory was removed behind cgctl's back, or a genuinely missing file), drop the caches and run it
    once more: the second run resolves every path afresh and reports the real error. The bodies are
    idempotent (create undoes its own mkdirs on failure; writes repeat the same values)."""
    try:
        return body()
    except DriverError as exc:
        if exc.errno not in (errno_mod.ENOENT, errno_mod.ENODEV):
            raise
    for tree in trees:
        tree.clear_cache()
    return body()


class WriteContext:
    """What a knob writer may read first: the group's own files and its parent's (same hierarchy).

    Files in ``untouched`` are known without reading them: in a group created in this apply, those
    nothing has written yet still hold the kernel's defaults for a new group (``defaults``)."""

    def __init__(
        self,
        gd: GroupDir,
        tree: Tree,
        group: GroupPath,
        untouched: Collection[str] = (),
        defaults: Mapping[str, str] | None = None,
    ) -> None:
        self.gd, self.tree, self.group = gd, tree, group
        self.untouched, self.defaults = untouched, defaults or {}

    def read(self, file: str) -> str | None:
        if file in self.untouched:
            return self.defaults[file]
        return self.gd.read_optional(file)

    def read_parent(self, file: str) -> str | None:
        parts = self.tree.rel(self.group)[:-1]
        return self.tree.cached(parts, self.group[:-1]).read_optional(file)


def apply_writes(gd: GroupDir, alternatives: Sequence[Writes]) -> None:
    """Write one alternative; move to the next only when its *first* write fails with EINVAL (nothing
    of it has landed then), as runc does for the cfs period/quota pair."""
    for index, writes in enumerate(alternatives):
        for position, (file, text) in enumerate(writes):
            try:
                gd.write(file, text)
            except DriverError as exc:
                if position == 0 and exc.errno == errno_mod.EINVAL and index + 1 < len(alternatives):
                    break
                raise
        else:
            return


def backoff_retry(
    action: Callable[[], None],
    retry_if: Callable[[DriverError], bool],
    tries: int,
    first_delay: float = 0.001,
) -> None:
    delay = first_delay
    for attempt in range(tries):
        try:
            action()
            return
        except DriverError as exc:
            if attempt + 1 == tries or not retry_if(exc):
                raise
        time.sleep(delay)
        delay *= 2


def rmdir_with_retry(
    parent: GroupDir, name: str, group: GroupPath, busy_reason: Callable[[], str | None]
) -> None:
    """rmdir; EBUSY with a reason (populated, children) → GroupBusyError at once; EBUSY without one means
    processes are still exiting, so retry with backoff. A directory already gone counts as removed."""

    def attempt() -> None:
        try:
            parent.rmdir(name, group)
        except DriverError as exc:
            if exc.errno == errno_mod.ENOENT:
                return
            raise

    def retry(exc: DriverError) -> bool:
        if not isinstance(exc, GroupBusyError):
            return False
        reason = busy_reason()
        if reason is not None:
            exc.message = f"{exc.message}: {reason}"
            return False
        return True

    backoff_retry(attempt, retry, RMDIR_TRIES)


def write_pid(gd: GroupDir, fd: int, pid: int) -> None:
    """One pid per write(2) to an open cgroup.procs; ESRCH names the pid, EINVAL (TASK_NEW) is retried."""

    def attempt() -> None:
        gd.write_fd(fd, "cgroup.procs", str(pid))

    try:
        backoff_retry(attempt, lambda e: e.errno == errno_mod.EINVAL, MOVE_EINVAL_TRIES, first_delay=0.03)
    except DriverError as exc:
        if exc.errno == errno_mod.ESRCH:
            exc.message = f"cannot move process {pid}: it does not exist (exited?)"
        else:
            exc.message = f"cannot move process {pid} into {gd.display}"
        raise


def check_not_systemd_owned(trees: Sequence[Tree], parts: tuple[str, ...]) -> None:
    """Refuse a managed root inside a systemd unit's cgroup unless systemd delegated it (xattr)."""
    units = [i for i, name in enumerate(parts[:-1]) if name.endswith(UNIT_SUFFIXES)]
    if not units:
        return
    owner = parts[: units[-1] + 1]
    for tree in trees:
        try:
            with tree.open_rel(owner, ()) as gd:
                if any(gd.getxattr(x) == b"1" for x in DELEGATE_XATTRS):
                    return
        except DriverError:
            continue
    where = "/".join(owner)
    raise NotOwnedError(
        f"{where} belongs to systemd and is not delegated to cgctl: use `driver: systemd`, or run cgctl in a "
        "unit with Delegate=yes and put the root inside it",
        target=where,
    )


def usage_wanted(
    path: GroupPath, wanted: Collection[SettingKey], usage: Collection[GroupPath] | None
) -> bool:
    """Whether an observe reads the group's memory usage (see Driver.observe's ``usage``)."""
    if usage is not None:
        return path in usage
    return any(k in MEMORY_USAGE_KEYS for k in wanted)


def missing_parent(seen: Mapping[GroupPath, ObservedGroup], path: GroupPath) -> bool:
    """Whether an observe already found ``path``'s parent missing (so the group cannot exist either:
    a first apply of N groups then costs no lookup per group)."""
    parent = seen.get(path[:-1]) if path else None
    return parent is not None and not parent.exists


def mark_created(gd: GroupDir) -> None:
    gd.setxattr(OWNER_XATTR, OWNER_VALUE)


def is_marked(gd: GroupDir) -> bool:
    return gd.getxattr(OWNER_XATTR) == OWNER_VALUE


def parse_flat_keyed(text: str | None) -> dict[str, str]:
    """``key value`` lines (cgroup.events, memory.events) → dict."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out[key] = value.strip()
    return out


def online_list(path: str, fallback: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode().strip() or fallback
    except OSError:
        return fallback


def kernel_cmdline() -> list[str]:
    try:
        with open("/proc/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split()
    except OSError:
        return []
