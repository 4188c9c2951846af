"""The policy file's schema, read in one walk over a file's YAML nodes (:mod:`.source`): one method per
mapping a user writes, each key checked against a table of leaf parsers, and every group turned
straight into a :class:`GroupSpec` in the drivers' value types, with where each value is written.

Leaf values are parsed by :mod:`cgctl.units`, so every bad value is reported with that module's message
(``must be a size like 512M``). Every problem in a file is collected (not only the first), at the value,
at the key (an unknown key, with a did-you-mean, or a bad group name), or at the mapping that lacks a
required key.

A key written as ``null`` is an error (it would be ambiguous between "not set" and "max"); a section
(``cpu:``, ``memory:``…) or group written as ``null`` is the same as an empty one. Only the knobs a
group names are in its spec, so "not named" stays distinct from "named as max".

Checks that combine values within one group are made here too, once the section they need is valid:
cpu ``max`` and ``period`` → one ``cpu.max``; memory limits out of order (warnings); one ``io.max``
entry per disk; a child's cpuset within its parent's (a warning). What spans files (includes, a group
defined twice, settings included files must agree on) is the loader's.

Why one walk: an earlier version built plain data with positions, then schema objects, then group specs;
three passes took ~30 ms of a 1000-group load, this one ~12 ms. Why not pydantic: its import alone cost
~50 ms at every ``cgctl apply`` start (bench/RESULTS.md), a tenth of a whole 1000-group apply.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
from typing import Any

import yaml

from cgctl import units
from cgctl.policy.names import MAX_DEPTH, check_name, check_root
from cgctl.policy.source import (
    MAP_TAG,
    PLAIN,
    Loc,
    MappingNode,
    ScalarNode,
    SequenceNode,
    Source,
    dotted,
    plain,
)
from cgctl.policy.types import GroupSpec, PolicyIssue, SourceRef
from drivers.api import CpuList, IoMax, Knob, SettingKey, Value, setting_key
from drivers.records import field, record

POLICY_VERSION = 1
DRIVERS = ("auto", "cgroupfs", "systemd")
ON_UNSUPPORTED = ("error", "warn")
# Top-level settings an included file may repeat, but only with the main file's values.
SHARED_KEYS = ("version", "driver", "root", "on_unsupported")

Parse = Callable[[Any], Any]
# Resolves an io.max ``device:`` to the disk's MAJ:MIN, or gives the ValueError that says why not.
DeviceLookup = Callable[[str], "str | ValueError"]

_NO_VALUE = "has no value (leave the key out, or write a value)"
_MAPPING = "must be a mapping (key: value)"
_INCLUDE_SHAPE = "must be a file or directory name, or a list of them"
_MEMO_LIMIT = 4096


def _not_null(parse: Parse) -> Parse:
    """``parse``, refusing null, and memoized per value and type: a policy repeats a handful of values
    (``64M``, ``0.5``) across a thousand groups, and the parsers' results are immutable."""
    memo: dict[tuple[type, object], object] = {}

    def check(value: object) -> object:
        if value is None:
            raise ValueError(_NO_VALUE)
        key = (value.__class__, value)  # the type too: 1, 1.0 and True are equal as keys
        try:
            return memo[key]
        except KeyError:
            pass
        except TypeError:  # unhashable: a list or mapping where a scalar belongs (parse explains)
            return parse(value)
        result = parse(value)  # a ValueError is not remembered: bad values stay rare
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = result
        return result

    return check


def _choice(choices: tuple[str, ...]) -> Parse:
    def check(value: object) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")

    return check


def _version(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value == POLICY_VERSION:
            return value
        raise ValueError(f"unsupported version {value}: this cgctl reads version {POLICY_VERSION}")
    raise ValueError(f"must be {POLICY_VERSION} (got {value!r})")


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"must be a string (got {value!r})")


def _root(value: object) -> str:
    return check_root(_string(value))


_SIZE = _not_null(units.parse_size)
_COUNT = _not_null(units.parse_count)
_WEIGHT = _not_null(units.parse_weight)
_BOOL = _not_null(units.parse_bool)
_CPUS = _not_null(units.parse_cpu_list)
_STRING = _not_null(_string)

# The mappings a user writes: key → leaf parser (None: a key read by a method of its own).
FILE_FIELDS: dict[str, Parse | None] = {
    "version": _not_null(_version),
    "driver": _choice(DRIVERS),
    "root": _not_null(_root),
    "on_unsupported": _choice(ON_UNSUPPORTED),
    "include": None,
    "groups": None,
}
GROUP_FIELDS: dict[str, Parse | None] = {
    "cpu": None,
    "memory": None,
    "io": None,
    "pids": None,
    "frozen": _BOOL,
    "groups": None,
}
CPU_FIELDS: dict[str, Parse] = {
    "weight": _WEIGHT,
    "max": _not_null(units.parse_cpu_quota),
    "period": _not_null(units.parse_period_us),
    "cpus": _CPUS,
    "mems": _CPUS,
}
MEMORY_FIELDS: dict[str, Parse] = {
    "min": _SIZE,
    "low": _SIZE,
    "high": _SIZE,
    "max": _SIZE,
    "swap_max": _SIZE,
    "oom_group": _BOOL,
}
IO_FIELDS: dict[str, Parse | None] = {"weight": _WEIGHT, "max": None}
IO_MAX_FIELDS: dict[str, Parse] = {
    "device": _STRING,
    "rbps": _SIZE,
    "wbps": _SIZE,
    "riops": _COUNT,
    "wiops": _COUNT,
}
PIDS_FIELDS: dict[str, Parse] = {"max": _COUNT}

_MEMORY_KNOBS: tuple[tuple[str, Knob], ...] = (
    ("min", Knob.MEMORY_MIN),
    ("low", Knob.MEMORY_LOW),
    ("high", Knob.MEMORY_HIGH),
    ("max", Knob.MEMORY_MAX),
    ("swap_max", Knob.MEMORY_SWAP_MAX),
)
# Knob → its setting key: a dict lookup, where ``knob.value`` is an enum descriptor call (thousands a load).
_SETTING_KEY: dict[Knob, SettingKey] = {knob: knob.value for knob in Knob}
# Why a memory value above the next one in min ≤ low ≤ high ≤ max is (legal but) pointless.
_ORDER_EFFECT = {
    "min": ", so memory.low adds nothing",
    "low": ": the extra protection cannot be used",
    "high": ", so it never takes effect",
}


@record
class FileModel:
    """What one policy file says. ``written`` maps each top-level setting the file gives (validly) to
    where its value is; ``groups`` lists the file's groups parents first."""

    version: int = POLICY_VERSION
    driver: str = "auto"
    root: str = "cgctl"
    on_unsupported: str = "error"
    has_version: bool = False
    written: dict[str, SourceRef] = field(default_factory=dict)
    include: list[tuple[str, SourceRef, str]] = field(default_factory=list)  # (target, where, field)
    groups: list[GroupSpec] = field(default_factory=list)
    warnings: list[PolicyIssue] = field(default_factory=list)


# A value that failed (reported): distinct from None, which parsers return for "max".
_BAD: Any = object()
# What a node that should be a mapping turned out to be (see _Walk.shape).
WALK, NULL = 1, 2
# One section's valid values: key → (parsed value, its node).
Values = dict[str, tuple[Any, yaml.Node]]


def read_file(source: Source, root: yaml.MappingNode, device: DeviceLookup) -> FileModel:
    """Walk one file's root mapping. Problems go to ``source.issues``; raises TooLarge for alias bombs."""
    return _Walk(source, device).file(root)


class _Walk:
    def __init__(self, source: Source, device: DeviceLookup) -> None:
        self.source = source
        self.device = device
        self.model = FileModel()

    # -- generic pieces ------------------------------------------------------------------------------

    def leaf(self, parse: Parse, node: yaml.Node, loc: Loc, key: str | int) -> Any:
        """The parsed value of ``key`` (at ``loc``), or _BAD once reported."""
        source = self.source
        if node.__class__ is ScalarNode and node.tag == PLAIN:  # most values
            raw = plain(node.value)
        elif source.refused(node, (*loc, key)):
            return _BAD
        elif node.__class__ is ScalarNode:
            raw = source.scalar(node)
        else:  # a list or mapping where a scalar belongs: the parser says what it wants, showing it
            raw = source.data(node, (*loc, key))
        try:
            return parse(raw)
        except ValueError as exc:
            source.issue(node, (*loc, key), str(exc))
            return _BAD

    def shape(self, node: yaml.Node, loc: Loc, message: str = _MAPPING, null_ok: bool = True) -> int | None:
        """WALK for a mapping, NULL for a null value where that means an empty mapping (``null_ok``),
        None for anything else: another shape (reported with ``message``) or a refused tag."""
        source = self.source
        if node.__class__ is MappingNode and node.tag == MAP_TAG:
            return WALK
        if source.refused(node, loc):
            return None
        if null_ok and source.is_null(node):
            return NULL
        source.issue(node, loc, message)
        return None

    def leaves(
        self,
        node: yaml.Node,
        loc: Loc,
        fields: dict[str, Parse],
        required: tuple[str, ...] = (),
        null_ok: bool = True,
    ) -> Values | None:
        """A mapping of leaves: every key's parsed value and node, or None if anything in it is wrong
        (each problem reported). A null mapping has no values."""
        shape = self.shape(node, loc, null_ok=null_ok)
        if shape != WALK:
            return {} if shape == NULL else None
        values: Values = {}
        ok = True
        written: set[str] = set()
        for key, key_node, value_node in self.source.entries(node, loc):
            written.add(key)
            parse = fields.get(key)
            if parse is None:
                self.unknown(key, key_node, value_node, loc, fields)
                ok = False
                continue
            value = self.leaf(parse, value_node, loc, key)
            if value is _BAD:
                ok = False
            else:
                values[key] = (value, value_node)
        for key in required:
            if key not in written:
                self.source.issue(node, (*loc, key), "missing required key")
                ok = False
        return values if ok else None

    def unknown(
        self,
        key: str,
        key_node: yaml.Node,
        value: yaml.Node,
        loc: Loc,
        fields: Collection[str],
        group_hint: bool = False,
    ) -> None:
        source = self.source
        where = (*loc, key)
        if source.refused(value, where):
            return  # the tag is the problem to fix first
        data = source.data(value, where)  # its own problems are reported too
        import difflib  # only ever needed for a bad policy

        allowed = list(fields)
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            message = f"unknown key (did you mean {close[0]!r}?)"
        else:
            message = f"unknown key (expected one of: {', '.join(allowed)})"
            if group_hint and (data is None or isinstance(data, dict)):
                message += f"; a child group goes under groups: ({key} → groups: {{{key}: ...}})"
        source.issue(key_node, where, message)

    # -- the file --------------------------------------------------------------------------------------

    def file(self, root: yaml.MappingNode) -> FileModel:
        model = self.model
        for key, key_node, node in self.source.entries(root, ()):
            if key == "groups":
                self.groups(node, ("groups",), (), None)
            elif key == "include":
                self.include(node)
            elif (parse := FILE_FIELDS.get(key)) is not None:
                model.has_version = model.has_version or key == "version"
                value = self.leaf(parse, node, (), key)
                if value is not _BAD:
                    setattr(model, key, value)
                    model.written[key] = self.source.ref(node)
            else:
                self.unknown(key, key_node, node, (), FILE_FIELDS)
        return model

    def include(self, node: yaml.Node) -> None:
        """``include:``: one file or directory name, or a list of them. Good names in a list are kept
        even when others are bad, so the files they name are checked in the same run."""
        source, loc = self.source, ("include",)
        if source.refused(node, loc):
            return
        if node.__class__ is ScalarNode:
            value = source.scalar(node)
            if value is None:
                source.issue(node, loc, _NO_VALUE)
            elif isinstance(value, str):
                self.model.include.append((value, source.ref(node), "include"))
            else:
                source.issue(node, loc, _INCLUDE_SHAPE)
            return
        if node.__class__ is not SequenceNode:
            source.issue(node, loc, _INCLUDE_SHAPE)
            return
        for index, item in source.items(node, loc):
            name = self.leaf(_STRING, item, loc, index)
            if name is not _BAD:
                self.model.include.append((name, source.ref(item), dotted((*loc, index))))

    # -- groups ----------------------------------------------------------------------------------------

    def groups(self, node: yaml.Node, loc: Loc, path: tuple[str, ...], parent: GroupSpec | None) -> None:
        """``groups:``: group names to groups."""
        if self.shape(node, loc, "must be a mapping of group names to groups") != WALK:
            return
        for name, key_node, value in self.source.entries(node, loc):
            try:
                check_name(name)
            except ValueError as exc:
                self.source.issue(key_node, (*loc, name), str(exc))
                continue
            self.group(key_node, value, (*loc, name), (*path, name), parent)

    def group(
        self, key_node: yaml.Node, node: yaml.Node, loc: Loc, path: tuple[str, ...], parent: GroupSpec | None
    ) -> None:
        source = self.source
        if len(path) > MAX_DEPTH:
            source.issue(key_node, loc, f"groups nest deeper than {MAX_DEPTH} levels below the root")
            return
        settings = _Settings(source)
        frozen: bool | None = None
        children: yaml.Node | None = None
        shape = self.shape(node, loc)
        if shape is None:
            return  # not a group at all (reported)
        if shape == WALK:
            for key, child_key, value in source.entries(node, loc):
                if key == "cpu":
                    self.cpu(value, (*loc, key), settings)
                elif key == "memory":
                    self.memory(value, (*loc, key), settings)
                elif key == "io":
                    self.io(value, (*loc, key), settings)
                elif key == "pids":
                    values = self.leaves(value, (*loc, key), PIDS_FIELDS)
                    if values and "max" in values:
                        settings.put(Knob.PIDS_MAX, values["max"])
                elif key == "frozen":
                    parsed = self.leaf(_BOOL, value, loc, key)
                    if parsed is not _BAD:
                        frozen = parsed
                        settings.origins["frozen"] = source.ref(value)
                elif key == "groups":
                    children = value
                else:
                    self.unknown(key, child_key, value, loc, GROUP_FIELDS, group_hint=True)
        spec = GroupSpec(
            path=path,
            resources=settings.resources,
            frozen=frozen,
            origin=source.ref(key_node),
            origins=settings.origins,
        )
        self.model.groups.append(spec)
        if parent is not None:
            self.cpuset_within_parent(loc, spec, parent)
        if children is not None:
            self.groups(children, (*loc, "groups"), path, spec)

    def cpu(self, node: yaml.Node, loc: Loc, settings: _Settings) -> None:
        values = self.leaves(node, loc, CPU_FIELDS)
        if not values:
            return
        source = self.source
        if "weight" in values:
            settings.put(Knob.CPU_WEIGHT, values["weight"])
        if "max" in values or "period" in values:
            where = "max" if "max" in values else "period"
            quota: units.CpuQuota = values["max"][0] if "max" in values else units.CpuQuota()
            period: int = values["period"][0] if "period" in values else units.DEFAULT_PERIOD_US
            try:
                value = quota.resolve(period)
            except ValueError as exc:
                source.issue(values[where][1], (*loc, where), str(exc))
            else:
                settings.put(Knob.CPU_MAX, (value, values[where][1]))
        if "cpus" in values:
            settings.put(Knob.CPUSET_CPUS, values["cpus"])
        if "mems" in values:
            settings.put(Knob.CPUSET_MEMS, values["mems"])

    def memory(self, node: yaml.Node, loc: Loc, settings: _Settings) -> None:
        values = self.leaves(node, loc, MEMORY_FIELDS)
        if not values:
            return
        # Explicit finite limits, in min ≤ low ≤ high ≤ max order.
        ordered: list[tuple[str, int, yaml.Node]] = []
        for name, knob in _MEMORY_KNOBS:
            if name in values:
                value, value_node = values[name]
                settings.put(knob, values[name])
                if value is not None and knob is not Knob.MEMORY_SWAP_MAX:
                    ordered.append((name, value, value_node))
        if "oom_group" in values:
            settings.put(Knob.MEMORY_OOM_GROUP, values["oom_group"])
        # The kernel accepts any order, but a protection above a limit or high above max never acts:
        # legal yet almost certainly a typo, so a warning rather than an error.
        for (low_name, low, low_node), (high_name, high, _node) in itertools.pairwise(ordered):
            if low > high:
                message = f"{units.format_size(low)} is above memory.{high_name} ({units.format_size(high)})"
                self.warn(low_node, (*loc, low_name), message + _ORDER_EFFECT[low_name])

    def io(self, node: yaml.Node, loc: Loc, settings: _Settings) -> None:
        if self.shape(node, loc) != WALK:
            return
        source = self.source
        for key, key_node, value in source.entries(node, loc):
            if key == "weight":
                weight = self.leaf(_WEIGHT, value, loc, key)
                if weight is not _BAD:
                    settings.put(Knob.IO_WEIGHT, (weight, value))
            elif key == "max":
                self.io_max(value, (*loc, key), settings)
            else:
                self.unknown(key, key_node, value, loc, IO_FIELDS)

    def io_max(self, node: yaml.Node, loc: Loc, settings: _Settings) -> None:
        """``io.max``: a list of per-device limits; devices are resolved once every entry is valid."""
        source = self.source
        if source.refused(node, loc):
            return
        if node.__class__ is not SequenceNode:
            if source.is_null(node):
                source.issue(node, loc, "has no value (leave the key out, or write a list of devices)")
            else:
                source.issue(node, loc, "must be a list of devices, each like {device: /dev/vda, rbps: 50M}")
            return
        entries = [
            (
                index,
                item,
                self.leaves(item, (*loc, index), IO_MAX_FIELDS, required=("device",), null_ok=False),
            )
            for index, item in source.items(node, loc)
        ]
        if any(values is None for _index, _item, values in entries):
            return
        seen: dict[str, tuple[SourceRef, str]] = {}
        for index, item, values in entries:
            assert values is not None
            spec, device_node = values["device"]
            device_loc = (*loc, index, "device")
            device_ref = source.ref(device_node)
            device = self.device(spec)
            if isinstance(device, ValueError):
                source.issue(device_node, device_loc, str(device))
                continue
            if device in seen:
                first_ref, first_spec = seen[device]
                same = f"{first_spec} and {spec} are both {device}" if first_spec != spec else ""
                source.issue(
                    device_node,
                    device_loc,
                    f"device {device} is already limited at {first_ref}"
                    + (f" ({same}); write one entry per disk" if same else ""),
                )
                continue
            seen[device] = (device_ref, spec)
            key = setting_key(Knob.IO_MAX, device)
            limits = {name: values[name][0] for name in ("rbps", "wbps", "riops", "wiops") if name in values}
            settings.resources[key] = IoMax(**limits)
            settings.origins[key] = source.ref(item)

    def cpuset_within_parent(self, loc: Loc, spec: GroupSpec, parent: GroupSpec) -> None:
        for knob, name in ((Knob.CPUSET_CPUS, "cpus"), (Knob.CPUSET_MEMS, "mems")):
            mine, theirs = spec.resources.get(knob.value), parent.resources.get(knob.value)
            if (
                isinstance(mine, CpuList)
                and isinstance(theirs, CpuList)
                and not set(mine.ids) <= set(theirs.ids)
            ):
                ref = spec.origins[knob.value]
                self.model.warnings.append(
                    PolicyIssue.at(
                        ref,
                        dotted((*loc, "cpu", name)),
                        f"{mine} is not within the parent's {theirs}: cgroup v1 refuses it and v2 uses only"
                        " the overlap",
                    )
                )

    def warn(self, node: yaml.Node, loc: Loc, message: str) -> None:
        self.model.warnings.append(PolicyIssue.at(self.source.ref(node), dotted(loc), message))


class _Settings:
    """One group's settings as its sections are read: each value, and where it is written."""

    __slots__ = ("origins", "resources", "source")

    def __init__(self, source: Source) -> None:
        self.source = source
        self.resources: dict[SettingKey, Value] = {}
        self.origins: dict[SettingKey, SourceRef] = {}

    def put(self, knob: Knob, value: tuple[Any, yaml.Node]) -> None:
        """Set ``knob`` from a (parsed value, its node) pair."""
        key = _SETTING_KEY[knob]
        self.resources[key] = value[0]
        self.origins[key] = self.source.ref(value[1])
