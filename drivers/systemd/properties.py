"""The one table that maps cgctl's knobs to systemd unit properties, with both conversions.

Every knob is named after its cgroup v2 file; systemd names the same limit differently and types it
strictly on D-Bus (sending ``x`` or ``i`` where ``t`` is expected gives ``InvalidArgs``), so each
property carries its signature and every value is wrapped in an explicit ``Variant``.

| knob             | property (signature)                                        | since |
|------------------|-------------------------------------------------------------|-------|
| cpu.weight       | CPUWeight (t)                                               | 232   |
| cpu.max          | CPUQuotaPerSecUSec (t) + CPUQuotaPeriodUSec (t)             | 213 / 242 (period) |
| cpuset.cpus      | AllowedCPUs (ay: bit n of byte n//8 = CPU n)                | 244   |
| cpuset.mems      | AllowedMemoryNodes (ay)                                     | 244   |
| memory.min       | MemoryMin (t)                                               | 240   |
| memory.low       | MemoryLow (t)                                               | 231   |
| memory.high      | MemoryHigh (t)                                              | 231   |
| memory.max       | MemoryMax (t)                                               | 231   |
| memory.swap.max  | MemorySwapMax (t)                                           | 232   |
| io.weight        | IOWeight (t)                                                | 230   |
| io.max[MAJ:MIN]  | IORead/IOWrite BandwidthMax, IORead/IOWrite IOPSMax (a(st): device path, value) | 230 |
| pids.max         | TasksMax (t)                                                | 227   |
| memory.oom.group | — (OOMPolicy= exists for services and scopes only, not slices) | never |

``UINT64_MAX`` is systemd's "infinity" (limits) and "unset" (weights, quota, period); unset weights read
back as the kernel default 100, an unset period as 100 ms.

Rounding (the only places where the kernel's files differ from what cgroupfs would write):

- **cpu.max quota**: systemd stores a quota *per second* (``CPUQuotaPerSecUSec``) and persists it in the
  unit's drop-in as a whole percent (``CPUQuota=%d%%``, truncating: systemd 252 ``bus-cgroup.c``). A value
  that is not a multiple of 10 ms/s would therefore change on the next ``daemon-reload``. cgctl rounds the
  per-second quota *up* to the next 10 ms (as runc does, so the limit never gets tighter than asked), and
  systemd then writes ``MAX(per_sec × period / 1 s, 1 ms)`` to ``cpu.max``. Example: ``12345 100000``
  → 123450 µs/s → 130000 µs/s → ``cpu.max`` = ``13000 100000``.
- **cpu.max period**: systemd clamps the period it writes to [1 ms, 1 s] and raises it so that the quota is
  at least 1 ms; with no quota it always writes ``max 100000`` whatever period was asked (the period has
  no effect without a quota). :func:`decode` reads the properties back as the kernel values systemd
  wrote, and :func:`normalize` maps a desired value to the same terms, so a re-apply is a no-op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dbus_fast import Variant

from drivers.api import CpuList, CpuMax, IoMax, Knob, Value
from drivers.records import record

UINT64_MAX = 2**64 - 1
USEC_PER_SEC = 1_000_000
USEC_PER_MSEC = 1_000
DEFAULT_PERIOD_US = 100_000
# systemd persists CPUQuota= as whole percent: 1 % of a second = 10 ms per second.
CPU_QUOTA_STEP_US = 10_000
DEFAULT_WEIGHT = 100

# First systemd release that has each feature (systemd NEWS); OC gates period on 242, AllowedCPUs on 244.
VERSION_CPU_QUOTA_PERIOD = 242
VERSION_FREEZE = 246

# A property assignment as it goes on the wire: (name, typed value).
Assignment = tuple[str, Variant]
# Answers "is this path the device MAJ:MIN?" for the a(st) io properties when reading them back.
DeviceMatcher = Callable[[str], bool]


class ConversionError(ValueError):
    """A value has no systemd equivalent (e.g. TasksMax=0), or systemd returned something unexpected."""


@record(frozen=True)
class Property:
    name: str
    signature: str
    since: int  # first systemd version that has it


@record(frozen=True)
class KnobMapping:
    knob: Knob
    properties: tuple[Property, ...]
    since: int  # the knob as a whole needs this version
    # v2-only properties; on a v1/hybrid host systemd cannot express them.
    unified_only: bool
    encode: Callable[[Value, str | None, int], list[Assignment]]  # value, device path, systemd version
    decode: Callable[[Mapping[str, Any], DeviceMatcher | None], Value]
    normalize: Callable[[Value], Value]


# ---- scalars --------------------------------------------------------------------------------------


def limit_to_u64(value: int | None) -> int:
    """A byte/count limit → ``t``; None ("max") → UINT64_MAX (systemd's "infinity")."""
    if value is None:
        return UINT64_MAX
    if value < 0 or value >= UINT64_MAX:
        raise ConversionError(f"{value} is out of range for a limit")
    return value


def u64_to_limit(raw: int) -> int | None:
    return None if raw == UINT64_MAX else int(raw)


def _expect_int(value: Value, knob: Knob, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversionError(f"{knob}: expected an integer{' or max' if optional else ''}, got {value!r}")
    return value


# ---- cpu.weight / io.weight -----------------------------------------------------------------------


def encode_weight(prop: str, knob: Knob) -> Callable[[Value, str | None, int], list[Assignment]]:
    def encode(value: Value, _device: str | None, _version: int) -> list[Assignment]:
        weight = _expect_int(value, knob, optional=False)
        assert weight is not None
        if not 1 <= weight <= 10_000:
            raise ConversionError(f"{knob}: {weight} is outside 1..10000")
        return [(prop, Variant("t", weight))]

    return encode


def decode_weight(prop: str) -> Callable[[Mapping[str, Any], DeviceMatcher | None], Value]:
    def decode(props: Mapping[str, Any], _match: DeviceMatcher | None) -> Value:
        raw = int(props[prop])
        # Unset: systemd writes the kernel default (CGROUP_WEIGHT_DEFAULT) once the controller is on.
        return DEFAULT_WEIGHT if raw == UINT64_MAX else raw

    return decode


# ---- cpu.max --------------------------------------------------------------------------------------


def quota_per_sec(quota_us: int, period_us: int) -> int:
    """cpu.max quota/period → systemd's CPUQuotaPerSecUSec, rounded up to the 10 ms step that survives
    systemd's ``CPUQuota=N%`` drop-in (see module docstring)."""
    if quota_us <= 0 or period_us <= 0:
        raise ConversionError(f"cpu.max: quota {quota_us} and period {period_us} must be positive")
    exact = math.ceil(quota_us * USEC_PER_SEC / period_us)
    return math.ceil(exact / CPU_QUOTA_STEP_US) * CPU_QUOTA_STEP_US


def kernel_quota(per_sec: int, period_us: int) -> int:
    """The quota systemd writes into cpu.max for a per-second quota (cgroup.c: MAX(q·p/1s, 1ms))."""
    return max(per_sec * period_us // USEC_PER_SEC, USEC_PER_MSEC)


def kernel_period(per_sec: int | None, period_us: int) -> int:
    """The period systemd writes into cpu.max (cgroup_cpu_adjust_period): 100 ms without a quota, else
    clamped to [1 ms, 1 s] and at least long enough for a 1 ms quota."""
    if per_sec is None:
        return DEFAULT_PERIOD_US
    return min(max(period_us, USEC_PER_MSEC, USEC_PER_MSEC * USEC_PER_SEC // per_sec), USEC_PER_SEC)


def kernel_cpu_max(value: CpuMax) -> CpuMax:
    """What the kernel's cpu.max reads after systemd applied ``value`` (for tests and parity)."""
    if value.quota_us is None:
        return CpuMax(None, DEFAULT_PERIOD_US)
    per_sec = quota_per_sec(value.quota_us, value.period_us)
    period = kernel_period(per_sec, value.period_us)
    return CpuMax(kernel_quota(per_sec, period), period)


def encode_cpu_max(value: Value, _device: str | None, version: int) -> list[Assignment]:
    if not isinstance(value, CpuMax):
        raise ConversionError(f"cpu.max: expected a quota and period, got {value!r}")
    per_sec = UINT64_MAX if value.quota_us is None else quota_per_sec(value.quota_us, value.period_us)
    out: list[Assignment] = [("CPUQuotaPerSecUSec", Variant("t", per_sec))]
    if version >= VERSION_CPU_QUOTA_PERIOD:
        out.append(("CPUQuotaPeriodUSec", Variant("t", value.period_us)))
    elif value.period_us != DEFAULT_PERIOD_US:
        raise ConversionError(
            f"cpu.max: a period other than {DEFAULT_PERIOD_US} µs needs systemd >= "
            f"{VERSION_CPU_QUOTA_PERIOD} (CPUQuotaPeriodUSec); this is systemd {version}"
        )
    return out


def decode_cpu_max(props: Mapping[str, Any], _match: DeviceMatcher | None) -> Value:
    """Read back in the kernel's terms: what systemd wrote to cpu.max for these properties."""
    raw_period = int(props.get("CPUQuotaPeriodUSec", UINT64_MAX))
    period = DEFAULT_PERIOD_US if raw_period == UINT64_MAX else raw_period
    raw_quota = int(props["CPUQuotaPerSecUSec"])
    if raw_quota == UINT64_MAX:
        return CpuMax(None, DEFAULT_PERIOD_US)
    period = kernel_period(raw_quota, period)
    return CpuMax(kernel_quota(raw_quota, period), period)


def normalize_cpu_max(value: Value) -> Value:
    return kernel_cpu_max(value) if isinstance(value, CpuMax) else value


# ---- cpuset ---------------------------------------------------------------------------------------


def cpus_to_mask(cpus: CpuList) -> bytes:
    """CpuList → systemd's ``ay`` bitmask (bit n of byte n//8, LSB first; ``cpu_set_to_dbus``)."""
    if not cpus.ids:
        return b""
    mask = bytearray(cpus.ids[-1] // 8 + 1)
    for cpu in cpus.ids:
        mask[cpu // 8] |= 1 << (cpu % 8)
    return bytes(mask)


def mask_to_cpus(mask: bytes | Sequence[int]) -> CpuList:
    return CpuList(
        tuple(i * 8 + bit for i, byte in enumerate(bytes(mask)) for bit in range(8) if byte >> bit & 1)
    )


def encode_cpuset(prop: str, knob: Knob) -> Callable[[Value, str | None, int], list[Assignment]]:
    def encode(value: Value, _device: str | None, _version: int) -> list[Assignment]:
        if not isinstance(value, CpuList):
            raise ConversionError(f"{knob}: expected a cpu list, got {value!r}")
        return [(prop, Variant("ay", cpus_to_mask(value)))]

    return encode


def decode_cpuset(prop: str) -> Callable[[Mapping[str, Any], DeviceMatcher | None], Value]:
    def decode(props: Mapping[str, Any], _match: DeviceMatcher | None) -> Value:
        return mask_to_cpus(props[prop])

    return decode


# ---- memory.* / pids.max --------------------------------------------------------------------------


def encode_limit(
    prop: str, knob: Knob, minimum: int = 0
) -> Callable[[Value, str | None, int], list[Assignment]]:
    def encode(value: Value, _device: str | None, _version: int) -> list[Assignment]:
        limit = _expect_int(value, knob, optional=True)
        if limit is not None and limit < minimum:
            raise ConversionError(f"{knob}: systemd's {prop} rejects values below {minimum} (got {limit})")
        return [(prop, Variant("t", limit_to_u64(limit)))]

    return encode


def decode_limit(prop: str) -> Callable[[Mapping[str, Any], DeviceMatcher | None], Value]:
    def decode(props: Mapping[str, Any], _match: DeviceMatcher | None) -> Value:
        return u64_to_limit(int(props[prop]))

    return decode


# ---- io.max ---------------------------------------------------------------------------------------

IO_MAX_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("rbps", "IOReadBandwidthMax"),
    ("wbps", "IOWriteBandwidthMax"),
    ("riops", "IOReadIOPSMax"),
    ("wiops", "IOWriteIOPSMax"),
)


def encode_io_max(value: Value, device: str | None, _version: int) -> list[Assignment]:
    """One device's limits → four a(st) assignments. systemd merges per device and per property: an entry
    replaces that device's value for that property only, and UINT64_MAX removes the limit."""
    if not isinstance(value, IoMax):
        raise ConversionError(f"io.max: expected per-device limits, got {value!r}")
    if device is None:
        raise ConversionError("io.max: no device path to name the device to systemd")
    return [
        (prop, Variant("a(st)", [[device, limit_to_u64(getattr(value, field))]]))
        for field, prop in IO_MAX_PROPERTIES
    ]


def decode_io_max(props: Mapping[str, Any], match: DeviceMatcher | None) -> Value:
    limits: dict[str, int | None] = {}
    for field, prop in IO_MAX_PROPERTIES:
        limits[field] = None
        for path, raw in props.get(prop, []):
            if match is not None and match(str(path)):
                limits[field] = u64_to_limit(int(raw))
    return IoMax(**limits)


def _identity(value: Value) -> Value:
    return value


# ---- the table ------------------------------------------------------------------------------------


def _scalar(knob: Knob, prop: str, since: int, *, unified_only: bool, minimum: int = 0) -> KnobMapping:
    return KnobMapping(
        knob=knob,
        properties=(Property(prop, "t", since),),
        since=since,
        unified_only=unified_only,
        encode=encode_limit(prop, knob, minimum),
        decode=decode_limit(prop),
        normalize=_identity,
    )


def _weight(knob: Knob, prop: str, since: int) -> KnobMapping:
    return KnobMapping(
        knob=knob,
        properties=(Property(prop, "t", since),),
        since=since,
        unified_only=False,
        encode=encode_weight(prop, knob),
        decode=decode_weight(prop),
        normalize=_identity,
    )


def _cpuset(knob: Knob, prop: str) -> KnobMapping:
    return KnobMapping(
        knob=knob,
        properties=(Property(prop, "ay", 244),),
        since=244,
        unified_only=True,
        encode=encode_cpuset(prop, knob),
        decode=decode_cpuset(prop),
        normalize=_identity,
    )


TABLE: Mapping[Knob, KnobMapping] = {
    Knob.CPU_WEIGHT: _weight(Knob.CPU_WEIGHT, "CPUWeight", 232),
    Knob.CPU_MAX: KnobMapping(
        knob=Knob.CPU_MAX,
        properties=(
            Property("CPUQuotaPerSecUSec", "t", 213),
            Property("CPUQuotaPeriodUSec", "t", VERSION_CPU_QUOTA_PERIOD),
        ),
        since=213,  # without CPUQuotaPeriodUSec only the default 100 ms period can be expressed
        unified_only=False,
        encode=encode_cpu_max,
        decode=decode_cpu_max,
        normalize=normalize_cpu_max,
    ),
    Knob.CPUSET_CPUS: _cpuset(Knob.CPUSET_CPUS, "AllowedCPUs"),
    Knob.CPUSET_MEMS: _cpuset(Knob.CPUSET_MEMS, "AllowedMemoryNodes"),
    Knob.MEMORY_MIN: _scalar(Knob.MEMORY_MIN, "MemoryMin", 240, unified_only=True),
    Knob.MEMORY_LOW: _scalar(Knob.MEMORY_LOW, "MemoryLow", 231, unified_only=True),
    Knob.MEMORY_HIGH: _scalar(Knob.MEMORY_HIGH, "MemoryHigh", 231, unified_only=True),
    Knob.MEMORY_MAX: _scalar(Knob.MEMORY_MAX, "MemoryMax", 231, unified_only=False),
    Knob.MEMORY_SWAP_MAX: _scalar(Knob.MEMORY_SWAP_MAX, "MemorySwapMax", 232, unified_only=True),
    Knob.IO_WEIGHT: _weight(Knob.IO_WEIGHT, "IOWeight", 230),
    Knob.IO_MAX: KnobMapping(
        knob=Knob.IO_MAX,
        properties=tuple(Property(prop, "a(st)", 230) for _, prop in IO_MAX_PROPERTIES),
        since=230,
        unified_only=False,
        encode=encode_io_max,
        decode=decode_io_max,
        normalize=_identity,
    ),
    # TasksMax=0 is refused by systemd ("value out of range"); pids.max 0 has no systemd equivalent.
    Knob.PIDS_MAX: _scalar(Knob.PIDS_MAX, "TasksMax", 227, unified_only=False, minimum=1),
}

# Knobs systemd cannot express on a slice at all, with the reason shown in the plan.
NOT_EXPRESSIBLE: Mapping[Knob, str] = {
    Knob.MEMORY_OOM_GROUP: (
        "systemd has no slice property for memory.oom.group (OOMPolicy= applies to services and scopes only)"
    ),
}


def unsupported_knobs(version: int, unified: bool) -> dict[Knob, str]:
    """Knobs this systemd (and cgroup layout) cannot set, each with the reason naming the version."""
    out: dict[Knob, str] = dict(NOT_EXPRESSIBLE)
    for knob, mapping in TABLE.items():
        names = "/".join(p.name for p in mapping.properties)
        if version < mapping.since:
            out[knob] = f"needs systemd >= {mapping.since} ({names}); this is systemd {version}"
        elif mapping.unified_only and not unified:
            out[knob] = f"systemd sets {names} only on the unified (v2) cgroup hierarchy"
    return out


def encode(knob: Knob, value: Value, version: int, device_path: str | None = None) -> list[Assignment]:
    """A setting → the property assignments for SetUnitProperties / StartTransientUnit."""
    if knob in NOT_EXPRESSIBLE:
        raise ConversionError(NOT_EXPRESSIBLE[knob])
    return TABLE[knob].encode(value, device_path, version)


def decode(knob: Knob, props: Mapping[str, Any], match: DeviceMatcher | None = None) -> Value:
    """Unit properties (already unwrapped from their Variants) → the setting's value in cgctl terms."""
    return TABLE[knob].decode(props, match)


def normalize(knob: Knob, value: Value) -> Value:
    """The value as systemd will store it (what :func:`decode` reads back after setting ``value``)."""
    mapping = TABLE.get(knob)
    return value if mapping is None else mapping.normalize(value)


def format_property(variant: Variant) -> str:
    """A property value as ``systemctl show`` would print it (infinity, cpu lists, device pairs)."""
    value = variant.value
    if variant.signature == "t":
        return "infinity" if value == UINT64_MAX else str(value)
    if variant.signature == "ay":
        return str(mask_to_cpus(value)) or '""'
    if variant.signature == "a(st)":
        return ", ".join(f"{path} {'infinity' if raw == UINT64_MAX else raw}" for path, raw in value) or '""'
    return str(value)


def property_names(knob: Knob) -> tuple[str, ...]:
    mapping = TABLE.get(knob)
    return () if mapping is None else tuple(p.name for p in mapping.properties)
