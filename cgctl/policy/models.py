"""The policy file's schema as pydantic models: one model per mapping a user writes.

Leaf values are parsed by :mod:`cgctl.units` through BeforeValidators, so every bad value is reported
with that module's message (``must be a size like 512M``). Models forbid unknown keys; the loader
turns pydantic's errors into ``FILE:LINE:COL: field: message`` with a did-you-mean.

A key written as ``null`` is an error (it would be ambiguous between "not set" and "max"); a section
(``cpu:``, ``memory:``…) or group written as ``null`` is the same as an empty one. Which keys a user
set is taken from ``model_fields_set``, so "not named" stays distinct from "named as max".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from cgctl import units
from cgctl.policy.names import check_name, check_root
from drivers.api import CpuList

POLICY_VERSION = 1
DRIVERS = ("auto", "cgroupfs", "systemd")
ON_UNSUPPORTED = ("error", "warn")


def _none_to_empty(value: object) -> object:
    return {} if value is None else value


def _choice(choices: tuple[str, ...]) -> BeforeValidator:
    def check(value: object) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")

    return BeforeValidator(check)


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


def _include(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value  # items are checked one by one (their loc stays precise)
    raise ValueError("must be a file or directory name, or a list of them")


def _not_null(parse: Any) -> BeforeValidator:
    def check(value: object) -> object:
        if value is None:
            raise ValueError("has no value (leave the key out, or write a value)")
        return parse(value)

    return BeforeValidator(check)


Size = Annotated[int | None, _not_null(units.parse_size)]
ByteRate = Annotated[int | None, _not_null(units.parse_size)]
Count = Annotated[int | None, _not_null(units.parse_count)]
Weight = Annotated[int, _not_null(units.parse_weight)]
Bool = Annotated[bool, _not_null(units.parse_bool)]
Cpus = Annotated[CpuList, _not_null(units.parse_cpu_list)]
Period = Annotated[int, _not_null(units.parse_period_us)]
Quota = Annotated[units.CpuQuota, _not_null(units.parse_cpu_quota)]
GroupName = Annotated[str, AfterValidator(check_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class CpuModel(_Strict):
    weight: Weight = 100
    max: Quota = units.CpuQuota()
    period: Period = units.DEFAULT_PERIOD_US
    cpus: Cpus = CpuList()
    mems: Cpus = CpuList()


class MemoryModel(_Strict):
    min: Size = None
    low: Size = None
    high: Size = None
    max: Size = None
    swap_max: Size = None
    oom_group: Bool = False


class IoMaxModel(_Strict):
    device: Annotated[str, _not_null(_string)]
    rbps: ByteRate = None
    wbps: ByteRate = None
    riops: Count = None
    wiops: Count = None


def _io_max_list(value: object) -> object:
    if value is None:
        raise ValueError("has no value (leave the key out, or write a list of devices)")
    if not isinstance(value, list):
        raise ValueError("must be a list of devices, each like {device: /dev/vda, rbps: 50M}")
    return value


class IoModel(_Strict):
    weight: Weight = 100
    max: Annotated[list[IoMaxModel], BeforeValidator(_io_max_list)] = Field(default_factory=list)


class PidsModel(_Strict):
    max: Count = None


def _groups(value: object) -> object:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of group names to groups")
    return {name: ({} if group is None else group) for name, group in value.items()}


class GroupModel(_Strict):
    cpu: Annotated[CpuModel, BeforeValidator(_none_to_empty)] = Field(default_factory=CpuModel)
    memory: Annotated[MemoryModel, BeforeValidator(_none_to_empty)] = Field(default_factory=MemoryModel)
    io: Annotated[IoModel, BeforeValidator(_none_to_empty)] = Field(default_factory=IoModel)
    pids: Annotated[PidsModel, BeforeValidator(_none_to_empty)] = Field(default_factory=PidsModel)
    frozen: Bool = False
    groups: Annotated[dict[GroupName, GroupModel], BeforeValidator(_groups)] = Field(default_factory=dict)


class PolicyFileModel(_Strict):
    """One policy file. ``version`` is required in the main file and optional in included ones (the
    loader checks); included files that set version/driver/root/on_unsupported must agree with it."""

    version: Annotated[int, _not_null(_version)] = POLICY_VERSION
    driver: Annotated[Literal["auto", "cgroupfs", "systemd"], _choice(DRIVERS)] = "auto"
    root: Annotated[str, _not_null(_string), AfterValidator(check_root)] = "cgctl"
    on_unsupported: Annotated[Literal["error", "warn"], _choice(ON_UNSUPPORTED)] = "error"
    include: Annotated[list[Annotated[str, _not_null(_string)]], _not_null(_include)] = Field(
        default_factory=list
    )
    groups: Annotated[dict[GroupName, GroupModel], BeforeValidator(_groups)] = Field(default_factory=dict)
