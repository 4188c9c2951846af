"""The policy file's schema: one small class per mapping a user writes, checked by a plain walk.

Leaf values are parsed by :mod:`cgctl.units`, so every bad value is reported with that module's message
(``must be a size like 512M``). Unknown keys are errors with a did-you-mean. Every problem in a file is
collected (not only the first), each with its location in the data (``('groups', 'web', 'cpu', 'max')``);
the loader turns locations into ``FILE:LINE:COL: field: message``.

A key written as ``null`` is an error (it would be ambiguous between "not set" and "max"); a section
(``cpu:``, ``memory:``…) or group written as ``null`` is the same as an empty one. Which keys a user set
is kept in ``given``, so "not named" stays distinct from "named as max".

Why not pydantic: this walk gives the same messages and positions, and importing pydantic cost ~50 ms at
every ``cgctl apply`` start (bench/RESULTS.md), a tenth of a whole 1000-group apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

from cgctl import units
from cgctl.policy.names import check_name, check_root
from drivers.api import CpuList
from drivers.records import field, record

POLICY_VERSION = 1
DRIVERS = ("auto", "cgroupfs", "systemd")
ON_UNSUPPORTED = ("error", "warn")

Loc = tuple[str | int, ...]


@record(frozen=True)
class SchemaIssue:
    """A problem at ``loc``. ``points_at`` says what to show: the value, the key itself (an unknown or
    badly named key), or the mapping that lacks a required key."""

    loc: Loc
    message: str
    points_at: Literal["value", "key", "mapping"] = "value"


Parse = Callable[[Any], Any]


_NO_VALUE = "has no value (leave the key out, or write a value)"


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
_MAPPING = "must be a mapping (key: value)"


class Section:
    """A mapping with known keys. ``FIELDS`` maps each key to its parser (a leaf) or its Section
    class (a nested mapping); subclasses declare their attributes with defaults."""

    FIELDS: ClassVar[dict[str, Parse | type[Section]]]
    given: frozenset[str] = frozenset()

    @classmethod
    def check(cls, data: object, loc: Loc, issues: list[SchemaIssue]) -> Any:
        """An instance from ``data`` (a mapping; None is an empty one), or None after adding issues."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            issues.append(SchemaIssue(loc, _MAPPING))
            return None
        values: dict[str, Any] = {}
        ok = True
        fields = cls.FIELDS
        for key, raw in data.items():
            spec = fields.get(key)
            if spec is None:
                issues.append(SchemaIssue((*loc, key), cls.unknown_key(key, raw), points_at="key"))
                ok = False
            elif spec.__class__ is type:  # a nested Section (a mapping or list); leaves are functions
                value = cast(type[Section], spec).check(raw, (*loc, key), issues)
                ok = ok and value is not None
                values[key] = value
            else:  # a leaf: its parser raises ValueError with the message to show
                try:
                    values[key] = cast(Parse, spec)(raw)
                except ValueError as exc:
                    issues.append(SchemaIssue((*loc, key), str(exc)))
                    ok = False
        for key in cls.required():
            if key not in data:
                issues.append(SchemaIssue((*loc, key), "missing required key", points_at="mapping"))
                ok = False
        if not ok:
            return None
        section = cls(**values)
        object.__setattr__(section, "given", frozenset(values))
        return section

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return ()

    @classmethod
    def unknown_key(cls, key: str, value: object) -> str:
        import difflib  # only ever needed for a bad policy

        allowed = list(cls.FIELDS)
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        return f"unknown key (expected one of: {', '.join(allowed)})"


@record(frozen=True)
class CpuModel(Section):
    FIELDS: ClassVar[dict[str, Parse | type[Section]]] = {
        "weight": _WEIGHT,
        "max": _not_null(units.parse_cpu_quota),
        "period": _not_null(units.parse_period_us),
        "cpus": _CPUS,
        "mems": _CPUS,
    }
    weight: int = 100
    max: units.CpuQuota = field(default_factory=units.CpuQuota)
    period: int = units.DEFAULT_PERIOD_US
    cpus: CpuList = field(default_factory=CpuList)
    mems: CpuList = field(default_factory=CpuList)


@record(frozen=True)
class MemoryModel(Section):
    FIELDS: ClassVar[dict[str, Parse | type[Section]]] = {
        "min": _SIZE,
        "low": _SIZE,
        "high": _SIZE,
        "max": _SIZE,
        "swap_max": _SIZE,
        "oom_group": _BOOL,
    }
    min: int | None = None
    low: int | None = None
    high: int | None = None
    max: int | None = None
    swap_max: int | None = None
    oom_group: bool = False


@record(frozen=True)
class IoMaxModel(Section):
    FIELDS: ClassVar[dict[str, Parse | type[Section]]] = {
        "device": _not_null(_string),
        "rbps": _SIZE,
        "wbps": _SIZE,
        "riops": _COUNT,
        "wiops": _COUNT,
    }
    device: str = ""
    rbps: int | None = None
    wbps: int | None = None
    riops: int | None = None
    wiops: int | None = None

    @classmethod
    def check(cls, data: object, loc: Loc, issues: list[SchemaIssue]) -> Any:
        if data is None:  # a list item written as null is no empty mapping
            issues.append(SchemaIssue(loc, _MAPPING))
            return None
        return super().check(data, loc, issues)

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return ("device",)


class IoMaxList(Section):
    """``io.max``: a list of per-device limits (not a mapping; ``check`` returns a list)."""

    @classmethod
    def check(cls, data: object, loc: Loc, issues: list[SchemaIssue]) -> Any:
        if data is None:
            issues.append(SchemaIssue(loc, "has no value (leave the key out, or write a list of devices)"))
            return None
        if not isinstance(data, list):
            issues.append(
                SchemaIssue(loc, "must be a list of devices, each like {device: /dev/vda, rbps: 50M}")
            )
            return None
        entries = [IoMaxModel.check(item, (*loc, index), issues) for index, item in enumerate(data)]
        return entries if all(entry is not None for entry in entries) else None


@record(frozen=True)
class IoModel(Section):
    FIELDS: ClassVar[dict[str, Parse | type[Section]]] = {"weight": _WEIGHT, "max": IoMaxList}
    weight: int = 100
    max: list[IoMaxModel] = field(default_factory=list)


@record(frozen=True)
class PidsModel(Section):
    FIELDS: ClassVar[dict[str, Parse | type[Section]]] = {"max": _COUNT}
    max: int | None = None


class GroupMap(Section):
    """``groups:``: group names to groups (``check`` returns a dict of GroupModel)."""

    @classmethod
    def check(cls, data: object, loc: Loc, issues: list[SchemaIssue]) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            issues.append(SchemaIssue(loc, "must be a mapping of group names to groups"))
            return None
        groups: dict[str, GroupModel] = {}
        ok = True
        for name, raw in data.items():
            where = (*loc, name)
            try:
                check_name(name)
            except ValueError as exc:
                issues.append(SchemaIssue(where, str(exc), points_at="key"))
                ok = False
                continue
            group = GroupModel.check(raw, where, issues)
            if group is None:
                ok = False
            else:
                groups[name] = group
        return groups if ok else None


@record(frozen=True)
class GroupModel(Section):
    FIELDS: ClassVar[dict[str, Parse | type[Section]]] = {
        "cpu": CpuModel,
        "memory": MemoryModel,
        "io": IoModel,
        "pids": PidsModel,
        "frozen": _BOOL,
        "groups": GroupMap,
    }
    cpu: CpuModel = field(default_factory=CpuModel)
    memory: MemoryModel = field(default_factory=MemoryModel)
    io: IoModel = field(default_factory=IoModel)
    pids: PidsModel = field(default_factory=PidsModel)
    frozen: bool = False
    groups: dict[str, GroupModel] = field(default_factory=dict)

    @classmethod
    def unknown_key(cls, key: str, value: object) -> str:
        hint = super().unknown_key(key, value)
        if "did you mean" not in hint and (value is None or isinstance(value, dict)):
            hint += f"; a child group goes under groups: ({key} → groups: {{{key}: ...}})"
        return hint


class IncludeList(Section):
    """``include:``: one file or directory name, or a list of them (``check`` returns a list)."""

    @classmethod
    def check(cls, data: object, loc: Loc, issues: list[SchemaIssue]) -> Any:
        if data is None:
            issues.append(SchemaIssue(loc, _NO_VALUE))
            return None
        if isinstance(data, str):
            return [data]
        if not isinstance(data, list):
            issues.append(SchemaIssue(loc, "must be a file or directory name, or a list of them"))
            return None
        names: list[str] = []
        for index, item in enumerate(data):
            try:
                names.append(_not_null(_string)(item))
            except ValueError as exc:
                issues.append(SchemaIssue((*loc, index), str(exc)))
        return names if len(names) == len(data) else None


@record(frozen=True)
class PolicyFileModel(Section):
    """One policy file. ``version`` is required in the main file and optional in included ones (the
    loader checks); included files that set version/driver/root/on_unsupported must agree with it."""

    FIELDS: ClassVar[dict[str, Parse | type[Section]]] = {
        "version": _not_null(_version),
        "driver": _choice(DRIVERS),
        "root": _not_null(_root),
        "on_unsupported": _choice(ON_UNSUPPORTED),
        "include": IncludeList,
        "groups": GroupMap,
    }
    version: int = POLICY_VERSION
    driver: str = "auto"
    root: str = "cgctl"
    on_unsupported: str = "error"
    include: list[str] = field(default_factory=list)
    groups: dict[str, GroupModel] = field(default_factory=dict)


def validate_file(data: object) -> tuple[PolicyFileModel | None, list[SchemaIssue]]:
    """The file's model, or None and every problem found."""
    issues: list[SchemaIssue] = []
    model = PolicyFileModel.check(data, (), issues)
    return (model if not issues else None), issues
