"""Fast, batched reads of per-group usage from cgroupfs (v2, or v1 per-controller hierarchies).

Everything here is synchronous and cheap on purpose: the caller (the cgroupfs driver's ``stats()``,
the exporter's extra subtrees) wraps one whole batch in a single ``asyncio.to_thread``. Files are read
with plain ``os.open``/``os.read`` of bytes — text mode costs 2-3x more per file and aiofiles 20x
(reference/performance.md), and a scrape of thousands of groups is dominated by these reads.

Rules the readers follow (reference/anchors.md §3, pitfalls 24-26):
- Units are converted to seconds and bytes: v2 µs, v1 ``cpuacct.usage`` ns, v1 ``cpuacct.stat`` USER_HZ
  ticks, v1 ``cpu.stat throttled_time`` ns, PSI ``total=`` µs.
- A file that does not exist on this kernel (``memory.peak`` < 5.19, PSI with ``psi=0``, a controller
  that is not enabled) leaves its field ``None``/empty — never a fake 0.
- A group that disappears mid-read (ENOENT/ENODEV) is dropped, or keeps only what was read; nothing
  here raises for a vanished file or unexpected content.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import stat
from collections.abc import Iterable, Mapping, Sequence

from drivers.api import CpuMax, GroupUsage, IoMax, Knob, SettingKey, Value, setting_key
from drivers.cgroupfs import convert

_CHUNK = 16384
_O_FLAGS = os.O_RDONLY | os.O_CLOEXEC

# v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on 4 KiB pages); anything this
# large is unlimited whatever the page size.
_V1_UNLIMITED = 1 << 62

# memory.stat keys exported as cgroup_memory_stat_bytes{type}: v2 name → v1 (hierarchical) name.
MEMORY_STAT_V2: tuple[str, ...] = (
    "anon",
    "file",
    "kernel",
    "slab",
    "sock",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "active_file",
    "inactive_file",
)
_MEMORY_STAT_V1: Mapping[str, str] = {
    "anon": "total_rss",
    "file": "total_cache",
    "shmem": "total_shmem",
    "file_mapped": "total_mapped_file",
    "file_dirty": "total_dirty",
    "file_writeback": "total_writeback",
    "active_file": "total_active_file",
    "inactive_file": "total_inactive_file",
}
_MEMORY_STAT_V2_KEYS = tuple((name.encode(), name) for name in MEMORY_STAT_V2)
_MEMORY_STAT_V1_KEYS = tuple((v1.encode(), name) for name, v1 in _MEMORY_STAT_V1.items())

PRESSURE_RESOURCES: tuple[str, ...] = ("cpu", "memory", "io")


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_file(path: str) -> bytes | None:
    """The whole file as bytes, or None when it cannot be read (absent, group removed, EOPNOTSUPP...)."""
    try:
        fd = os.open(path, _O_FLAGS)
    except OSError:
        return None
    try:
        data = os.read(fd, _CHUNK)
        if len(data) == _CHUNK:  # seq_file hands out big files (io.stat with many devices) in chunks
            parts = [data]
            while chunk := os.read(fd, _CHUNK):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# Parsing (pure functions on the file's bytes; unit-tested with captured texts)
# --------------------------------------------------------------------------------------------------


def parse_int(data: bytes | None) -> int | None:
    """A single integer (``memory.current``); None for absent or malformed content."""
    if data is None:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def parse_max(data: bytes | None) -> float | None:
    """A single integer or ``max`` (``pids.max``): max → +Inf."""
    if data is None:
        return None
    text = data.strip()
    if text == b"max":
        return math.inf
    try:
        return float(int(text))
    except ValueError:
        return None


def parse_flat_keyed(data: bytes | None) -> dict[bytes, bytes]:
    """``key value`` lines (cpu.stat, memory.stat, memory.events, cgroup.events, oom_control...)."""
    if not data:
        return {}
    tokens = iter(data.split())
    return dict(zip(tokens, tokens, strict=False))


def _int_or_none(table: Mapping[bytes, bytes], key: bytes) -> int | None:
    raw = table.get(key)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def parse_pressure(data: bytes | None) -> tuple[float | None, float | None]:
    """PSI file → (some total, full total) in seconds; ``total=`` is cumulative µs."""
    some: float | None = None
    full: float | None = None
    if not data:
        return some, full
    for line in data.splitlines():
        index = line.find(b"total=")
        if index < 0:
            continue
        try:
            total = int(line[index + 6 :]) / 1e6
        except ValueError:
            continue
        if line.startswith(b"some"):
            some = total
        elif line.startswith(b"full"):
            full = total
    return some, full


_IO_STAT_FIELDS = (b"rbytes", b"wbytes", b"rios", b"wios")


def parse_io_stat(data: bytes | None) -> dict[str, dict[str, int]]:
    """v2 ``io.stat``: ``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`` per device."""
    result: dict[str, dict[str, int]] = {}
    if not data:
        return result
    for line in data.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        fields: dict[str, int] = {}
        for token in tokens[1:]:
            key, sep, value = token.partition(b"=")
            if sep and key in _IO_STAT_FIELDS:
                try:
                    fields[key.decode()] = int(value)
                except ValueError:
                    continue
        if fields:
            result[tokens[0].decode()] = fields
    return result


def parse_blkio(data: bytes | None, read_key: str, write_key: str, into: dict[str, dict[str, int]]) -> None:
    """v1 ``blkio.throttle.io_service{d,_bytes}_recursive``: ``MAJ:MIN Read N`` lines → ``into``."""
    if not data:
        return
    for line in data.splitlines():
        tokens = line.split()
        if len(tokens) != 3:  # the trailing "Total N" line has two tokens
            continue
        op = tokens[1]
        if op == b"Read":
            key = read_key
        elif op == b"Write":
            key = write_key
        else:
            continue
        try:
            into.setdefault(tokens[0].decode(), {})[key] = int(tokens[2])
        except ValueError:
            continue


def _add_memory_stat(
    usage: GroupUsage, mstat: Mapping[bytes, bytes], keys: tuple[tuple[bytes, str], ...]
) -> None:
    """memory.stat's exported subset (``keys``: file key → v2 name) and the working set derived from it."""
    if not mstat:
        return
    for raw_key, name in keys:
        value = _int_or_none(mstat, raw_key)
        if value is not None:
            usage.memory_stat_bytes[name] = value
    usage.memory_working_set_bytes = _working_set(
        usage.memory_usage_bytes, usage.memory_stat_bytes.get("inactive_file")
    )


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    # cAdvisor-compatible: usage minus inactive file cache, clamped (usage is fuzzy on v1).
    if usage is None:
        return None
    return max(usage - (inactive_file or 0), 0)


def _v1_limit(data: bytes | None) -> int | bool | None:
    """v1 byte limit: the integer, None for unlimited, False when unreadable."""
    value = parse_int(data)
    if value is None:
        return False
    if value < 0 or value >= _V1_UNLIMITED:
        return None
    return value


def parse_io_max(data: bytes | None) -> dict[str, IoMax]:
    """v2 ``io.max``: ``MAJ:MIN rbps=max wbps=N riops=max wiops=max`` per device."""
    result: dict[str, IoMax] = {}
    if not data:
        return result
    for line in data.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        values: dict[str, int | None] = {}
        for token in tokens[1:]:
            key, sep, raw = token.partition(b"=")
            name = key.decode()
            if not sep or name not in IoMax.FIELDS:
                continue
            try:
                values[name] = None if raw == b"max" else int(raw)
            except ValueError:
                continue
        result[tokens[0].decode()] = IoMax(**values)
    return result


# --------------------------------------------------------------------------------------------------
# cgroup v2
# --------------------------------------------------------------------------------------------------

_V2_FILES = (
    "cpu.stat",
    "memory.current",
    "memory.stat",
    "memory.events",
    "memory.peak",
    "memory.swap.current",
    "io.stat",
    "pids.current",
    "pids.max",
    "cpu.pressure",
    "memory.pressure",
    "io.pressure",
    "cgroup.events",
)
_V2_LIMIT_FILES = (
    "cpu.max",
    "cpu.weight",
    "memory.max",
    "memory.high",
    "memory.low",
    "memory.min",
    "memory.swap.max",
    "io.max",
    "io.weight",
)


def _join(root: str, cgroup: str) -> str:
    return root.rstrip("/") + "/" + cgroup.strip("/") if cgroup.strip("/") else root.rstrip("/") or "/"


def usage_from_v2(cgroup: str, files: Mapping[str, bytes | None], *, limits: bool = True) -> GroupUsage:
    """Build one group's usage from its v2 files' contents (absent files map to None); ``limits``
    also fills ``GroupUsage.limits`` from the limit files present."""
    usage = GroupUsage(cgroup=cgroup)
    cpu = parse_flat_keyed(files.get("cpu.stat"))
    if cpu:
        usage_us = _int_or_none(cpu, b"usage_usec")
        user_us = _int_or_none(cpu, b"user_usec")
        system_us = _int_or_none(cpu, b"system_usec")
        throttled_us = _int_or_none(cpu, b"throttled_usec")
        usage.cpu_usage_seconds = None if usage_us is None else usage_us / 1e6
        usage.cpu_user_seconds = None if user_us is None else user_us / 1e6
        usage.cpu_system_seconds = None if system_us is None else system_us / 1e6
        usage.cpu_periods = _int_or_none(cpu, b"nr_periods")
        usage.cpu_throttled_periods = _int_or_none(cpu, b"nr_throttled")
        usage.cpu_throttled_seconds = None if throttled_us is None else throttled_us / 1e6
    usage.memory_usage_bytes = parse_int(files.get("memory.current"))
    mstat = parse_flat_keyed(files.get("memory.stat"))
    _add_memory_stat(usage, mstat, _MEMORY_STAT_V2_KEYS)
    usage.memory_peak_bytes = parse_int(files.get("memory.peak"))
    usage.memory_swap_usage_bytes = parse_int(files.get("memory.swap.current"))
    for key, raw in parse_flat_keyed(files.get("memory.events")).items():
        try:
            usage.memory_events[key.decode()] = int(raw)
        except ValueError:
            continue
    usage.io = parse_io_stat(files.get("io.stat"))
    usage.pids_current = parse_int(files.get("pids.current"))
    usage.pids_max = parse_max(files.get("pids.max"))
    for resource in PRESSURE_RESOURCES:
        some, full = parse_pressure(files.get(resource + ".pressure"))
        if some is not None:
            usage.pressure_some_seconds[resource] = some
        if full is not None:
            usage.pressure_full_seconds[resource] = full
    events = parse_flat_keyed(files.get("cgroup.events"))
    frozen = _int_or_none(events, b"frozen")
    populated = _int_or_none(events, b"populated")
    usage.frozen = None if frozen is None else frozen == 1
    usage.populated = None if populated is None else populated == 1
    if limits:
        _limits_from_v2(usage.limits, files)
        _pids_limit(usage)
    return usage


def _pids_limit(usage: GroupUsage) -> None:
    if usage.pids_max is not None:
        usage.limits[Knob.PIDS_MAX.value] = None if usage.pids_max == math.inf else int(usage.pids_max)


def _limits_from_v2(limits: dict[SettingKey, Value], files: Mapping[str, bytes | None]) -> None:
    raw = files.get("cpu.max")
    if raw is not None:
        parts = raw.split()
        with contextlib.suppress(ValueError, IndexError):
            limits[Knob.CPU_MAX.value] = CpuMax(
                None if parts[0] == b"max" else int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
            )
    for knob in (Knob.CPU_WEIGHT, Knob.IO_WEIGHT):
        raw = files.get(knob.value)
        if raw is not None:
            # io.weight reads "default 100" (+ per-device lines); cpu.weight a bare number.
            table = raw.split()
            weight = parse_int(table[1] if len(table) > 1 and table[0] == b"default" else raw)
            if weight is not None:
                limits[knob.value] = weight
    for knob in (Knob.MEMORY_MAX, Knob.MEMORY_HIGH, Knob.MEMORY_LOW, Knob.MEMORY_MIN, Knob.MEMORY_SWAP_MAX):
        value = parse_max(files.get(knob.value))
        if value is not None:
            limits[knob.value] = None if value == math.inf else int(value)
    for device, io_max in parse_io_max(files.get("io.max")).items():
        limits[setting_key(Knob.IO_MAX, device)] = io_max


def read_v2(mount: str, cgroups: Iterable[str], *, limits: bool = False) -> dict[str, GroupUsage]:
    """Usage of v2 groups given as paths under ``mount`` (``/cgctl/web``); vanished groups are left out.

    ``limits`` also reads the configured limits (cpu.max, memory.max, io.max, ...) into
    ``GroupUsage.limits`` — nine more files per group, so only when the caller has no better source.
    """
    names = _V2_FILES + _V2_LIMIT_FILES if limits else _V2_FILES
    result: dict[str, GroupUsage] = {}
    for cgroup in cgroups:
        base = _join(mount, cgroup) + "/"
        files = {name: read_file(base + name) for name in names}
        if any(data is not None for data in files.values()):
            path = "/" + cgroup.strip("/")
            result[path] = usage_from_v2(path, files, limits=limits)
    return result


# --------------------------------------------------------------------------------------------------
# cgroup v1
# --------------------------------------------------------------------------------------------------

# (controller hierarchy, file) pairs read per group; a hierarchy missing from the mapping is skipped.
_V1_FILES: tuple[tuple[str, str], ...] = (
    ("cpuacct", "cpuacct.usage"),
    ("cpuacct", "cpuacct.stat"),
    ("cpu", "cpu.stat"),
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.stat"),
    ("memory", "memory.max_usage_in_bytes"),
    ("memory", "memory.failcnt"),
    ("memory", "memory.oom_control"),
    ("blkio", "blkio.throttle.io_service_bytes_recursive"),
    ("blkio", "blkio.throttle.io_serviced_recursive"),
    ("pids", "pids.current"),
    ("pids", "pids.max"),
    ("freezer", "freezer.state"),
)
_V1_LIMIT_FILES: tuple[tuple[str, str], ...] = (
    ("cpu", "cpu.cfs_quota_us"),
    ("cpu", "cpu.cfs_period_us"),
    ("cpu", "cpu.shares"),
    ("memory", "memory.limit_in_bytes"),
    ("memory", "memory.memsw.limit_in_bytes"),
    ("blkio", "blkio.throttle.read_bps_device"),
    ("blkio", "blkio.throttle.write_bps_device"),
    ("blkio", "blkio.throttle.read_iops_device"),
    ("blkio", "blkio.throttle.write_iops_device"),
)

_CLK_TCK = float(os.sysconf("SC_CLK_TCK"))


def usage_from_v1(
    cgroup: str, files: Mapping[str, bytes | None], clk_tck: float = _CLK_TCK, *, limits: bool = True
) -> GroupUsage:
    """Build one group's usage from its v1 files' contents (keyed by file name; absent → None);
    ``limits`` also fills ``GroupUsage.limits`` (as v2 knobs) from the limit files present."""
    usage = GroupUsage(cgroup=cgroup)
    usage_ns = parse_int(files.get("cpuacct.usage"))
    usage.cpu_usage_seconds = None if usage_ns is None else usage_ns / 1e9
    acct = parse_flat_keyed(files.get("cpuacct.stat"))
    user_ticks = _int_or_none(acct, b"user")
    system_ticks = _int_or_none(acct, b"system")
    usage.cpu_user_seconds = None if user_ticks is None else user_ticks / clk_tck
    usage.cpu_system_seconds = None if system_ticks is None else system_ticks / clk_tck
    cpu = parse_flat_keyed(files.get("cpu.stat"))
    if cpu:
        usage.cpu_periods = _int_or_none(cpu, b"nr_periods")
        usage.cpu_throttled_periods = _int_or_none(cpu, b"nr_throttled")
        throttled_ns = _int_or_none(cpu, b"throttled_time")
        usage.cpu_throttled_seconds = None if throttled_ns is None else throttled_ns / 1e9
    usage.memory_usage_bytes = parse_int(files.get("memory.usage_in_bytes"))
    mstat = parse_flat_keyed(files.get("memory.stat"))
    _add_memory_stat(usage, mstat, _MEMORY_STAT_V1_KEYS)
    usage.memory_peak_bytes = parse_int(files.get("memory.max_usage_in_bytes"))
    # memory.stat's total_swap (present with swap accounting) is exact; memsw − usage is the fallback
    # for callers that hand in memory.memsw.usage_in_bytes instead. Not reading memsw saves a file.
    usage.memory_swap_usage_bytes = _int_or_none(mstat, b"total_swap")
    memsw = parse_int(files.get("memory.memsw.usage_in_bytes"))
    if usage.memory_swap_usage_bytes is None and memsw is not None and usage.memory_usage_bytes is not None:
        usage.memory_swap_usage_bytes = max(memsw - usage.memory_usage_bytes, 0)
    failcnt = parse_int(files.get("memory.failcnt"))
    if failcnt is not None:
        usage.memory_events["max"] = failcnt
    oom_kill = _int_or_none(parse_flat_keyed(files.get("memory.oom_control")), b"oom_kill")
    if oom_kill is not None:
        usage.memory_events["oom_kill"] = oom_kill
    parse_blkio(files.get("blkio.throttle.io_service_bytes_recursive"), "rbytes", "wbytes", usage.io)
    parse_blkio(files.get("blkio.throttle.io_serviced_recursive"), "rios", "wios", usage.io)
    usage.pids_current = parse_int(files.get("pids.current"))
    usage.pids_max = parse_max(files.get("pids.max"))
    state = files.get("freezer.state")
    if state is not None:
        # FREEZING is not frozen yet: the tasks still run.
        usage.frozen = state.strip() == b"FROZEN"
    for resource in PRESSURE_RESOURCES:
        some, full = parse_pressure(files.get(resource + ".pressure"))
        if some is not None:
            usage.pressure_some_seconds[resource] = some
        if full is not None:
            usage.pressure_full_seconds[resource] = full
    if limits:
        _limits_from_v1(usage.limits, files)
        _pids_limit(usage)
    return usage


def _limits_from_v1(limits: dict[SettingKey, Value], files: Mapping[str, bytes | None]) -> None:
    quota = parse_int(files.get("cpu.cfs_quota_us"))
    period = parse_int(files.get("cpu.cfs_period_us"))
    if quota is not None and period is not None:
        limits[Knob.CPU_MAX.value] = CpuMax(None if quota < 0 else quota, period)
    shares = parse_int(files.get("cpu.shares"))
    if shares is not None:
        limits[Knob.CPU_WEIGHT.value] = convert.shares_to_weight(shares)  # the driver's own mapping
    memory_max = _v1_limit(files.get("memory.limit_in_bytes"))
    if memory_max is not False:
        limits[Knob.MEMORY_MAX.value] = memory_max
    # No memory.low/high here: v1's soft limit is not a translation of either (see drivers/cgroupfs/v1.py).
    memsw_max = _v1_limit(files.get("memory.memsw.limit_in_bytes"))
    if memsw_max is not False and memory_max is not False:
        # v1 limits memory+swap together; v2's swap.max is the part above memory.max.
        if memsw_max is None or memory_max is None:
            limits[Knob.MEMORY_SWAP_MAX.value] = None
        else:
            limits[Knob.MEMORY_SWAP_MAX.value] = max(int(memsw_max) - int(memory_max), 0)
    devices: dict[str, dict[str, int]] = {}
    for name, field_name in (
        ("blkio.throttle.read_bps_device", "rbps"),
        ("blkio.throttle.write_bps_device", "wbps"),
        ("blkio.throttle.read_iops_device", "riops"),
        ("blkio.throttle.write_iops_device", "wiops"),
    ):
        raw = files.get(name)
        for line in raw.splitlines() if raw else ():
            tokens = line.split()
            if len(tokens) == 2:
                try:
                    devices.setdefault(tokens[0].decode(), {})[field_name] = int(tokens[1])
                except ValueError:
                    continue
    for device, values in devices.items():
        limits[setting_key(Knob.IO_MAX, device)] = IoMax(**values)


def read_v1(
    hierarchies: Mapping[str, str],
    cgroups: Iterable[str],
    *,
    limits: bool = False,
    unified: str | None = None,
) -> dict[str, GroupUsage]:
    """Usage of v1 groups given as paths relative to each hierarchy root (``/cgctl/web``).

    ``hierarchies`` maps a controller to its hierarchy root (``{"memory": "/sys/fs/cgroup/memory"}``;
    comounted controllers map to the same root). ``unified`` is the hybrid layout's controller-less
    cgroup2 mount: PSI is read there when the same path exists in it. Vanished groups are left out.
    """
    pairs = _V1_FILES + _V1_LIMIT_FILES if limits else _V1_FILES
    present = [(hierarchies[ctrl].rstrip("/"), name) for ctrl, name in pairs if ctrl in hierarchies]
    result: dict[str, GroupUsage] = {}
    for cgroup in cgroups:
        rel = cgroup.strip("/")
        suffix = "/" + rel + "/" if rel else "/"
        files = {name: read_file(root + suffix + name) for root, name in present}
        if not any(data is not None for data in files.values()):
            continue
        if unified is not None:
            base = unified.rstrip("/") + suffix
            for resource in PRESSURE_RESOURCES:
                files[resource + ".pressure"] = read_file(base + resource + ".pressure")
        path = "/" + rel
        result[path] = usage_from_v1(path, files, limits=limits)
    return result


def file_paths_v2(mount: str, cgroups: Iterable[str], *, limits: bool = False) -> list[str]:
    """Every file :func:`read_v2` opens for these groups (benchmarks read them raw as the floor)."""
    names = _V2_FILES + _V2_LIMIT_FILES if limits else _V2_FILES
    return [_join(mount, cgroup) + "/" + name for cgroup in cgroups for name in names]


def file_paths_v1(
    hierarchies: Mapping[str, str], cgroups: Iterable[str], *, limits: bool = False
) -> list[str]:
    """Every file :func:`read_v1` opens for these groups (without ``unified`` PSI)."""
    pairs = _V1_FILES + _V1_LIMIT_FILES if limits else _V1_FILES
    present = [(hierarchies[ctrl].rstrip("/"), name) for ctrl, name in pairs if ctrl in hierarchies]
    paths: list[str] = []
    for cgroup in cgroups:
        rel = cgroup.strip("/")
        suffix = "/" + rel + "/" if rel else "/"
        paths.extend(root + suffix + name for root, name in present)
    return paths


def v1_hierarchies(mounts_file: str = "/proc/self/mounts") -> dict[str, str]:
    """Controller → mount point of this host's v1 hierarchies (comounts like ``cpu,cpuacct`` included)."""
    controllers = {"cpu", "cpuacct", "cpuset", "memory", "blkio", "pids", "freezer", "devices", "hugetlb"}
    result: dict[str, str] = {}
    try:
        with open(mounts_file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return result
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[2] != "cgroup":
            continue
        for option in fields[3].split(","):
            if option in controllers:
                result.setdefault(option, fields[1].replace("\\040", " "))
    return result


# --------------------------------------------------------------------------------------------------
# Discovery of other subtrees (read-only)
# --------------------------------------------------------------------------------------------------


def discover(
    root: str,
    prefixes: Sequence[str] = ("/",),
    *,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    max_depth: int | None = None,
) -> list[str]:
    """Cgroup paths (``/a/b``, relative to ``root``: the v2 mount or one v1 hierarchy) under ``prefixes``.

    Patterns are ``fnmatch`` globs on the whole path, where ``*`` also matches ``/``. A group is
    returned when it matches an ``include`` pattern; a group matching an ``exclude`` pattern is skipped
    together with everything below it (so ``/kubepods*`` prunes a whole subtree without walking it).
    ``max_depth`` counts levels below each prefix (0 = the prefix itself). Directories that vanish
    during the walk are skipped. Never follows symlinks, never writes.
    """
    base = root.rstrip("/")
    found: set[str] = set()

    def excluded(path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)

    def included(path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in include)

    for prefix in prefixes:
        start = "/" + prefix.strip("/")
        try:
            if not stat.S_ISDIR(os.lstat(base + start).st_mode):
                continue
        except OSError:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            path, depth = stack.pop()
            if excluded(path):
                continue
            if included(path):
                found.add(path)
            if max_depth is not None and depth >= max_depth:
                continue
            try:
                with os.scandir(base + path) as entries:
                    children = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            child_prefix = path if path != "/" else ""
            stack.extend((f"{child_prefix}/{name}", depth + 1) for name in children)
    return sorted(found)
