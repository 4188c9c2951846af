"""cgroup v1: every knob → file(s) → format, in one table (translations in :mod:`convert`).

=================  ===========  ==============================================================
knob               hierarchy    v1 file(s)
=================  ===========  ==============================================================
cpu.weight         cpu          cpu.shares (convert.weight_to_shares)
cpu.max            cpu          cpu.cfs_period_us + cpu.cfs_quota_us (-1 = max)
cpuset.cpus/mems   cpuset       cpuset.cpus / cpuset.mems (empty = copy the parent's)
memory.max         memory       memory.limit_in_bytes (-1 = max) [+ memsw to keep swap]
memory.swap.max    memory       memory.memsw.limit_in_bytes = memory + swap
io.weight          blkio        blkio.bfq.weight (BFQ only)
io.max[dev]        blkio        blkio.throttle.{read,write}_{bps,iops}_device ("MAJ:MIN V", 0 = none)
pids.max           pids         pids.max
memory.min/low/high, memory.oom.group: no v1 equivalent (see UNSUPPORTED)
=================  ===========  ==============================================================

Ordering rules enforced here, inside one ``set`` (the planner need not know them):

* ``cpu.max``: period then quota; if the period write fails with EINVAL (the intermediate
  quota/period ratio breaks the parent/child bandwidth check), quota then period (runc ``fs/cpu.go``).
  Removing the quota writes ``-1`` first, which always passes the check.
* ``memory.max`` with a swap limit in place (memsw finite): memsw moves with it to keep the swap
  allowance; raising writes memsw first, lowering writes memory first (memsw ≥ memory at every step,
  runc ``fs/memory.go setMemoryAndSwap``). ``memory.max: max`` lifts memsw to unlimited as well (v1
  cannot limit swap alone), so resetting both knobs works in either order.
* ``cpuset.*`` reset to the empty list copies the parent's list: an empty v1 cpuset cannot hold tasks.
"""

from __future__ import annotations

from drivers.api import CpuMax, DriverError, IoMax, Knob, Value
from drivers.cgroupfs import convert
from drivers.cgroupfs.knobs import (
    Context,
    Get,
    KnobSpec,
    Writes,
    device_lines,
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

# Knobs v1 cannot honour at all, with the reason the plan shows.
UNSUPPORTED: dict[Knob, str] = {
    Knob.MEMORY_MIN: "cgroup v1 has no memory protection (memory.min is cgroup v2 only)",
    Knob.MEMORY_LOW: "cgroup v1 has no memory protection (memory.low is cgroup v2 only)",
    Knob.MEMORY_HIGH: (
        "cgroup v1 has no memory.high throttling; memory.soft_limit_in_bytes only steers reclaim under "
        "global memory pressure and never throttles, so it is not a translation of the v2 knob"
    ),
    Knob.MEMORY_OOM_GROUP: "cgroup v1 cannot OOM-kill a group as a unit (memory.oom.group is cgroup v2 only)",
}

# Knobs that need a file the kernel only provides with some feature, and the reason when it is absent.
FEATURE_FILES: dict[Knob, tuple[str, str]] = {
    Knob.MEMORY_SWAP_MAX: (
        "memory.memsw.limit_in_bytes",
        "swap accounting is disabled (no memory.memsw.* files; boot with swapaccount=1)",
    ),
    Knob.IO_WEIGHT: (
        "blkio.bfq.weight",
        "no BFQ I/O scheduler (no blkio.bfq.weight); cgroup v1 has no other I/O weight",
    ),
}

LIMIT = "memory.limit_in_bytes"
MEMSW = "memory.memsw.limit_in_bytes"
QUOTA = "cpu.cfs_quota_us"
PERIOD = "cpu.cfs_period_us"
# What the files the writers below read hold in a group the kernel has just created (no memory or
# swap limit, no quota, the default 100 ms period): a group created by this apply is not read back
# before its first write of each (3 syscalls per file, per new group).
NEW_GROUP_FILES: dict[str, str] = {
    LIMIT: str(convert.V1_UNLIMITED),
    MEMSW: str(convert.V1_UNLIMITED),
    QUOTA: "-1",
    PERIOD: "100000",
}
THROTTLE_FILES: dict[str, str] = {
    "rbps": "blkio.throttle.read_bps_device",
    "wbps": "blkio.throttle.write_bps_device",
    "riops": "blkio.throttle.read_iops_device",
    "wiops": "blkio.throttle.write_iops_device",
}


def _one(file: str, text: str) -> list[Writes]:
    return [[(file, text)]]


def _opt_bytes(text: str | None) -> int | None:
    return None if text is None else convert.bytes_from_v1(parse_int(text))


# cpu ---------------------------------------------------------------------------------------------


def _parse_shares(get: Get, _dev: str | None) -> Value:
    return convert.shares_to_weight(parse_int(need(get, "cpu.shares")))


def _write_shares(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
    return _one("cpu.shares", str(convert.weight_to_shares(expect_int(value))))


def _shares_effective(value: Value) -> Value:
    return convert.shares_to_weight(convert.weight_to_shares(expect_int(value)))


def _parse_cfs(get: Get, _dev: str | None) -> Value:
    return CpuMax(convert.quota_from_v1(parse_int(need(get, QUOTA))), parse_int(need(get, PERIOD)))


def _write_cfs(value: Value, _dev: str | None, ctx: Context) -> list[Writes]:
    cpu_max = expect_cpumax(value)
    quota, period = str(convert.quota_to_v1(cpu_max.quota_us)), str(cpu_max.period_us)
    # Each write of either file re-validates the bandwidth of every task group on the host (the
    # kernel walks the whole tree), so it costs more the more groups exist: an unchanged period (the
    # common case, 100 ms) is read, not rewritten — a 5000-group apply saves 5000 tree walks.
    if (ctx.read(PERIOD) or "").strip() == period:
        return [[(QUOTA, quota)]]
    if cpu_max.quota_us is None:
        return [[(QUOTA, quota), (PERIOD, period)]]
    return [[(PERIOD, period), (QUOTA, quota)], [(QUOTA, quota), (PERIOD, period)]]


# cpuset ------------------------------------------------------------------------------------------


def _cpuset(file: str) -> KnobSpec:
    def parse(get: Get, _dev: str | None) -> Value:
        return parse_cpulist(need(get, file))

    def write(value: Value, _dev: str | None, ctx: Context) -> list[Writes]:
        wanted = expect_cpulist(value)
        if not wanted.ids:  # v2's "inherit": a v1 cpuset must hold the parent's list instead
            parent = ctx.read_parent(file)
            if parent is None or not parse_cpulist(parent).ids:
                raise DriverError(f"cannot reset {file}: the parent's {file} is empty", target=file)
            return _one(file, str(parse_cpulist(parent)))
        return _one(file, str(wanted))

    return KnobSpec(Knob(file), "cpuset", (file,), parse, write)


# memory ------------------------------------------------------------------------------------------


def _parse_limit(get: Get, _dev: str | None) -> Value:
    return convert.bytes_from_v1(parse_int(need(get, LIMIT)))


def _write_limit(value: Value, _dev: str | None, ctx: Context) -> list[Writes]:
    new = expect_opt_int(value)
    new_text = str(convert.bytes_to_v1(new))
    old = _opt_bytes(ctx.read(LIMIT))
    swap = convert.swap_from_memsw(old, _opt_bytes(ctx.read(MEMSW)))
    if swap is None:  # no swap limit to preserve (or no swap accounting): memsw stays as it is
        return _one(LIMIT, new_text)
    # memory back to unlimited: v1 cannot keep a swap-only limit, so memsw is lifted with it (first)
    memsw = None if new is None else convert.memsw_from_swap(new, swap)
    memsw_text = str(convert.bytes_to_v1(memsw))
    raising = new is None or old is None or new > old
    if raising:
        return [[(MEMSW, memsw_text), (LIMIT, new_text)]]
    return [[(LIMIT, new_text), (MEMSW, memsw_text)]]


def _parse_swap(get: Get, _dev: str | None) -> Value:
    return convert.swap_from_memsw(_opt_bytes(need(get, LIMIT)), _opt_bytes(need(get, MEMSW)))


def _write_swap(value: Value, _dev: str | None, ctx: Context) -> list[Writes]:
    try:
        memsw = convert.memsw_from_swap(_opt_bytes(ctx.read(LIMIT)), expect_opt_int(value))
    except ValueError as exc:
        raise DriverError(str(exc), target=MEMSW, value=format_max_int(value)) from None
    return _one(MEMSW, str(convert.bytes_to_v1(memsw)))


def _page_effective(value: Value) -> Value:
    return convert.page_floor(expect_opt_int(value))


# io ----------------------------------------------------------------------------------------------


def _parse_bfq(get: Get, _dev: str | None) -> Value:
    text = need(get, "blkio.bfq.weight")
    for line in text.splitlines():  # newer kernels print "default N" plus per-device lines
        key, _, rest = line.strip().partition(" ")
        if key == "default":
            return convert.bfq_to_io_weight(parse_int(rest))
    return convert.bfq_to_io_weight(parse_int(text))


def _write_bfq(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
    return _one("blkio.bfq.weight", str(convert.io_weight_to_bfq(expect_int(value))))


def _bfq_effective(value: Value) -> Value:
    return convert.bfq_to_io_weight(convert.io_weight_to_bfq(expect_int(value)))


def _parse_throttle(get: Get, dev: str | None) -> Value:
    device = expect_device(dev)
    fields: dict[str, int | None] = {}
    for field, file in THROTTLE_FILES.items():
        line = device_lines(need(get, file)).get(device)
        fields[field] = None if line is None else parse_int(line)
    return IoMax(**fields)


def _write_throttle(value: Value, dev: str | None, _ctx: Context) -> list[Writes]:
    device, limits = expect_device(dev), expect_iomax(value)
    # 0 removes a v1 throttle rule, which is what "max" means.
    return [[(file, f"{device} {getattr(limits, field) or 0}") for field, file in THROTTLE_FILES.items()]]


def _throttle_effective(value: Value) -> Value:
    limits = expect_iomax(value)
    return IoMax(**{f: (getattr(limits, f) or None) for f in IoMax.FIELDS})


# pids --------------------------------------------------------------------------------------------


def _parse_pids(get: Get, _dev: str | None) -> Value:
    return parse_max_int(need(get, "pids.max"))


def _write_pids(value: Value, _dev: str | None, _ctx: Context) -> list[Writes]:
    return _one("pids.max", format_max_int(expect_opt_int(value)))


TABLE: dict[Knob, KnobSpec] = {
    Knob.CPU_WEIGHT: KnobSpec(
        Knob.CPU_WEIGHT, "cpu", ("cpu.shares",), _parse_shares, _write_shares, _shares_effective
    ),
    Knob.CPU_MAX: KnobSpec(Knob.CPU_MAX, "cpu", (QUOTA, PERIOD), _parse_cfs, _write_cfs),
    Knob.CPUSET_CPUS: _cpuset("cpuset.cpus"),
    Knob.CPUSET_MEMS: _cpuset("cpuset.mems"),
    Knob.MEMORY_MAX: KnobSpec(
        Knob.MEMORY_MAX, "memory", (LIMIT,), _parse_limit, _write_limit, _page_effective
    ),
    Knob.MEMORY_SWAP_MAX: KnobSpec(
        Knob.MEMORY_SWAP_MAX, "memory", (MEMSW, LIMIT), _parse_swap, _write_swap, _page_effective
    ),
    Knob.IO_WEIGHT: KnobSpec(
        Knob.IO_WEIGHT, "blkio", ("blkio.bfq.weight",), _parse_bfq, _write_bfq, _bfq_effective
    ),
    Knob.IO_MAX: KnobSpec(
        Knob.IO_MAX,
        "blkio",
        tuple(THROTTLE_FILES.values()),
        _parse_throttle,
        _write_throttle,
        _throttle_effective,
    ),
    Knob.PIDS_MAX: KnobSpec(Knob.PIDS_MAX, "pids", ("pids.max",), _parse_pids, _write_pids),
}

# The v1 hierarchies cgctl creates its groups in (when mounted), and the one whose directory decides
# whether a group exists: cpu is mounted on every v1 host that can run cgctl's knobs at all.
HIERARCHIES: tuple[str, ...] = ("cpu", "cpuacct", "cpuset", "memory", "blkio", "pids", "freezer")
PRIMARY_PREFERENCE: tuple[str, ...] = ("cpu", "memory", "pids", "cpuset", "blkio", "freezer", "cpuacct")
