"""cgroup v2: every knob → file → format, in one table (kernel ``Documentation/admin-guide/cgroup-v2.rst``).

The api already speaks v2, so most entries are a direct parse/format of the file's own syntax. Notes:

* ``cpu.max`` is ``"$QUOTA $PERIOD"`` with ``max`` for no quota; the kernel keeps the old period when
  only a quota is written, so cgctl always writes both.
* ``cpuset.cpus``/``mems``: an empty value means "inherit the parent's effective set" (written as
  ``"\\n"``: a zero-length write never reaches the kernel).
* ``memory.*`` limits are rounded down to whole pages by the kernel (``effective``).
* ``io.weight`` manages only the ``default N`` line; per-device weight lines are left alone.
* ``io.max`` is per device: one ``MAJ:MIN rbps=… wbps=… riops=… wiops=…`` line; writing all four fields
  with ``max`` for None replaces the device's limits (all ``max`` removes the line). An absent line
  reads as all ``max``.
"""

from __future__ import annotations

from drivers.api import CpuMax, IoMax, Knob, Value
from drivers.cgroupfs import convert
from drivers.cgroupfs.knobs import (
    Context,
    Get,
    KnobSpec,
    ParseError,
    Writes,
    device_lines,
    expect_bool,
    expect_cpulist,
    expect_cpumax,
    expect_device,
    expect_int,
    expect_iomax,
    expect_opt_int,
    format_max_int,
    need,
    parse_cpulist,
    parse_int,
    parse_max_int,
)


def _one(file: str, text: str) -> list[Writes]:
    return [[(file, text)]]


def _parse_cpu_max(get: Get, _dev: str | None) -> Value:
    parts = need(get, "cpu.max").split()
    if len(parts) != 2:
        raise ParseError(f"cpu.max: expected 'QUOTA PERIOD', got {' '.join(parts)!r}")
    return CpuMax(parse_max_int(parts[0]), parse_int(parts[1]))


def _write_cpu_max(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
    return _one("cpu.max", str(expect_cpumax(value)))


def _cpuset(file: str) -> KnobSpec:
    knob = Knob(file)

    def parse(get: Get, _dev: str | None) -> Value:
        return parse_cpulist(need(get, file))

    def write(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
        return _one(file, str(expect_cpulist(value)))

    return KnobSpec(knob, "cpuset", (file,), parse, write)


def _memory(file: str) -> KnobSpec:
    """memory.min/low/high/max/swap.max: ``max`` or bytes (defaults: api.KERNEL_DEFAULTS)."""

    def parse(get: Get, _dev: str | None) -> Value:
        return parse_max_int(need(get, file))

    def write(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
        return _one(file, format_max_int(expect_opt_int(value)))

    def effective(value: Value) -> Value:
        return convert.page_floor(expect_opt_int(value))

    return KnobSpec(Knob(file), "memory", (file,), parse, write, effective)


def _parse_oom_group(get: Get, _dev: str | None) -> Value:
    return parse_int(need(get, "memory.oom.group")) != 0


def _write_oom_group(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
    return _one("memory.oom.group", "1" if expect_bool(value) else "0")


def _parse_io_weight(get: Get, _dev: str | None) -> Value:
    for line in need(get, "io.weight").splitlines():
        key, _, rest = line.strip().partition(" ")
        if key == "default":
            return parse_int(rest)
    raise ParseError("io.weight: no 'default' line")


def _write_io_weight(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
    return _one("io.weight", f"default {expect_int(value)}")


def parse_io_max_line(rest: str) -> IoMax:
    fields: dict[str, int | None] = {}
    for item in rest.split():
        key, sep, val = item.partition("=")
        if not sep:
            raise ParseError(f"io.max: bad field {item!r}")
        if key in IoMax.FIELDS:
            fields[key] = parse_max_int(val)
    return IoMax(**fields)


def _parse_io_max(get: Get, dev: str | None) -> Value:
    line = device_lines(need(get, "io.max")).get(expect_device(dev))
    return IoMax() if line is None else parse_io_max_line(line)


def _write_io_max(value: Value, dev: str | None, _ctx: Context) -> list[Writes]:
    return _one("io.max", f"{expect_device(dev)} {expect_iomax(value)}")


def _pids_parse(get: Get, _dev: str | None) -> Value:
    return parse_max_int(need(get, "pids.max"))


def _pids_write(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
    return _one("pids.max", format_max_int(expect_opt_int(value)))


def _cpu_weight_parse(get: Get, _dev: str | None) -> Value:
    return parse_int(need(get, "cpu.weight"))


def _cpu_weight_write(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
    return _one("cpu.weight", str(expect_int(value)))


TABLE: dict[Knob, KnobSpec] = {
    Knob.CPU_WEIGHT: KnobSpec(Knob.CPU_WEIGHT, "cpu", ("cpu.weight",), _cpu_weight_parse, _cpu_weight_write),
    Knob.CPU_MAX: KnobSpec(Knob.CPU_MAX, "cpu", ("cpu.max",), _parse_cpu_max, _write_cpu_max),
    Knob.CPUSET_CPUS: _cpuset("cpuset.cpus"),
    Knob.CPUSET_MEMS: _cpuset("cpuset.mems"),
    Knob.MEMORY_MIN: _memory("memory.min"),
    Knob.MEMORY_LOW: _memory("memory.low"),
    Knob.MEMORY_HIGH: _memory("memory.high"),
    Knob.MEMORY_MAX: _memory("memory.max"),
    Knob.MEMORY_SWAP_MAX: _memory("memory.swap.max"),
    Knob.MEMORY_OOM_GROUP: KnobSpec(
        Knob.MEMORY_OOM_GROUP, "memory", ("memory.oom.group",), _parse_oom_group, _write_oom_group
    ),
    Knob.IO_WEIGHT: KnobSpec(Knob.IO_WEIGHT, "io", ("io.weight",), _parse_io_weight, _write_io_weight),
    Knob.IO_MAX: KnobSpec(Knob.IO_MAX, "io", ("io.max",), _parse_io_max, _write_io_max),
    Knob.PIDS_MAX: KnobSpec(Knob.PIDS_MAX, "pids", ("pids.max",), _pids_parse, _pids_write),
}

# Files whose presence in a non-root group decides support beyond "the controller is available".
FEATURE_FILES: dict[Knob, str] = {
    Knob.MEMORY_SWAP_MAX: "memory.swap.max",
    Knob.MEMORY_OOM_GROUP: "memory.oom.group",
    Knob.IO_WEIGHT: "io.weight",
}
