"""cgroup v2 operations (blocking; the driver runs each call, or batch, in one ``asyncio.to_thread``).

One tree: the unified mount. The managed root is a directory below it; every group path is relative to
the managed root. Controllers reach a group only through its ancestors' ``cgroup.subtree_control``
(enabled top-down by :meth:`V2Ops.enable`, which for the managed root also covers the ancestors up to
the mount — only what is missing, and the undo removes only what this driver added).
"""

from __future__ import annotations

import _thread  # threading.Lock and RLock are these; the threading module costs ~1 ms of every start
import errno as errno_mod
import os
from collections.abc import Collection, Iterable, Mapping, Sequence

from drivers.api import (
    Capabilities,
    CgroupMode,
    CpuList,
    DriverError,
    GroupPath,
    Knob,
    ObservedGroup,
    SettingKey,
    UnsupportedError,
    Value,
    split_key,
)
from drivers.cgroupfs import v2
from drivers.cgroupfs.common import (
    UNIT_SUFFIXES,
    WriteContext,
    apply_writes,
    check_not_systemd_owned,
    kernel_cmdline,
    mark_created,
    missing_parent,
    online_list,
    parse_flat_keyed,
    read_values,
    rmdir_with_retry,
    root_parts,
    stale_retry,
    usage_wanted,
    write_is_quick,
    write_pid,
)
from drivers.cgroupfs.freezer import set_frozen_v2
from drivers.cgroupfs.mountinfo import CgroupLayout
from drivers.cgroupfs.safefs import GroupDir, Tree


def _cgroup_type(gd: GroupDir) -> str | None:
    return (gd.read_optional("cgroup.type") or "").strip() or None


class V2Ops:
    mode = CgroupMode.V2

    def __init__(self, layout: CgroupLayout, root: str) -> None:
        assert layout.unified is not None
        self.layout = layout
        self.parts = root_parts(root)
        self.tree = Tree(layout.unified, self.parts)
        # mount-relative directory → controllers this driver added to its subtree_control
        self.added: dict[tuple[str, ...], list[str]] = {}
        # serializes the writes that use the tree's cached directory handles
        self._lock = _thread.RLock()

    def close(self) -> None:
        self.tree.close()

    def display(self, path: GroupPath) -> str:
        return self.tree.display(path)

    # -- observe ---------------------------------------------------------------------------------

    def observe(
        self,
        paths: Iterable[GroupPath],
        keys: Mapping[GroupPath, Collection[SettingKey]],
        state: frozenset[GroupPath] | None = None,
        usage: frozenset[GroupPath] | None = None,
        types: frozenset[GroupPath] = frozenset(),
    ) -> dict[GroupPath, ObservedGroup]:
        out: dict[GroupPath, ObservedGroup] = {}
        for path in dict.fromkeys([(), *paths]):
            gd = None if missing_parent(out, path) else self.tree.try_open(path)
            if gd is None:
                out[path] = ObservedGroup(exists=False, display=self.tree.display(path))
                continue
            with gd:
                wanted = keys.get(path, ())
                with_state = state is None or path in state
                events = parse_flat_keyed(gd.read_optional("cgroup.events")) if with_state else {}
                current = None
                if usage_wanted(path, wanted, usage):
                    text = gd.read_optional("memory.current")
                    current = int(text) if text and text.strip().isdigit() else None
                out[path] = ObservedGroup(
                    exists=True,
                    values=read_values(gd, wanted, v2.TABLE),
                    frozen=events.get("frozen") == "1",
                    self_frozen=with_state and (gd.read_optional("cgroup.freeze") or "0").strip() == "1",
                    populated=events.get("populated") == "1",
                    memory_current=current,
                    subtree_control=frozenset((gd.read_optional("cgroup.subtree_control") or "").split()),
                    cgroup_type=_cgroup_type(gd) if path in types else None,
                    display=gd.display,
                )
        return out

    # -- create / remove ---------------------------------------------------------------------------

    def create(self, path: GroupPath) -> None:
        if path == ():
            check_not_systemd_owned([self.tree], self.parts)
        with self._lock:
            stale_retry([self.tree], lambda: self._create(path))

    def _create(self, path: GroupPath) -> None:
        # the managed root is created like mkdir -p; a group below it needs its parent
        rel = self.tree.rel(path)
        start = 1 if path == () else len(rel)
        for depth in range(start, len(rel) + 1):
            parent = self.tree.cached(rel[: depth - 1], path[:-1] if path else ())
            try:
                parent.mkdir(rel[depth - 1], path)
            except DriverError as exc:
                if exc.errno != errno_mod.EEXIST or depth == len(rel):
                    raise
            else:
                self.tree.created(rel[:depth])
        mark_created(self.tree.cached(rel, path))

    def remove(self, path: GroupPath) -> None:
        def busy_reason() -> str | None:
            gd = self.tree.try_open(path)
            if gd is None:
                return None
            with gd:
                if parse_flat_keyed(gd.read_optional("cgroup.events")).get("populated") == "1":
                    return "it holds processes"
                if gd.subdirs():
                    return "it has child groups"
            return None

        with self._lock:
            self.tree.forget(self.tree.rel(path))
            with self.tree.parent_of(path) as (parent, name):
                rmdir_with_retry(parent, name, path, busy_reason)

    # -- settings --------------------------------------------------------------------------------

    def set(self, path: GroupPath, key: SettingKey, value: Value) -> None:
        knob, device = split_key(key)
        spec = v2.TABLE[knob]

        def write() -> None:
            gd = self.tree.cached(self.tree.rel(path), path)
            apply_writes(gd, spec.write(value, device, WriteContext(gd, self.tree, path)))

        with self._lock:
            stale_retry([self.tree], write)

    def effective(self, key: SettingKey, value: Value) -> Value:
        return v2.TABLE[split_key(key)[0]].effective(value)

    def write_is_quick(self, path: GroupPath, key: SettingKey, value: Value) -> bool:
        def usage() -> int | None:
            try:
                with self._lock:
                    text = self.tree.cached(self.tree.rel(path), path).read_optional("memory.current")
            except DriverError:
                return None
            return int(text) if text and text.strip().isdigit() else None

        return write_is_quick(key, value, usage)

    def _enable_dirs(self, path: GroupPath) -> list[tuple[str, ...]]:
        """Mount-relative dirs whose subtree_control serves ``path``'s children, top-down. For the managed
        root: also its ancestors, from the nearest systemd unit (a delegated one: ours to write) or the
        mount root."""
        if path != ():
            return [self.tree.rel(path)]
        units = [i for i, name in enumerate(self.parts[:-1]) if name.endswith(UNIT_SUFFIXES)]
        start = units[-1] + 1 if units else 0
        return [self.parts[:depth] for depth in range(start, len(self.parts) + 1)]

    def enable(self, path: GroupPath, controllers: Collection[str]) -> None:
        for parts in self._enable_dirs(path):
            with self.tree.open_rel(parts, path) as gd:
                have = set((gd.read_optional("cgroup.subtree_control") or "").split())
                # one controller per write: the kernel applies a multi-controller write all-or-nothing,
                # and single writes name the controller that failed
                for controller in sorted(set(controllers) - have):
                    gd.write("cgroup.subtree_control", f"+{controller}")
                    self.added.setdefault(parts, []).append(controller)

    def make_threaded(self, path: GroupPath) -> None:
        """A group created in a threaded subtree is "domain invalid" until this write (one-way)."""

        def write() -> None:
            self.tree.cached(self.tree.rel(path), path).write("cgroup.type", "threaded")

        with self._lock:
            stale_retry([self.tree], write)

    def disable(self, path: GroupPath, controllers: Collection[str]) -> None:
        for parts in reversed(self._enable_dirs(path)):
            added = self.added.get(parts, [])
            with self.tree.open_rel(parts, path) as gd:
                for controller in [c for c in reversed(added) if c in controllers]:
                    gd.write("cgroup.subtree_control", f"-{controller}")
                    added.remove(controller)

    # -- freezer, processes ----------------------------------------------------------------------

    def _ancestor_frozen(self, path: GroupPath) -> bool:
        rel = self.tree.rel(path)
        for depth in range(len(rel) - 1, 0, -1):
            with self.tree.open_rel(rel[:depth], path) as gd:
                if (gd.read_optional("cgroup.freeze") or "0").strip() == "1":
                    return True
        return False

    def set_frozen(self, path: GroupPath, frozen: bool, timeout: float) -> float:
        with self.tree.open(path) as gd:
            if not gd.has("cgroup.freeze"):
                raise UnsupportedError(
                    "this kernel has no cgroup.freeze (needs Linux 5.2)",
                    group=path,
                    target=gd.path_of("cgroup.freeze"),
                )
            return set_frozen_v2(
                gd, frozen, timeout, ancestor_frozen=not frozen and self._ancestor_frozen(path)
            )

    def move(self, path: GroupPath, pids: Sequence[int]) -> None:
        def write() -> None:
            gd = self.tree.cached(self.tree.rel(path), path)
            fd = gd.open("cgroup.procs", os.O_WRONLY)
            try:
                for pid in pids:
                    write_pid(gd, fd, pid)
            finally:
                os.close(fd)

        with self._lock:
            stale_retry([self.tree], write)

    # -- probe -----------------------------------------------------------------------------------

    def _probe_dir(self) -> GroupDir | None:
        """A non-root group to look for feature files in: the managed root, else any child of the mount."""
        gd = self.tree.try_open(())
        if gd is not None:
            return gd
        with self.tree.open_rel((), ()) as top:
            for name in sorted(top.subdirs()):
                try:
                    return self.tree.open_rel((name,), ())
                except DriverError:
                    continue
        return None

    def probe(self, driver: str) -> Capabilities:
        parent_parts = self.parts[:-1]
        with self.tree.open_rel(parent_parts, ()) as parent:
            controllers = frozenset((parent.read_optional("cgroup.controllers") or "").split())
            parent_display = parent.display
        with self.tree.open_rel((), ()) as top:
            psi = top.has("cpu.pressure")
        unsupported: dict[Knob, str] = {}
        for knob, spec in v2.TABLE.items():
            if spec.controller not in controllers:
                unsupported[knob] = (
                    f"the {spec.controller} controller is not available here "
                    f"(not in {parent_display}/cgroup.controllers)"
                )
        cmdline = kernel_cmdline()
        no_swap = "swapaccount=0" in cmdline or "cgroup.memory=noswap" in cmdline
        features: dict[str, bool] = {"psi": psi}
        details: dict[str, str] = {}
        probe = self._probe_dir()
        try:
            has = probe.has if probe is not None else (lambda _name: False)
            for name in ("cgroup.kill", "cgroup.freeze", "memory.peak"):
                features[name] = has(name)
            memory_on = has("memory.max")
            # where no group with memory enabled exists yet, only the command line can tell
            features["swap_accounting"] = not no_swap and (has("memory.swap.max") or not memory_on)
            if no_swap:
                unsupported.setdefault(
                    Knob.MEMORY_SWAP_MAX,
                    "swap accounting is disabled on the kernel command line "
                    "(swapaccount=0 / cgroup.memory=noswap)",
                )
            for knob, file in v2.FEATURE_FILES.items():
                # judge a feature file only where its controller is enabled (else it is absent anyway)
                marker = {"memory": "memory.max", "io": "io.max"}[v2.TABLE[knob].controller]
                if has(marker) and not has(file):
                    unsupported.setdefault(knob, f"this kernel has no {file}")
            details["feature_probe"] = (
                probe.display
                if probe is not None
                else ("none: no non-root cgroup exists yet, file-probed features are reported absent")
            )
        finally:
            if probe is not None:
                probe.close()
        details.update(self.layout.describe())
        details["cgroup2_options"] = ",".join(sorted(self.layout.unified_options))
        details["managed_root"] = self.tree.display(())
        details["kernel"] = os.uname().release
        return Capabilities(
            driver=driver,
            mode=CgroupMode.V2,
            unsupported=unsupported,
            needs_subtree_control=True,
            controllers=controllers,
            can_freeze=features["cgroup.freeze"] or probe is None,
            online_cpus=CpuList.parse(online_list("/sys/devices/system/cpu/online", "0")),
            online_mems=CpuList.parse(online_list("/sys/devices/system/node/online", "0")),
            features=features,
            details=details,
        )
