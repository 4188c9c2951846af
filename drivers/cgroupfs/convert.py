"""Every v2 ↔ v1 value translation, in one place (policies use cgroup v2 semantics).

CPU weight ↔ ``cpu.shares`` — linear, default to default
    ``shares = round(weight * 1024 / 100)`` clamped to [2, 262144]; ``weight = round(shares * 100 / 1024)``
    clamped to [1, 10000]. Weight 100 ↔ 1024 shares (both kernels' defaults). This is systemd's
    ``cgroup_cpu_weight_to_shares`` and libcgroup's ``s*100/1024`` with rounding to nearest instead of
    truncation, which makes weight → shares → weight exact for every weight in [1, 10000] (the shares
    step is 10.24 > 1), so a re-apply reads back what it wrote.
    Why not runc's formulas: the old linear ``1+((s-2)*9999)/262142`` maps 1024 shares to weight 39
    (runc#4772), and the newer logarithmic one (opencontainers/cgroups PR#20) maps defaults correctly but
    is not linear: CFS divides CPU in proportion to shares and v2 in proportion to weight, so only a
    linear map keeps siblings' ratios (weights 200:100 must stay 2:1 — the log map gives 2048:1024 only
    by accident of the default and distorts other pairs). It is also meant for v1 → v2, not the
    direction cgctl needs.

io weight ↔ ``blkio.bfq.weight`` — identity, clamped to BFQ's [1, 1000]
    The v1 file cgctl can write on current kernels is BFQ's (CFQ's ``blkio.weight`` went with CFQ in
    5.0). BFQ's weight has range [1, 1000] and default 100, v2's ``io.weight`` [1, 10000] and default 100,
    so equal numbers mean the same share and defaults map to defaults. The formula often quoted
    (``1+(w-10)*9999/990``, runc) converts CFQ's [10, 1000] (default 500) range: applied to BFQ it would
    turn the v2 default 100 into BFQ weight 20, a fifth of an untouched sibling's share. Weights above
    1000 cannot be expressed and are clamped (the planner sees it through ``effective_value``).

``cpu.max`` → ``cpu.cfs_quota_us`` + ``cpu.cfs_period_us``
    Same microseconds; quota "max" is ``-1`` in v1.

``memory.max`` → ``memory.limit_in_bytes``
    Same bytes; "max" is written as ``-1`` and reads back as the page counter maximum
    (9223372036854771712 with 4 KiB pages). Both versions round limits down to whole pages.

``memory.swap.max`` → ``memory.memsw.limit_in_bytes``
    v2 limits swap alone; v1 limits memory + swap together: ``memsw = memory.max + swap.max`` and back
    ``swap = memsw − memory``. An unlimited memory limit leaves no room for a finite swap limit.
"""

from __future__ import annotations

import os

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

CPU_SHARES_MIN, CPU_SHARES_DEFAULT, CPU_SHARES_MAX = 2, 1024, 262144
CPU_WEIGHT_MIN, CPU_WEIGHT_DEFAULT, CPU_WEIGHT_MAX = 1, 100, 10000
BFQ_WEIGHT_MIN, BFQ_WEIGHT_MAX = 1, 1000

# The largest v1 page counter value, reported for "no limit" (LONG_MAX rounded down to a page).
V1_UNLIMITED = (2**63 - 1) // PAGE_SIZE * PAGE_SIZE


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, value))


def _div_round(num: int, den: int) -> int:
    """Integer division rounding half up (exact, no float)."""
    return (2 * num + den) // (2 * den)


def weight_to_shares(weight: int) -> int:
    return _clamp(_div_round(weight * CPU_SHARES_DEFAULT, CPU_WEIGHT_DEFAULT), CPU_SHARES_MIN, CPU_SHARES_MAX)


def shares_to_weight(shares: int) -> int:
    return _clamp(_div_round(shares * CPU_WEIGHT_DEFAULT, CPU_SHARES_DEFAULT), CPU_WEIGHT_MIN, CPU_WEIGHT_MAX)


def io_weight_to_bfq(weight: int) -> int:
    return _clamp(weight, BFQ_WEIGHT_MIN, BFQ_WEIGHT_MAX)


def bfq_to_io_weight(weight: int) -> int:
    return _clamp(weight, CPU_WEIGHT_MIN, CPU_WEIGHT_MAX)


def quota_to_v1(quota_us: int | None) -> int:
    return -1 if quota_us is None else quota_us


def quota_from_v1(value: int) -> int | None:
    return None if value < 0 else value


def bytes_to_v1(limit: int | None) -> int:
    return -1 if limit is None else limit


def bytes_from_v1(value: int) -> int | None:
    return None if value >= V1_UNLIMITED else value


def page_floor(limit: int | None) -> int | None:
    """What the kernel keeps of a byte limit (whole pages, rounded down)."""
    return None if limit is None else limit // PAGE_SIZE * PAGE_SIZE


def memsw_from_swap(memory_max: int | None, swap_max: int | None) -> int | None:
    """The v1 memory+swap limit for a v2 pair; None = unlimited. Raises ValueError when v1 cannot
    express it (a finite swap limit on top of an unlimited memory limit)."""
    if swap_max is None:
        return None
    if memory_max is None:
        raise ValueError("v1 limits memory+swap together: a swap limit needs memory.max set")
    return memory_max + swap_max


def swap_from_memsw(memory_limit: int | None, memsw_limit: int | None) -> int | None:
    if memsw_limit is None:
        return None
    if memory_limit is None:  # memsw < unlimited memory cannot happen (memsw ≥ memory); be defensive
        return memsw_limit
    return max(0, memsw_limit - memory_limit)
