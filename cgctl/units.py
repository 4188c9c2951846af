"""Parsing and formatting of every unit a policy uses: sizes, durations, CPU amounts, weights, counts,
CPU/memory-node lists and strict booleans.

One module for all of it so the policy, the planner's messages and ``cgctl show`` agree. It imports
nothing heavy (no yaml): the CLI's fast paths (``freeze``, ``show``) use it directly.

Decisions (documented here because users meet them as error messages):

* **Sizes** are bytes. A plain integer is bytes. Suffixes are 1024-based and upper-case: ``K M G T P``,
  the same as ``Ki Mi Gi Ti Pi`` and ``KiB MiB GiB TiB PiB``; ``B`` alone is bytes. ``KB``/``MB``… are
  refused as ambiguous (1000 or 1024?), and lower-case ``512m`` is refused with a did-you-mean (in
  Kubernetes ``m`` means milli). Fractions are allowed with a unit (``1.5G``) and truncated to whole
  bytes. ``max`` means unlimited and parses to ``None``.
* **Durations** are integer microseconds. A plain integer is µs. Units: ``us`` (or ``µs``), ``ms``,
  ``s``. Fractions are allowed (``1.5s``) as long as the result is whole microseconds.
* **CPU amounts** (``cpu.max``): a number of CPUs (``1.5``), a percentage of one CPU (``150%``), an
  absolute quota per period as a duration (``50ms``), or ``max``.
* **Counts** (weights, pids, iops) are integers; a string of digits is accepted too.
* **Booleans** are YAML ``true``/``false`` only (``yes``/``on``/``1`` are refused).
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

from drivers.api import CpuList, CpuMax, IoMax, Knob, Value, split_key

# --------------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------------

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
PIB = 1 << 50

_POWERS = {"K": KIB, "M": MIB, "G": GIB, "T": TIB, "P": PIB}
SIZE_UNITS: dict[str, int] = {"": 1, "B": 1}
for _prefix, _mult in _POWERS.items():
    SIZE_UNITS[_prefix] = _mult
    SIZE_UNITS[_prefix + "i"] = _mult
    SIZE_UNITS[_prefix + "iB"] = _mult

# The kernel parses limits as u64 and clamps anything near the top to "max"; an int64 bound keeps every
# value representable everywhere (JSON, systemd's uint64 properties) and catches typos like 1000000T.
SIZE_LIMIT = (1 << 63) - 1

_NUMBER_UNIT_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(?P<unit>[^\s0-9.].*)?")

SIZE_HINT = "must be a size like 512M"


def _size_hint(allow_max: bool) -> str:
    return SIZE_HINT + (" or max" if allow_max else "")


def parse_size(value: object, *, allow_max: bool = True) -> int | None:
    """``512M`` → 536870912, ``4096`` → 4096, ``max`` → None. Raises ValueError with a user message."""
    hint = _size_hint(allow_max)
    if isinstance(value, bool) or value is None:
        raise ValueError(hint)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{hint}, not a negative number")
        return _check_size(value, hint, value)
    if isinstance(value, float):
        raise ValueError(f"{hint}: a number without a unit is bytes and must be whole (got {value!r})")
    if not isinstance(value, str):
        raise ValueError(hint)
    text = value.strip()
    if text == "max":
        if allow_max:
            return None
        raise ValueError(f"{hint} (max is not allowed here)")
    match = _NUMBER_UNIT_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{hint} (got {value!r})")
    unit = match["unit"] or ""
    mult = SIZE_UNITS.get(unit)
    if mult is None:
        raise ValueError(f"{hint}: {_unit_advice(match['num'], unit)}")
    number = Decimal(match["num"])
    if mult == 1 and number != number.to_integral_value():
        raise ValueError(f"{hint}: bytes must be whole (got {value!r})")
    return _check_size(int(number * mult), hint, value)


def _unit_advice(num: str, unit: str) -> str:
    upper = unit.upper()
    if len(upper) == 2 and upper[1] == "B" and upper[0] in _POWERS:
        return f"unit {unit!r} is ambiguous (1000 or 1024?); write {upper[0]} or {upper[0]}i, both 1024-based"
    for known in SIZE_UNITS:
        if known.lower() == unit.lower():
            return f"units are upper-case: did you mean {num}{known}?"
    return f"unknown unit {unit!r} (use K, M, G, T, P or Ki, Mi, Gi, Ti, Pi; all 1024-based)"


def _check_size(size: int, hint: str, written: object) -> int:
    if size > SIZE_LIMIT:
        raise ValueError(f"{hint}: {written!r} is too large (write max for no limit)")
    return size


def format_size(size: int | None, *, exact: bool = True) -> str:
    """536870912 → ``512M``, 1610612736 → ``1536M``, None → ``max``.

    ``exact`` keeps the value round-trippable (bytes when no unit divides it, for plans); with
    ``exact=False`` it is rounded to one decimal (``117.7M``, for usage figures in ``show``).
    """
    if size is None:
        return "max"
    for unit, mult in reversed(_POWERS.items()):
        if size >= mult:
            if size % mult == 0:
                return f"{size // mult}{unit}"
            if not exact:
                return f"{size / mult:.1f}{unit}"
    return str(size)


# --------------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------------

USEC_PER_MSEC = 1_000
USEC_PER_SEC = 1_000_000
DURATION_UNITS: dict[str, int] = {"us": 1, "µs": 1, "μs": 1, "ms": USEC_PER_MSEC, "s": USEC_PER_SEC}
DURATION_HINT = "must be a duration like 100ms"

# The kernel's bounds for the CFS bandwidth period (kernel/sched/core.c: 1 ms .. 1 s).
PERIOD_MIN_US = 1_000
PERIOD_MAX_US = 1_000_000
DEFAULT_PERIOD_US = 100_000
# The kernel refuses quotas below 1 ms (min_cfs_quota_period).
QUOTA_MIN_US = 1_000


def parse_duration_us(value: object) -> int:
    """``100ms`` → 100000, ``1.5s`` → 1500000, ``250`` → 250 (a plain integer is µs)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(DURATION_HINT)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{DURATION_HINT}, not a negative number")
        return value
    if isinstance(value, float):
        raise ValueError(f"{DURATION_HINT}: a number without a unit is microseconds and must be whole")
    if not isinstance(value, str):
        raise ValueError(DURATION_HINT)
    match = _NUMBER_UNIT_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{DURATION_HINT} (got {value!r})")
    unit = match["unit"] or "us"
    mult = DURATION_UNITS.get(unit)
    if mult is None:
        raise ValueError(f"{DURATION_HINT}: unknown unit {unit!r} (use us, ms or s)")
    usec = Decimal(match["num"]) * mult
    if usec != usec.to_integral_value():
        raise ValueError(f"{DURATION_HINT}: {value!r} is not a whole number of microseconds")
    return int(usec)


def parse_period_us(value: object) -> int:
    """A CFS period: a duration between 1ms and 1s, as the kernel requires."""
    usec = parse_duration_us(value)
    if not PERIOD_MIN_US <= usec <= PERIOD_MAX_US:
        raise ValueError(f"must be between 1ms and 1s (got {format_duration_us(usec)})")
    return usec


def _decimal_text(number: Decimal) -> str:
    return format(number.normalize(), "f")


def format_duration_us(usec: int) -> str:
    """100000 → ``100ms``, 1500000 → ``1.5s``, 250 → ``250us``; exact."""
    if usec >= USEC_PER_SEC:
        return _decimal_text(Decimal(usec) / USEC_PER_SEC) + "s"
    if usec >= USEC_PER_MSEC:
        return _decimal_text(Decimal(usec) / USEC_PER_MSEC) + "ms"
    return f"{usec}us"


# --------------------------------------------------------------------------------------------------
# CPU amounts (cpu.max)
# --------------------------------------------------------------------------------------------------

CPU_MAX_HINT = "must be a number of CPUs like 1.5, a percentage like 150%, a quota like 50ms, or max"
# More CPUs than any machine has: a bound that catches unit mistakes (1500 instead of 1.5 or 150%).
CPU_COUNT_LIMIT = 65_536


class CpuQuota(NamedTuple):
    """A parsed ``cpu.max``: either CPUs (scaled by the period later), an absolute quota, or neither
    (unlimited). The period is a separate key, so the quota in µs is only known once both are read."""

    cpus: Fraction | None = None
    quota_us: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.cpus is None and self.quota_us is None

    def resolve(self, period_us: int) -> CpuMax:
        """The kernel's pair; raises ValueError when the quota falls below the kernel's 1 ms floor."""
        if self.quota_us is not None:
            quota = self.quota_us
        elif self.cpus is not None:
            quota = round(self.cpus * period_us)
        else:
            return CpuMax(None, period_us)
        if quota < QUOTA_MIN_US:
            raise ValueError(
                f"gives a quota of {format_duration_us(quota)} per {format_duration_us(period_us)} period;"
                " the kernel's minimum quota is 1ms"
            )
        return CpuMax(quota, period_us)


def parse_cpu_quota(value: object) -> CpuQuota:
    """``1.5`` → 1.5 CPUs, ``150%`` → 1.5 CPUs, ``50ms`` → a 50 ms quota, ``max`` → unlimited."""
    if isinstance(value, bool) or value is None:
        raise ValueError(CPU_MAX_HINT)
    if isinstance(value, int | float):
        try:
            cpus = Fraction(str(value))
        except ValueError:
            raise ValueError(f"{CPU_MAX_HINT} (got {value!r})") from None
        return _cpus(cpus)
    if not isinstance(value, str):
        raise ValueError(CPU_MAX_HINT)
    text = value.strip()
    if text == "max":
        return CpuQuota()
    if text.endswith("%") or re.fullmatch(r"[0-9]*\.?[0-9]+", text):
        try:
            cpus = Fraction(text[:-1].strip()) / 100 if text.endswith("%") else Fraction(text)
        except ValueError:
            raise ValueError(f"{CPU_MAX_HINT} (got {value!r})") from None
        return _cpus(cpus)
    try:
        quota = parse_duration_us(text)
    except ValueError:
        raise ValueError(f"{CPU_MAX_HINT} (got {value!r})") from None
    if quota < QUOTA_MIN_US:
        raise ValueError(f"a quota must be at least 1ms, the kernel's minimum (got {value!r})")
    return CpuQuota(quota_us=quota)


def _cpus(cpus: Fraction) -> CpuQuota:
    if cpus <= 0:
        raise ValueError(f"{CPU_MAX_HINT}; it must be more than 0")
    if cpus > CPU_COUNT_LIMIT:
        raise ValueError(f"{CPU_MAX_HINT}; {float(cpus):g} CPUs is more than any machine has")
    return CpuQuota(cpus=cpus)


def format_cpus(cpu_max: CpuMax) -> str:
    """``CpuMax(150000, 100000)`` → ``1.5``; unlimited → ``max``. Three decimals at most."""
    if cpu_max.quota_us is None:
        return "max"
    cpus = Decimal(cpu_max.quota_us) / Decimal(cpu_max.period_us)
    return _decimal_text(cpus.quantize(Decimal("0.001")))


# --------------------------------------------------------------------------------------------------
# Counts, weights, booleans, lists
# --------------------------------------------------------------------------------------------------

WEIGHT_MIN = 1
WEIGHT_MAX = 10_000
COUNT_LIMIT = (1 << 63) - 1


def _integer(value: object, hint: str) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(hint)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        return int(value)
    raise ValueError(f"{hint} (got {value!r})")


def parse_weight(value: object) -> int:
    """A cgroup v2 weight (``cpu.weight``, ``io.weight``): an integer 1..10000 (default 100)."""
    hint = "must be a whole number from 1 to 10000"
    weight = _integer(value, hint)
    if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
        raise ValueError(f"{hint} (got {weight})")
    return weight


def parse_count(value: object, *, allow_max: bool = True) -> int | None:
    """A positive count (``pids.max``, ``riops``); ``max`` → None."""
    hint = "must be a whole number of at least 1" + (" or max" if allow_max else "")
    if allow_max and isinstance(value, str) and value.strip() == "max":
        return None
    count = _integer(value, hint)
    if count < 1:
        raise ValueError(f"{hint} (got {count})")
    if count > COUNT_LIMIT:
        raise ValueError(f"{hint}: {count} is too large (write max for no limit)")
    return count


def parse_bool(value: object) -> bool:
    """Only real booleans: ``yes``/``on``/``1`` are refused so a policy reads the same everywhere."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false (got {value!r})")


# Sanity bound on ids: beyond any real machine, and it keeps "0-4000000000" from allocating a huge set.
CPU_ID_LIMIT = 65_536
CPULIST_HINT = 'must be a list like "0-3,8"'


def parse_cpu_list(value: object) -> CpuList:
    """``"0-1,4"`` → ``CpuList((0, 1, 4))``; a bare integer (YAML ``mems: 0``) is one id."""
    if isinstance(value, bool) or value is None:
        raise ValueError(CPULIST_HINT)
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(CPULIST_HINT)
    text = value.strip()
    if not text:
        raise ValueError(f"{CPULIST_HINT}; it must name at least one id (leave the key out to inherit)")
    for part in text.split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)
        if match is None:
            raise ValueError(f"{CPULIST_HINT} (bad part {part.strip()!r} in {value!r})")
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if high < low:
            raise ValueError(f"{CPULIST_HINT} (range {part.strip()!r} runs backwards)")
        if high >= CPU_ID_LIMIT:
            raise ValueError(f"{CPULIST_HINT} (id {high} is beyond any machine)")
    return CpuList.parse(text)


# --------------------------------------------------------------------------------------------------
# Display of settings
# --------------------------------------------------------------------------------------------------

_SIZE_KNOBS = frozenset(
    {Knob.MEMORY_MIN, Knob.MEMORY_LOW, Knob.MEMORY_HIGH, Knob.MEMORY_MAX, Knob.MEMORY_SWAP_MAX}
)


def format_io_max(limits: IoMax) -> str:
    """``rbps=50M wbps=max riops=1000 wiops=max``: byte rates as sizes, op rates as counts."""
    parts = []
    for name in IoMax.FIELDS:
        raw = getattr(limits, name)
        if raw is None:
            parts.append(f"{name}=max")
        elif name.endswith("bps"):
            parts.append(f"{name}={format_size(raw)}")
        else:
            parts.append(f"{name}={raw}")
    return " ".join(parts)


def format_setting(key: str, value: Value) -> str:
    """A setting as people read it in plans and ``show``: ``512M``, ``1.5 CPUs (150000 100000)``."""
    knob, _device = split_key(key)
    if knob in _SIZE_KNOBS and (value is None or (isinstance(value, int) and not isinstance(value, bool))):
        return format_size(value)
    if isinstance(value, CpuMax):
        if value.quota_us is None:
            return f"max (period {format_duration_us(value.period_us)})"
        return f"{format_cpus(value)} CPUs ({value})"
    if isinstance(value, IoMax):
        return format_io_max(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "max"
    return str(value)
