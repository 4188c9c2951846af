"""Planning: a pure function from (desired, observed, capabilities, last applied) to an ordered plan.

Nothing here touches the system. Ordering is where correctness lives (ARCHITECTURE.md, anchors §3):

* the managed root and then every group are created parents-first;
* on cgroup v2, controllers are enabled in ``cgroup.subtree_control`` top-down, only those some
  descendant needs, right after the group is created and before any child is configured;
* inside a group: cpuset first (a v1 cpuset group is empty until cpus/mems are set), then memory with
  ``memory.high`` lowered before ``memory.max`` (and raised after it), then everything else;
* where a child's cpuset must stay within its parent's at every write (v1), an existing group's cpuset
  that shrinks is written after all the rest, children-first; one that changes to a set that is neither
  wider nor narrower first widens to old ∪ new (parents-first, with the rest) and then shrinks;
* thaws, then freezes, come after every limit is in place (freezing last);
* removals (``--prune``) run children-first, and only for empty groups cgctl created.

A setting the policy no longer names but that cgctl set on an earlier apply goes back to the kernel's
default (the "reset" in the plan); settings cgctl never set are left alone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from drivers.api import (
    KERNEL_DEFAULTS,
    Capabilities,
    CpuList,
    GroupPath,
    Knob,
    ObservedGroup,
    SettingKey,
    Value,
    format_path,
    format_value,
    split_key,
)
from drivers.records import field, record


class DesiredGroup(Protocol):
    """What the planner needs of a policy group (cgctl.policy.GroupSpec satisfies it)."""

    @property
    def resources(self) -> Mapping[SettingKey, Value]: ...

    @property
    def frozen(self) -> bool | None: ...


class Describer(Protocol):
    """How a driver names where a setting lands and how it writes a value (drivers.api.Driver)."""

    def target_of(self, path: GroupPath, key: SettingKey) -> str: ...

    def describe_value(self, key: SettingKey, value: Value) -> str: ...

    def describe_group(self, path: GroupPath) -> str: ...


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@record(frozen=True)
class PlanIssue:
    severity: Severity
    group: GroupPath
    key: str | None
    message: str
    where: str = ""  # "file:line:col: field" when the policy says where

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        subject = format_path(self.group) + (f" {self.key}" if self.key else "")
        return f"{prefix}{self.severity}: {subject}: {self.message}"


class OpKind(enum.StrEnum):
    CREATE = "create"
    ENABLE = "enable"
    SET = "set"
    RESET = "reset"
    THREADED = "thread"  # v2: write "threaded" to a new group's cgroup.type (it is in a threaded subtree)
    THAW = "thaw"
    FREEZE = "freeze"
    REMOVE = "remove"


# Each kind as plan lines show it, padded to line up (formatting an enum member is slow, at 5000 lines).
_LABELS = {kind: f"{kind.value:<6}" for kind in OpKind}


@record(frozen=True)
class Op:
    """One step of a plan, with what was there before (for diff output and for rollback)."""

    kind: OpKind
    path: GroupPath
    key: SettingKey | None = None
    old: Value = None
    new: Value = None
    controllers: frozenset[str] = frozenset()
    # REMOVE only: the group's settings before removal, so a rollback can recreate it faithfully.
    snapshot: tuple[tuple[SettingKey, Value], ...] = ()

    def describe(self, driver: Describer | None = None) -> str:
        """One plan line; with a driver, in its terms (a file path, or a unit and its properties)."""
        if self.kind in (OpKind.SET, OpKind.RESET) and self.key is not None:
            if driver is None:
                old, new = format_value(self.old), format_value(self.new)
                return f"{_LABELS[self.kind]} {format_path(self.path)} {self.key}: {old} -> {new}"
            old, new = driver.describe_value(self.key, self.old), driver.describe_value(self.key, self.new)
            return f"{_LABELS[self.kind]} {driver.target_of(self.path, self.key)}: {old} -> {new}"
        where = format_path(self.path) if driver is None else driver.describe_group(self.path)
        if self.kind is OpKind.ENABLE:
            return f"{_LABELS[self.kind]} {where} subtree_control: +{' +'.join(sorted(self.controllers))}"
        if self.kind is OpKind.THREADED:
            return f"{_LABELS[self.kind]} {where} cgroup.type: domain invalid -> threaded"
        return f"{_LABELS[self.kind]} {where}"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"op": self.kind.value, "group": format_path(self.path)}
        if self.key is not None:
            out.update(key=self.key, old=format_value(self.old), new=format_value(self.new))
        if self.controllers:
            out["controllers"] = sorted(self.controllers)
        return out


@record
class Plan:
    ops: list[Op] = field(default_factory=list)
    issues: list[PlanIssue] = field(default_factory=list)
    # Groups the plan left alone on purpose, with the reason (e.g. a populated group not pruned).
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[PlanIssue]:
        return [i for i in self.issues if i.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[PlanIssue]:
        return [i for i in self.issues if i.severity is Severity.WARNING]

    @property
    def in_sync(self) -> bool:
        return not self.ops

    def to_json(self) -> dict[str, object]:
        return {
            "in_sync": self.in_sync,
            "ops": [op.to_json() for op in self.ops],
            "errors": [str(i) for i in self.errors],
            "warnings": [str(i) for i in self.warnings],
            "notes": list(self.notes),
        }


@record(frozen=True)
class PlanInput:
    desired: Mapping[GroupPath, DesiredGroup]
    observed: Mapping[GroupPath, ObservedGroup]
    capabilities: Capabilities
    # Keys cgctl set on its last successful apply, per group (the "last-applied" state).
    last_applied: Mapping[GroupPath, frozenset[SettingKey]] = field(default_factory=dict)
    # Groups cgctl created (ownership), for --prune.
    owned: frozenset[GroupPath] = frozenset()
    prune: bool = False
    # "error": a knob the host cannot honour stops the plan; "warn": it is reported and left out.
    on_unsupported: str = "error"
    # Maps a setting back to the policy text ("file:line:col: groups.web.memory.max").
    where: Callable[[GroupPath, SettingKey | None], str] = lambda path, key: ""
    # The driver's normalisation of a value (see Driver.effective_value).
    effective: Callable[[SettingKey, Value], Value] = lambda key, value: value


def _ancestors(path: GroupPath) -> list[GroupPath]:
    return [path[:i] for i in range(len(path))]


def _sorted_parents_first(paths: Iterable[GroupPath]) -> list[GroupPath]:
    return sorted(paths, key=lambda p: (len(p), p))


# Order of settings inside one group; memory.high/max are handled specially (see _group_settings).
_KNOB_ORDER: dict[Knob, int] = {
    knob: i
    for i, knob in enumerate(
        [
            Knob.CPUSET_CPUS,
            Knob.CPUSET_MEMS,
            Knob.MEMORY_HIGH,
            Knob.MEMORY_MAX,
            Knob.MEMORY_SWAP_MAX,
            Knob.MEMORY_LOW,
            Knob.MEMORY_MIN,
            Knob.MEMORY_OOM_GROUP,
            Knob.CPU_WEIGHT,
            Knob.CPU_MAX,
            Knob.IO_WEIGHT,
            Knob.IO_MAX,
            Knob.PIDS_MAX,
        ]
    )
}


def _as_limit(value: Value) -> float:
    """A memory limit for comparisons: None (max) is infinite."""
    if value is None:
        return float("inf")
    assert isinstance(value, int)
    return float(value)


def _rank(op: Op) -> tuple[int, str]:
    assert op.key is not None
    return _KNOB_ORDER[split_key(op.key)[0]], op.key


_HIGH, _MAX, _SWAP_MAX = Knob.MEMORY_HIGH.value, Knob.MEMORY_MAX.value, Knob.MEMORY_SWAP_MAX.value


def _order_settings(ops: list[Op]) -> list[Op]:
    if len(ops) < 2:
        return ops
    ordered = sorted(ops, key=_rank)
    by_key = {op.key: op for op in ordered}  # memory.high/max have no device: key is the knob
    high, mx = by_key.get(_HIGH), by_key.get(_MAX)
    if high is not None and mx is not None and _as_limit(high.new) > _as_limit(high.old):
        # memory.high is being raised: raise (or set) memory.max first, so high never sits above
        # a stale lower max; when high is lowered it goes first so reclaim starts gently.
        ordered.remove(high)
        ordered.insert(ordered.index(mx) + 1, high)
    return ordered


def _cpuset_steps(op: Op, shrinking: list[Op]) -> list[Op]:
    """The steps of an existing group's setting where cpusets must nest (v1): a cpuset that only grows
    stays in place; one that shrinks moves to ``shrinking``; one that does both grows to the union now
    and shrinks later. Other settings are returned unchanged."""
    old, new = op.old, op.new
    if not (isinstance(old, CpuList) and isinstance(new, CpuList) and old.ids and new.ids):
        return [op]
    before, after = set(old.ids), set(new.ids)
    if after >= before:
        return [op]
    if after < before:
        shrinking.append(op)
        return []
    union = CpuList(tuple(sorted(before | after)))
    shrinking.append(Op(OpKind.SET, op.path, op.key, union, new))
    return [Op(OpKind.SET, op.path, op.key, old, union)]


def _resets_under_shrinking(settings: dict[GroupPath, list[Op]], shrinking: list[Op]) -> list[Op]:
    """Where cpusets must nest (v1), a cpuset going back to "inherit" is written as a copy of its
    parent's list at that moment: under a parent that shrinks in this plan it must come after the
    shrink, and a child holding CPUs outside the parent's new list first narrows to it (before the
    parent, which the kernel otherwise refuses with EBUSY). Moves those resets out of ``settings``,
    adds the narrowing steps to ``shrinking`` and returns the resets to run after it, parents-first."""
    shrink_to = {(op.path, op.key): op.new for op in shrinking}
    deferred: list[Op] = []
    for path, ops in settings.items():
        for op in list(ops):
            target = shrink_to.get((path[:-1], op.key)) if path and op.kind is OpKind.RESET else None
            if not isinstance(target, CpuList):
                continue
            ops.remove(op)
            old = op.old
            if isinstance(old, CpuList) and not set(old.ids) <= set(target.ids):
                shrinking.append(Op(OpKind.SET, path, op.key, old, target))
                old = target
            deferred.append(Op(OpKind.RESET, path, op.key, old, op.new))
    return sorted(deferred, key=lambda op: (len(op.path), op.path))


# cgroup v2 threaded mode (cgroup-v2.rst, "Threads"): in a threaded subtree only the threaded controllers
# work — of cgctl's knobs, cpu, cpuset and pids; memory and io act at its root (the "domain threaded"
# group) only. Someone else makes a group threaded (a write of "threaded" to its cgroup.type); the kernel
# creates every new child of a threaded or domain-threaded group "domain invalid" (it can hold no
# processes), so cgctl makes the groups it creates there threaded, as runc does (libcontainer fs2).
THREADED_CONTROLLERS = frozenset({"cpu", "cpuset", "pids"})
_THREADED_NOTE = "in a threaded subtree only cpu, cpuset and pids work"  # THREADED_CONTROLLERS, in words
_THREADED_PARENTS = frozenset({"threaded", "domain threaded"})
_NOT_DOMAIN = frozenset({"threaded", "domain invalid"})  # domain controllers do not work in these


def _type_after(now: ObservedGroup, parent_type: str | None) -> str | None:
    """The group's cgroup.type once the plan has run (None: a domain, or not read)."""
    if now.exists:
        return now.cgroup_type
    if parent_type in _THREADED_PARENTS:
        return "threaded"  # cgctl creates it, then makes it threaded
    return "domain invalid" if parent_type == "domain invalid" else None


def _threaded_blocks(
    now: ObservedGroup, kind: str | None, parent_type: str | None
) -> tuple[str | None, str | None]:
    """Why the group can take no knob at all, and why it can take no domain controller's knob (None:
    it can)."""
    if parent_type == "domain invalid":
        return "its parent's cgroup.type is 'domain invalid', so no controller can be enabled for it", None
    if kind not in _NOT_DOMAIN:
        return None, None
    return None, f"its cgroup.type is '{kind}'" if now.exists else "it is created in a threaded subtree"


def _domain_invalid_warning(now: ObservedGroup) -> str:
    where = "its cgroup.type is" if now.exists else "it would be created under a 'domain invalid' parent as"
    return (
        f"{where} 'domain invalid': it can hold no processes until it is made threaded "
        "(echo threaded > cgroup.type)"
    )


def _check_value(
    inp: PlanInput,
    path: GroupPath,
    key: SettingKey,
    knob: Knob,
    value: Value,
    issues: list[PlanIssue],
    blocked: str | None = None,
) -> bool:
    """Host-dependent checks of one desired setting (``knob`` is the key's; ``blocked`` says why this
    group cannot take it, v2 threaded mode). Returns False when it must be left out."""
    caps = inp.capabilities
    reason = caps.unsupported.get(knob)
    if reason is None and caps.needs_subtree_control and knob.controller not in caps.controllers:
        reason = f"the {knob.controller} controller is not available to the managed root"
    if reason is None:
        reason = blocked
    if reason is not None:
        severity = Severity.WARNING if inp.on_unsupported == "warn" else Severity.ERROR
        suffix = " (left out: on_unsupported is warn)" if severity is Severity.WARNING else ""
        issues.append(
            PlanIssue(severity, path, key, f"cannot be honoured here: {reason}{suffix}", inp.where(path, key))
        )
        return False
    if knob in (Knob.CPUSET_CPUS, Knob.CPUSET_MEMS) and isinstance(value, CpuList):
        online = caps.online_cpus if knob is Knob.CPUSET_CPUS else caps.online_mems
        what = "CPUs" if knob is Knob.CPUSET_CPUS else "memory nodes"
        missing = [i for i in value.ids if online.ids and i not in online.ids]
        if missing:
            issues.append(
                PlanIssue(
                    Severity.ERROR,
                    path,
                    key,
                    f"impossible cpuset: {what} {CpuList(tuple(missing))} are not online (online: {online})",
                    inp.where(path, key),
                )
            )
            return False
    return True


def _check_swap_needs_memory_limit(
    inp: PlanInput, path: GroupPath, spec: DesiredGroup, now: ObservedGroup, issues: list[PlanIssue]
) -> None:
    """A finite swap limit where memory stays unlimited cannot be written on cgroup v1 (memsw is
    memory + swap): an error in the plan, not a failed (and rolled back) apply."""
    swap_key = _SWAP_MAX
    if spec.resources.get(swap_key) is None:
        return
    memory_key = _MAX
    if memory_key in spec.resources:
        memory = spec.resources[memory_key]
    elif memory_key in inp.last_applied.get(path, frozenset()) or not now.exists:
        memory = None  # reset by this plan to the kernel default, or a new group: no memory limit
    elif memory_key in now.values:
        memory = now.values[memory_key]  # set outside the policy: it stays as it is
    else:
        return  # not observed: the write itself will tell
    if memory is None:
        issues.append(
            PlanIssue(
                Severity.ERROR,
                path,
                swap_key,
                "cgroup v1 limits memory and swap together (memory.memsw.limit_in_bytes = memory + swap),"
                " so a swap limit needs a memory.max limit too: set memory.max in this group",
                inp.where(path, swap_key),
            )
        )


def make_plan(inp: PlanInput) -> Plan:
    """Compute the ordered operations that make ``observed`` match ``desired``. Pure."""
    plan = Plan()
    caps = inp.capabilities
    observed = inp.observed

    absent = ObservedGroup(exists=False)  # one for every group not there: the planner never changes it

    def seen(path: GroupPath) -> ObservedGroup:
        return observed.get(path) or absent

    # 1. What each group should have written: desired settings that differ, plus resets.
    settings: dict[GroupPath, list[Op]] = {}
    shrinking: list[Op] = []  # v1 cpuset narrowing, written children-first after everything else
    needed_here: dict[GroupPath, set[str]] = {}
    # v2: each group's cgroup.type after the plan (known only where the engine read it: where it writes)
    types: dict[GroupPath, str | None] = {(): seen(()).cgroup_type}
    for path in _sorted_parents_first(inp.desired):
        spec = inp.desired[path]
        now = seen(path)
        parent_type = types.get(path[:-1])
        kind = types[path] = _type_after(now, parent_type)
        blocked, domain_blocked = _threaded_blocks(now, kind, parent_type)
        if kind == "domain invalid":
            plan.issues.append(
                PlanIssue(
                    Severity.WARNING,
                    path,
                    None,
                    _domain_invalid_warning(now),
                    inp.where(path, None),
                )
            )
        ops: list[Op] = []
        controllers: set[str] = set()
        for key, value in spec.resources.items():
            knob = split_key(key)[0]
            why = blocked
            if why is None and domain_blocked is not None and knob.controller not in THREADED_CONTROLLERS:
                why = (
                    f"{domain_blocked}, and {knob.controller} is not a threaded controller ({_THREADED_NOTE})"
                )
            if not _check_value(inp, path, key, knob, value, plan.issues, why):
                continue
            controllers.add(knob.controller)
            if not now.exists:
                # A group about to be created starts with the kernel's defaults: show those as "before".
                ops.append(Op(OpKind.SET, path, key, KERNEL_DEFAULTS[knob], value))
            elif key not in now.values or now.values[key] != inp.effective(key, value):
                op = Op(OpKind.SET, path, key, now.values.get(key), value)
                if caps.cpuset_within_parent:
                    ops.extend(_cpuset_steps(op, shrinking))
                else:
                    ops.append(op)
            if (
                now.memory_current is not None
                and knob is Knob.MEMORY_MAX
                and value is not None
                and isinstance(value, int)
                and value < now.memory_current
            ):
                plan.issues.append(
                    PlanIssue(
                        Severity.WARNING,
                        path,
                        key,
                        f"new limit {format_value(value)} is below current usage {now.memory_current}: "
                        "the kernel will reclaim and may OOM-kill (v2) or refuse with EBUSY (v1)",
                        inp.where(path, key),
                    )
                )
        applied = inp.last_applied.get(path)
        for key in sorted(applied - spec.resources.keys()) if applied else ():
            knob, _ = split_key(key)
            if knob in caps.unsupported or not now.exists:
                continue
            if domain_blocked is not None and knob.controller not in THREADED_CONTROLLERS:
                continue  # made threaded since: the file is gone, so there is nothing to reset
            default = KERNEL_DEFAULTS[knob]
            controllers.add(knob.controller)
            if key not in now.values or now.values[key] != inp.effective(key, default):
                ops.append(Op(OpKind.RESET, path, key, now.values.get(key), default))
        if caps.swap_needs_memory_limit:
            _check_swap_needs_memory_limit(inp, path, spec, now, plan.issues)
        if spec.frozen is not None and not caps.can_freeze:
            plan.issues.append(
                PlanIssue(
                    Severity.ERROR,
                    path,
                    "frozen",
                    "freezing is not available on this host",
                    inp.where(path, "frozen"),
                )
            )
        settings[path] = _order_settings(ops)
        needed_here[path] = controllers

    resets_after_shrinking = _resets_under_shrinking(settings, shrinking) if caps.cpuset_within_parent else []

    # 2. Controllers each group must enable for its descendants (v2 top-down enablement).
    enable_for: dict[GroupPath, set[str]] = {}
    if caps.needs_subtree_control:
        for path, controllers in needed_here.items():
            for ancestor in _ancestors(path):
                enable_for.setdefault(ancestor, set()).update(controllers)

    # 3. Emit creates, enables and settings parents-first.
    all_paths = _sorted_parents_first({(), *inp.desired})
    for path in all_paths:
        now = seen(path)
        if not now.exists:
            plan.ops.append(Op(OpKind.CREATE, path))
            if types.get(path) == "threaded":
                plan.ops.append(Op(OpKind.THREADED, path))
        plan.ops.extend(settings.get(path, []))
        wanted = enable_for.get(path, set())
        missing = frozenset(wanted - (now.subtree_control if now.exists else frozenset()))
        if missing:
            plan.ops.append(Op(OpKind.ENABLE, path, controllers=missing))

    # 3b. Shrinking cpusets, children-first: each child is inside its parent's new set before the
    # parent shrinks to it; then the resets that copy a shrunk parent's list.
    plan.ops.extend(sorted(shrinking, key=lambda op: (-len(op.path), op.path)))
    plan.ops.extend(resets_after_shrinking)

    # 4. Thaws, then freezes, after every limit is in place.
    for path in all_paths:
        spec_frozen = inp.desired[path].frozen if path in inp.desired else None
        now = seen(path)
        if spec_frozen is False and now.exists and now.self_frozen and caps.can_freeze:
            plan.ops.append(Op(OpKind.THAW, path, old=True, new=False))
    for path in all_paths:
        spec_frozen = inp.desired[path].frozen if path in inp.desired else None
        now = seen(path)
        if spec_frozen is True and not (now.exists and now.self_frozen) and caps.can_freeze:
            plan.ops.append(Op(OpKind.FREEZE, path, old=False, new=True))

    # 5. Prune: groups cgctl created, no longer in the policy, and empty; children first.
    if inp.prune:
        stale = [p for p in inp.owned if p and p not in inp.desired and seen(p).exists]
        kept: set[GroupPath] = set(inp.desired)
        for path in sorted(stale, key=lambda p: (-len(p), p)):
            now = seen(path)
            if any(other[: len(path)] == path and len(other) > len(path) for other in kept):
                kept.add(path)  # a descendant stays, so this group must stay too
                continue
            if now.populated:
                plan.notes.append(
                    f"kept {format_path(path)}: it holds processes (prune removes only empty groups)"
                )
                kept.add(path)
                continue
            plan.ops.append(Op(OpKind.REMOVE, path, snapshot=tuple(sorted(now.values.items()))))
    return plan


def memory_lowered(plan: Plan, observed: Mapping[GroupPath, ObservedGroup]) -> list[GroupPath]:
    """Existing groups whose memory.max the plan lowers (to a finite value below the current one): the
    only ones whose memory usage the planner's reclaim warning needs."""
    out: list[GroupPath] = []
    for op in plan.ops:
        if op.kind is not OpKind.SET or op.key is None or split_key(op.key)[0] is not Knob.MEMORY_MAX:
            continue
        seen = observed.get(op.path)
        if (
            seen is not None
            and seen.exists
            and isinstance(op.new, int)
            and _as_limit(op.new) < _as_limit(op.old)
        ):
            out.append(op.path)
    return out


def groups_to_type(plan: Plan, observed: Mapping[GroupPath, ObservedGroup]) -> list[GroupPath]:
    """Existing groups whose cgroup.type decides whether the plan can work (v2 threaded mode): those it
    writes or enables controllers in, and the parents of those it creates. A re-apply with nothing to
    do reads none."""
    out: dict[GroupPath, None] = {}
    for op in plan.ops:
        if op.kind is OpKind.CREATE:
            path = op.path[:-1]
        elif op.kind in (OpKind.SET, OpKind.RESET, OpKind.ENABLE):
            path = op.path
        else:
            continue
        seen = observed.get(path)
        if seen is not None and seen.exists:
            out[path] = None
    return list(out)


def keys_to_observe(
    desired: Mapping[GroupPath, DesiredGroup],
    last_applied: Mapping[GroupPath, frozenset[SettingKey]],
) -> dict[GroupPath, frozenset[SettingKey]]:
    """Which settings the planner will compare, per group: the desired ones and the last-applied ones
    (and memory.max beside a swap limit, which on v1 needs one)."""
    out: dict[GroupPath, frozenset[SettingKey]] = {}
    for path in {*desired, *last_applied}:
        keys = set(last_applied.get(path, frozenset()))
        if path in desired:
            keys.update(desired[path].resources)
        if Knob.MEMORY_SWAP_MAX.value in keys:
            keys.add(Knob.MEMORY_MAX.value)  # where swap needs a memory limit (v1), the planner checks it
        out[path] = frozenset(keys)
    return out


def summarize(ops: Sequence[Op]) -> str:
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.kind.value] = counts.get(op.kind.value, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "nothing to do"
