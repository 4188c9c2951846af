"""The shape of a knob table (``v1.TABLE``, ``v2.TABLE``) and the parsers both versions share.

A :class:`KnobSpec` says, for one knob: which controller's files hold it, which files observe reads,
how their text becomes an api value, and which writes set a value. Writes are returned as
*alternatives* — ordered lists of ``(file, text)`` — because some v1 pairs must be written in an order
that depends on the values (the driver tries the next alternative when the first write of one fails
with EINVAL, as runc does for ``cpu.cfs_period_us``/``cpu.cfs_quota_us``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from drivers.api import CpuList, CpuMax, DriverError, IoMax, Knob, Value
from drivers.records import record

Get = Callable[[str], "str | None"]  # a file of the group → its text, None when the file is absent
Writes = list[tuple[str, str]]  # (file, text), in order


class Context(Protocol):
    """What a writer may look at before deciding what to write."""

    def read(self, file: str) -> str | None: ...

    def read_parent(self, file: str) -> str | None: ...


def _identity(value: Value) -> Value:
    return value


@record(frozen=True)
class KnobSpec:
    knob: Knob
    controller: str  # v2 controller, or the v1 controller whose hierarchy holds the files
    files: tuple[str, ...]  # files observe reads (the first one shows whether the knob exists here)
    parse: Callable[[Get, str | None], Value]  # (get, device) → value
    write: Callable[[Value, str | None, Context], list[Writes]]  # (value, device, ctx) → alternatives
    effective: Callable[[Value], Value] = _identity  # what reads back after writing the value


class ParseError(ValueError):
    """A kernel file's text was not in the expected format."""


def need(get: Get, file: str) -> str:
    text = get(file)
    if text is None:
        raise ParseError(f"{file} is missing")
    return text.strip()


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ParseError(f"not an integer: {text.strip()!r}") from None


def parse_max_int(text: str) -> int | None:
    text = text.strip()
    return None if text == "max" else parse_int(text)


def format_max_int(value: Value) -> str:
    return "max" if value is None else str(expect_int(value))


def expect_int(value: Value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DriverError(f"expected an integer, got {value!r}", value=repr(value))
    return value


def expect_opt_int(value: Value) -> int | None:
    return None if value is None else expect_int(value)


def expect_bool(value: Value) -> bool:
    if not isinstance(value, bool):
        raise DriverError(f"expected a boolean, got {value!r}", value=repr(value))
    return value


def expect_cpumax(value: Value) -> CpuMax:
    if not isinstance(value, CpuMax):
        raise DriverError(f"expected a CpuMax, got {value!r}", value=repr(value))
    return value


def expect_cpulist(value: Value) -> CpuList:
    if not isinstance(value, CpuList):
        raise DriverError(f"expected a CpuList, got {value!r}", value=repr(value))
    return value


def expect_iomax(value: Value) -> IoMax:
    if not isinstance(value, IoMax):
        raise DriverError(f"expected an IoMax, got {value!r}", value=repr(value))
    return value


def expect_device(device: str | None) -> str:
    if device is None or not _is_majmin(device):
        raise DriverError(f"io.max needs a MAJ:MIN device, got {device!r}", value=str(device))
    return device


def _is_majmin(device: str) -> bool:
    major, _, minor = device.partition(":")
    return major.isdigit() and minor.isdigit()


def parse_cpulist(text: str) -> CpuList:
    try:
        return CpuList.parse(text)
    except ValueError as exc:
        raise ParseError(f"bad cpu list {text.strip()!r}: {exc}") from None


def device_lines(text: str) -> dict[str, str]:
    """``MAJ:MIN rest`` lines → {MAJ:MIN: rest}; other lines (``default N``) are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        dev, _, rest = line.strip().partition(" ")
        if _is_majmin(dev):
            out[dev] = rest.strip()
    return out
