"""cgroup v1 (and hybrid) operations (blocking; the driver runs them in ``asyncio.to_thread``).

A group lives in every hierarchy cgctl uses (``v1.HIERARCHIES`` that are mounted; co-mounted
controllers share one tree) under the same relative path. It *exists* when its directory exists in the
primary hierarchy (``v1.PRIMARY_PREFERENCE``); ``create`` makes it in the primary first and in the others
after, undoing its own mkdirs on failure, and ``remove`` removes the primary last. A group that exists in
the primary but lacks a directory elsewhere (an interrupted remove) is healed by the next ``set`` or
``move`` that needs that hierarchy, so observing stays one directory open per hierarchy read.

v1 specifics handled here: a new cpuset group starts with empty ``cpuset.cpus``/``mems`` and cannot take
tasks, so create copies the parent's; moving into an empty cpuset is refused with an explanation;
``memory.limit_in_bytes`` refuses to go below usage with EBUSY, which is reported with the usage.
"""

from __future__ import annotations

import _thread  # threading.Lock and RLock are these; the threading module costs ~1 ms of every start
import errno as errno_mod
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import ExitStack

from drivers.api import (
    Capabilities,
    CgroupMode,
    CpuList,
    DriverError,
    GroupBusyError,
    GroupPath,
    Knob,
    ObservedGroup,
    SettingKey,
    UnsupportedError,
    Value,
    split_key,
)
from drivers.cgroupfs import v1
from drivers.cgroupfs.common import (
    WriteContext,
    apply_writes,
    check_not_systemd_owned,
    mark_created,
    missing_parent,
    online_list,
    read_values,
    rmdir_with_retry,
    root_parts,
    stale_retry,
    usage_wanted,
    write_is_quick,
    write_pid,
)
from drivers.cgroupfs.freezer import set_frozen_v1
from drivers.cgroupfs.mountinfo import CgroupLayout
from drivers.cgroupfs.safefs import GroupDir, Tree

CPUSET_FILES = ("cpuset.cpus", "cpuset.mems")  # cpus before mems, as the kernel checks both on attach


class V1Ops:
    def __init__(self, layout: CgroupLayout, root: str) -> None:
        self.layout = layout
        self.mode = layout.mode or CgroupMode.V1
        self.parts = root_parts(root)
        self.tree_for: dict[str, Tree] = {}
        by_mount: dict[str, Tree] = {}
        try:
            for controller in v1.HIERARCHIES:
                hierarchy = layout.by_controller.get(controller)
                if hierarchy is None:
                    continue
                if hierarchy.mountpoint not in by_mount:
                    by_mount[hierarchy.mountpoint] = Tree(hierarchy.mountpoint, self.parts)
                self.tree_for[controller] = by_mount[hierarchy.mountpoint]
        except BaseException:
            for tree in by_mount.values():
                tree.close()
            raise
        if not self.tree_for:
            raise UnsupportedError("no cgroup v1 controller hierarchy that cgctl uses is mounted")
        self.primary = next(self.tree_for[c] for c in v1.PRIMARY_PREFERENCE if c in self.tree_for)
        # cpuset parents read with cgroup.clone_children = 1 during this apply (saves a read per new
        # group); forgotten at every observe, so a long-running agent re-reads it once per apply.
        self._cloning: set[tuple[str, ...]] = set()
        # (hierarchy, group) → files of a group this apply created that nothing has written yet: they
        # still hold v1.NEW_GROUP_FILES (the first write of each need not read it). Forgotten at observe.
        self._untouched: dict[tuple[str, GroupPath], set[str]] = {}
        # hierarchy → the NEW_GROUP_FILES it holds (cpu: quota and period; memory: limit and memsw)
        owner = {f: s.controller for s in v1.TABLE.values() for f in s.files if f in v1.NEW_GROUP_FILES}
        self._new_files: dict[str, frozenset[str]] = {
            tree.mountpoint: frozenset(f for f, c in owner.items() if self.tree_for.get(c) is tree)
            for tree in self.tree_for.values()
        }
        # key set → (hierarchy, keys) to read there, for observe (few distinct sets: one per group shape)
        self._read_plans: dict[frozenset[SettingKey], list[tuple[Tree, list[SettingKey]]]] = {}
        # every distinct tree, primary first
        self.trees: list[Tree] = [self.primary, *(t for t in by_mount.values() if t is not self.primary)]
        # serializes the writes that use the trees' cached directory handles
        self._lock = _thread.RLock()

    def close(self) -> None:
        for tree in self.trees:
            tree.close()

    def display(self, path: GroupPath) -> str:
        return self.primary.display(path)

    def _tree(self, knob: Knob, path: GroupPath) -> Tree:
        controller = v1.TABLE[knob].controller
        tree = self.tree_for.get(controller)
        if tree is None:
            raise UnsupportedError(f"the {controller} hierarchy is not mounted", group=path)
        return tree

    # -- observe ---------------------------------------------------------------------------------

    def observe(
        self,
        paths: Iterable[GroupPath],
        keys: Mapping[GroupPath, Collection[SettingKey]],
        state: frozenset[GroupPath] | None = None,
        usage: frozenset[GroupPath] | None = None,
        types: frozenset[GroupPath] = frozenset(),  # v1 has no threaded mode: cgroup_type stays None
    ) -> dict[GroupPath, ObservedGroup]:
        self._cloning.clear()
        self._untouched.clear()
        out: dict[GroupPath, ObservedGroup] = {}
        order = list(dict.fromkeys([(), *paths]))
        observed = Observed(order)
        for path in order:
            wanted = keys.get(path, ())
            out[path] = self._observe_one(
                path, wanted, observed, state is None or path in state, usage_wanted(path, wanted, usage), out
            )
        # a group is populated when it or any descendant holds processes
        for path, seen in out.items():
            if seen.populated:
                for depth in range(len(path)):
                    ancestor = out.get(path[:depth])
                    if ancestor is not None:
                        ancestor.populated = True
        return out

    def _reads_for(self, wanted: Collection[SettingKey]) -> list[tuple[Tree, list[SettingKey]]]:
        """Which of ``wanted`` to read in which hierarchy (primary first). Computed once per distinct
        key set: the groups of a policy mostly share one, and observe asks for every group."""
        cache_key = wanted if isinstance(wanted, frozenset) else frozenset(wanted)
        reads = self._read_plans.get(cache_key)
        if reads is None:
            by_tree: dict[int, list[SettingKey]] = {}
            for key in wanted:
                spec = v1.TABLE.get(split_key(key)[0])
                if spec is not None and spec.controller in self.tree_for:
                    by_tree.setdefault(id(self.tree_for[spec.controller]), []).append(key)
            reads = [(tree, by_tree[id(tree)]) for tree in self.trees if id(tree) in by_tree]
            self._read_plans[cache_key] = reads
        return reads

    def _observe_one(
        self,
        path: GroupPath,
        wanted: Collection[SettingKey],
        observed: Observed,
        with_state: bool,
        with_usage: bool,
        out: Mapping[GroupPath, ObservedGroup],
    ) -> ObservedGroup:
        gd = None if missing_parent(out, path) else self.primary.try_open(path)
        if gd is None:
            return ObservedGroup(exists=False, display=self.primary.display(path))
        # One open directory per hierarchy, opened only when something is read there (a plain dict and
        # try/finally: an ExitStack per group cost more than the reads on a 1000-group observe).
        dirs: dict[Tree, GroupDir | None] = {self.primary: gd}
        try:
            values: dict[SettingKey, Value] = {}
            for tree, tree_keys in self._reads_for(wanted):
                d = _dir_in(dirs, tree, path)
                if d is not None:
                    values.update(read_values(d, tree_keys, v1.TABLE))
            frozen = self_frozen = False
            freezer = self.tree_for.get("freezer")
            if with_state and freezer is not None:
                fd = _dir_in(dirs, freezer, path)
                if fd is not None:
                    state = (fd.read_optional("freezer.state") or "").strip()
                    frozen = state == "FROZEN"
                    if state != "THAWED":  # FROZEN or FREEZING: by its own request or its parent's?
                        self_frozen = (fd.read_optional("freezer.self_freezing") or "0").strip() == "1"
            current = None
            memory = self.tree_for.get("memory")
            if with_usage and memory is not None:
                md = _dir_in(dirs, memory, path)
                text = md.read_optional("memory.usage_in_bytes") if md is not None else None
                current = int(text) if text and text.strip().isdigit() else None
            return ObservedGroup(
                exists=True,
                values=values,
                frozen=frozen,
                self_frozen=self_frozen,
                populated=with_state and populated(gd, observed),
                memory_current=current,
                display=gd.display,
            )
        finally:
            for d in dirs.values():
                if d is not None:
                    d.close()

    # -- create / remove ---------------------------------------------------------------------------

    def _mkdir(self, tree: Tree, parts: tuple[str, ...], group: GroupPath) -> bool:
        """Create one directory; True if this call created it. In the cpuset hierarchy the new group
        must get cpus/mems before it can hold tasks: the kernel copies them itself when the parent has
        ``cgroup.clone_children`` set (cgctl sets it on its managed root, and children inherit it);
        otherwise they are copied here."""
        parent = tree.cached(parts[:-1], group[:-1] if group else group)
        try:
            parent.mkdir(parts[-1], group)
        except DriverError as exc:
            if exc.errno == errno_mod.EEXIST:
                return False
            raise
        tree.created(parts)
        if tree is not self.tree_for.get("cpuset") or parts[:-1] in self._cloning:
            return True
        if (parent.read_optional("cgroup.clone_children") or "").strip() == "1":
            self._cloning.add(parts[:-1])
            return True
        child = tree.cached(parts, group)
        for file in CPUSET_FILES:
            child.write(file, (parent.read_optional(file) or "").strip())
        if parts == tree.rel(()):
            child.write("cgroup.clone_children", "1")
        return True

    def create(self, path: GroupPath) -> None:
        if path == ():
            check_not_systemd_owned(self.trees, self.parts)
        with self._lock:
            stale_retry(self.trees, lambda: self._create(path))

    def _create(self, path: GroupPath) -> None:
        created: list[tuple[Tree, tuple[str, ...]]] = []
        full = len(self.parts) + len(path)
        # the managed root is created like mkdir -p; a group below it needs its parent
        depths = range(1, full + 1) if path == () else (full,)
        try:
            for tree in self.trees:
                rel = tree.rel(path)
                for depth in depths:
                    parts = rel if depth == full else rel[:depth]
                    if self._mkdir(tree, parts, path):
                        created.append((tree, parts))
                        if depth == full and (known := self._new_files[tree.mountpoint]):
                            self._untouched[(tree.mountpoint, path)] = set(known)
                    elif tree is self.primary and depth == full:
                        raise DriverError(
                            f"{tree.display(path)} already exists",
                            group=path,
                            target=tree.display(path),
                            errno=errno_mod.EEXIST,
                        )
        except BaseException:
            for tree, parts in reversed(created):
                self._untouched.pop((tree.mountpoint, path), None)
                tree.forget(parts)
                try:
                    with tree.open_rel(parts[:-1], path) as parent:
                        parent.rmdir(parts[-1], path)
                except DriverError:
                    pass  # best effort: the original error is the one to report
            raise
        # the primary hierarchy decides existence, so it alone carries the ownership mark
        mark_created(self.primary.cached(self.primary.rel(path), path))

    def remove(self, path: GroupPath) -> None:
        # Refuse before touching anything, so a busy group is left whole in every hierarchy.
        for tree in self.trees:
            gd = tree.try_open(path)
            if gd is None:
                continue
            with gd:
                reason = _busy_reason(gd)
                if reason is not None:
                    raise GroupBusyError(
                        f"cannot remove {gd.display}: {reason}",
                        group=path,
                        target=gd.display,
                        errno=errno_mod.EBUSY,
                    )
        for tree in self.trees:
            self._untouched.pop((tree.mountpoint, path), None)
        for tree in [*self.trees[1:], self.primary]:

            def busy_reason(tree: Tree = tree) -> str | None:
                gd = tree.try_open(path)
                if gd is None:
                    return None
                with gd:
                    return _busy_reason(gd)

            with self._lock:
                tree.forget(tree.rel(path))
                with tree.parent_of(path) as (parent, name):
                    rmdir_with_retry(parent, name, path, busy_reason)

    # -- settings --------------------------------------------------------------------------------

    def _open_healing(self, tree: Tree, path: GroupPath) -> GroupDir:
        """The group's (cached) directory in ``tree``; if only that hierarchy lacks it (an interrupted
        remove), recreate it there — the primary hierarchy says the group exists."""
        try:
            return tree.cached(tree.rel(path), path)
        except DriverError as exc:
            if (
                exc.errno != errno_mod.ENOENT
                or tree is self.primary
                or not path
                or not self.primary.exists(path)
            ):
                raise
        self._mkdir(tree, tree.rel(path), path)
        return tree.cached(tree.rel(path), path)

    def set(self, path: GroupPath, key: SettingKey, value: Value) -> None:
        knob, device = split_key(key)
        if knob in v1.UNSUPPORTED:
            raise UnsupportedError(f"{knob.value}: {v1.UNSUPPORTED[knob]}", group=path)
        spec = v1.TABLE[knob]
        tree = self._tree(knob, path)

        untouched = self._untouched.get((tree.mountpoint, path))

        def write() -> None:
            gd = self._open_healing(tree, path)
            context = WriteContext(gd, tree, path, untouched or (), v1.NEW_GROUP_FILES)
            alternatives = spec.write(value, device, context)
            if untouched:  # whatever happens next, these files may no longer hold the defaults
                for writes in alternatives:
                    untouched.difference_update(file for file, _ in writes)
            try:
                apply_writes(gd, alternatives)
            except DriverError as exc:
                if knob is Knob.MEMORY_MAX and exc.errno == errno_mod.EBUSY:
                    exc.message = (
                        f"{exc.message}: the kernel could not reclaim below the new limit (current usage "
                        f"{(gd.read_optional('memory.usage_in_bytes') or '?').strip()}, peak "
                        f"{(gd.read_optional('memory.max_usage_in_bytes') or '?').strip()})"
                    )
                raise

        with self._lock:
            stale_retry([tree], write)

    def effective(self, key: SettingKey, value: Value) -> Value:
        knob = split_key(key)[0]
        return v1.TABLE[knob].effective(value) if knob in v1.TABLE else value

    def write_is_quick(self, path: GroupPath, key: SettingKey, value: Value) -> bool:
        def usage() -> int | None:
            memory = self.tree_for.get("memory")
            if memory is None:
                return None
            try:
                with self._lock:
                    text = memory.cached(memory.rel(path), path).read_optional("memory.usage_in_bytes")
            except DriverError:
                return None
            return int(text) if text and text.strip().isdigit() else None

        return write_is_quick(key, value, usage)

    # -- freezer, processes ----------------------------------------------------------------------

    def set_frozen(self, path: GroupPath, frozen: bool, timeout: float) -> float:
        freezer = self.tree_for.get("freezer")
        if freezer is None:
            raise UnsupportedError("the freezer hierarchy is not mounted", group=path)
        with freezer.open(path) as gd:
            return set_frozen_v1(gd, frozen, timeout)

    def move(self, path: GroupPath, pids: Sequence[int]) -> None:
        with self._lock:
            stale_retry(self.trees, lambda: self._move(path, pids))

    def _move(self, path: GroupPath, pids: Sequence[int]) -> None:
        with ExitStack() as stack:
            targets: list[tuple[GroupDir, int]] = []
            for tree in self.trees:
                gd = self._open_healing(tree, path)
                if tree is self.tree_for.get("cpuset"):
                    for file in CPUSET_FILES:
                        if not (gd.read_optional(file) or "").strip():
                            raise DriverError(
                                f"cannot move processes into {gd.display}: its {file} is empty (a v1 "
                                "cpuset with no CPUs or memory nodes cannot hold tasks)",
                                group=path,
                                target=gd.path_of(file),
                            )
                fd = gd.open("cgroup.procs", os.O_WRONLY)
                stack.callback(os.close, fd)
                targets.append((gd, fd))
            for pid in pids:  # each process into every hierarchy before the next one
                for gd, fd in targets:
                    write_pid(gd, fd, pid)

    # -- probe -----------------------------------------------------------------------------------

    def _probe_dir(self, tree: Tree) -> GroupDir | None:
        gd = tree.try_open(())
        if gd is not None:
            return gd
        with tree.open_rel((), ()) as top:
            for name in sorted(top.subdirs()):
                try:
                    return tree.open_rel((name,), ())
                except DriverError:
                    continue
        return None

    def probe(self, driver: str) -> Capabilities:
        mounted = {c for h in self.layout.hierarchies for c in h.controllers}
        unsupported: dict[Knob, str] = dict(v1.UNSUPPORTED)
        for knob, spec in v1.TABLE.items():
            if spec.controller not in self.tree_for:
                unsupported[knob] = f"the {spec.controller} hierarchy is not mounted"
        features: dict[str, bool] = {
            "cgroup.kill": False,
            "cgroup.freeze": False,
            "memory.peak": False,
            # per-group PSI files exist only on cgroup2; v1 groups have none
            "psi": False,
        }
        details: dict[str, str] = {}
        if os.path.exists("/proc/pressure/cpu"):
            details["psi_scope"] = "system-wide only (/proc/pressure); per-group PSI needs cgroup v2"
        for knob, (file, reason) in v1.FEATURE_FILES.items():
            tree = self.tree_for.get(v1.TABLE[knob].controller)
            if tree is None or knob in unsupported:
                continue
            # memsw files exist on the hierarchy root; bfq.weight only in non-root groups
            with tree.open_rel((), ()) as top:
                present = top.has(file)
            if not present:
                probe = self._probe_dir(tree)
                if probe is not None:
                    with probe:
                        present = probe.has(file)
                        details[f"feature_probe[{file}]"] = probe.display
                elif knob is Knob.IO_WEIGHT:
                    # no non-root blkio group to look in: BFQ's files exist once BFQ is registered,
                    # which is when a disk offers it as a scheduler
                    present = _bfq_offered()
            if not present:
                unsupported[knob] = reason
        features["swap_accounting"] = Knob.MEMORY_SWAP_MAX not in unsupported
        if Knob.IO_WEIGHT not in unsupported:
            details["io.weight"] = "blkio.bfq.weight: acts only on devices whose scheduler is bfq"
        details.update(self.layout.describe())
        details["primary_hierarchy"] = self.primary.mountpoint
        details["managed_root"] = (
            "/" + "/".join(self.parts) + " in each of " + ", ".join(t.mountpoint for t in self.trees)
        )
        details["kernel"] = os.uname().release
        if self.layout.unified:
            details["cgroup2_unified"] = f"{self.layout.unified} (no controllers: limits go through v1)"
        controllers = frozenset(mounted | ({"io"} if "blkio" in mounted else set()))
        return Capabilities(
            driver=driver,
            mode=self.mode,
            unsupported=unsupported,
            needs_subtree_control=False,
            cpuset_within_parent=True,
            swap_needs_memory_limit=True,
            controllers=controllers,
            can_freeze="freezer" in self.tree_for,
            online_cpus=CpuList.parse(online_list("/sys/devices/system/cpu/online", "0")),
            online_mems=CpuList.parse(online_list("/sys/devices/system/node/online", "0")),
            features=features,
            details=details,
        )


class Observed:
    """The paths one observe reads, with how many observed children each has (for populated())."""

    def __init__(self, paths: Iterable[GroupPath]) -> None:
        self.paths = frozenset(paths)
        self.children: dict[GroupPath, int] = {}
        for path in self.paths:
            if path:
                self.children[path[:-1]] = self.children.get(path[:-1], 0) + 1


def populated(gd: GroupDir, observed: Observed | None = None) -> bool:
    """Processes in this group or below (this hierarchy), depth first. Observed groups are judged
    separately by the caller (observe propagates their state upwards), so only unobserved children are
    walked — and none when cgroupfs' link count (2 + subdirectories) shows every child is observed."""
    if (gd.read_optional("cgroup.procs") or "").strip():
        return True
    children = gd.nlink() - 2
    known = observed.children.get(gd.group, 0) if observed is not None else 0
    if children <= known:
        return False
    for name in gd.subdirs():
        if observed is not None and (*gd.group, name) in observed.paths:
            continue
        try:
            child = gd.child(name)
        except DriverError:
            continue  # removed meanwhile
        with child:
            if populated(child, observed):
                return True
    return False


def _dir_in(dirs: dict[Tree, GroupDir | None], tree: Tree, path: GroupPath) -> GroupDir | None:
    """The group's directory in ``tree`` for reading, made on first use (see Tree.for_reading: the
    primary hierarchy's, already open, says whether the group exists; the others' files are read by
    path, which saves a directory open and close per group and hierarchy)."""
    if tree not in dirs:
        dirs[tree] = tree.for_reading(path)
    return dirs[tree]


def _bfq_offered() -> bool:
    try:
        disks = os.listdir("/sys/block")
    except OSError:
        return False
    for disk in disks:
        try:
            with open(f"/sys/block/{disk}/queue/scheduler", "rb") as f:
                if b"bfq" in f.read().replace(b"[", b" ").replace(b"]", b" ").split():
                    return True
        except OSError:
            continue
    return False


def _busy_reason(gd: GroupDir) -> str | None:
    if (gd.read_optional("cgroup.procs") or "").strip():
        return "it holds processes"
    if gd.subdirs():
        return "it has child groups"
    return None
