"""The one interface between cgctl and the kernel, and the types that cross it.

Everything here is version-neutral and uses cgroup v2 semantics: a knob is named after its v2 file
(``memory.max``), sizes are integer bytes, times integer microseconds, and ``None`` as a limit value
means "max" (unlimited). Backends (cgroupfs v1/v2, systemd) translate to their own files or
properties; cgctl never sees those.

A group is addressed by its :data:`GroupPath`, a tuple of names relative to the driver's managed root
(``()`` is the managed root itself). Names are validated by cgctl before they reach a driver, and the
cgroupfs backend checks them again at the filesystem boundary.
"""

from __future__ import annotations

import abc
import enum
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import ClassVar, TypeAlias

from drivers.records import field, record

GroupPath: TypeAlias = tuple[str, ...]

SYSTEMD_RUNTIME_DIR = "/run/systemd/system"
NOT_BOOTED = f"systemd is not PID 1 ({SYSTEMD_RUNTIME_DIR} does not exist)"


def systemd_booted() -> bool:
    """sd_booted(3): systemd is PID 1 (it creates this directory early at boot). Cheap, so ``driver:
    auto`` can rule systemd out without importing its driver (asyncio + dbus-fast, ~60 ms)."""
    return os.path.isdir(SYSTEMD_RUNTIME_DIR)


def format_path(path: GroupPath) -> str:
    """``('web', 'worker')`` → ``web/worker``; the managed root prints as ``/``."""
    return "/".join(path) if path else "/"


# --------------------------------------------------------------------------------------------------
# Knobs and their values
# --------------------------------------------------------------------------------------------------


class Knob(enum.StrEnum):
    """Every limit cgctl can manage, named after its cgroup v2 file."""

    CPU_WEIGHT = "cpu.weight"
    CPU_MAX = "cpu.max"
    CPUSET_CPUS = "cpuset.cpus"
    CPUSET_MEMS = "cpuset.mems"
    MEMORY_MIN = "memory.min"
    MEMORY_LOW = "memory.low"
    MEMORY_HIGH = "memory.high"
    MEMORY_MAX = "memory.max"
    MEMORY_SWAP_MAX = "memory.swap.max"
    MEMORY_OOM_GROUP = "memory.oom.group"
    IO_WEIGHT = "io.weight"
    IO_MAX = "io.max"  # per device: see SettingKey
    PIDS_MAX = "pids.max"

    @property
    def controller(self) -> str:
        """The v2 controller that owns the knob (what must be in the parent's subtree_control)."""
        return _CONTROLLERS[self]


# Knob → its controller, computed once (the planner asks for every setting of every group).
_CONTROLLERS: dict[Knob, str] = {knob: knob.value.split(".", 1)[0] for knob in Knob}


@record(frozen=True, order=True)
class CpuMax:
    """``cpu.max``: a quota of CPU time per period, both in µs; quota ``None`` means unlimited."""

    quota_us: int | None
    period_us: int = 100_000

    def __str__(self) -> str:
        quota = "max" if self.quota_us is None else str(self.quota_us)
        return f"{quota} {self.period_us}"


@record(frozen=True, order=True)
class CpuList:
    """A cpuset list (``cpuset.cpus`` / ``cpuset.mems``), kept sorted; empty means "inherit"."""

    ids: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> CpuList:
        """Parse the kernel's list format (``0-3,8,10-11``); raises ValueError."""
        ids: set[int] = set()
        for part in text.replace("\n", "").split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if lo < 0 or hi < lo:
                    raise ValueError(f"bad range {part!r}")
                ids.update(range(lo, hi + 1))
            else:
                value = int(part)
                if value < 0:
                    raise ValueError(f"bad id {part!r}")
                ids.add(value)
        return cls(tuple(sorted(ids)))

    def __str__(self) -> str:
        ranges: list[str] = []
        i = 0
        ids = self.ids
        while i < len(ids):
            j = i
            while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
                j += 1
            ranges.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
            i = j + 1
        return ",".join(ranges)


@record(frozen=True, order=True)
class IoMax:
    """One device's ``io.max`` line; ``None`` fields are unlimited (``max``)."""

    rbps: int | None = None
    wbps: int | None = None
    riops: int | None = None
    wiops: int | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("rbps", "wbps", "riops", "wiops")

    def __str__(self) -> str:
        return " ".join(
            f"{name}={'max' if getattr(self, name) is None else getattr(self, name)}" for name in self.FIELDS
        )


# The value of one setting. Which type goes with which knob:
#   cpu.weight, io.weight: int; cpu.max: CpuMax; cpuset.*: CpuList; memory.oom.group: bool;
#   memory.{min,low,high,max,swap.max}, pids.max: int | None (None = "max"); io.max[dev]: IoMax.
Value: TypeAlias = int | bool | CpuMax | CpuList | IoMax | None


# A setting key is a knob, or for per-device knobs "io.max[MAJ:MIN]". Strings keep plans, JSON output
# and the last-applied state trivially serialisable.
SettingKey: TypeAlias = str


def setting_key(knob: Knob, device: str | None = None) -> SettingKey:
    return f"{knob.value}[{device}]" if device is not None else knob.value


_SPLIT: dict[SettingKey, tuple[Knob, str | None]] = {}


def split_key(key: SettingKey) -> tuple[Knob, str | None]:
    """``io.max[8:0]`` → ``(Knob.IO_MAX, '8:0')``; ``cpu.weight`` → ``(Knob.CPU_WEIGHT, None)``.

    Memoized: planning 1000 groups splits ~50,000 keys, and ``Knob(name)`` is an enum lookup by value
    (~2 µs each); a policy names a handful of distinct keys (one per knob and device)."""
    split = _SPLIT.get(key)
    if split is None:
        if key.endswith("]") and "[" in key:
            name, device = key[:-1].split("[", 1)
            split = Knob(name), device
        else:
            split = Knob(key), None
        _SPLIT[key] = split
    return split


# What a knob goes back to when the policy stops naming it (the kernel's default for a new group).
# cpuset's empty list means "inherit the parent's" (v2 semantics; the v1 backend copies the parent).
KERNEL_DEFAULTS: Mapping[Knob, Value] = {
    Knob.CPU_WEIGHT: 100,
    Knob.CPU_MAX: CpuMax(None, 100_000),
    Knob.CPUSET_CPUS: CpuList(),
    Knob.CPUSET_MEMS: CpuList(),
    Knob.MEMORY_MIN: 0,
    Knob.MEMORY_LOW: 0,
    Knob.MEMORY_HIGH: None,
    Knob.MEMORY_MAX: None,
    Knob.MEMORY_SWAP_MAX: None,
    Knob.MEMORY_OOM_GROUP: False,
    Knob.IO_WEIGHT: 100,
    Knob.IO_MAX: IoMax(),
    Knob.PIDS_MAX: None,
}


def format_value(value: Value) -> str:
    """How a value is shown to people (plans, show, errors): v2 file syntax."""
    if value is None:
        return "max"
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


Resources: TypeAlias = Mapping[SettingKey, Value]


# --------------------------------------------------------------------------------------------------
# What a driver reports
# --------------------------------------------------------------------------------------------------


class CgroupMode(enum.StrEnum):
    V2 = "v2"  # unified hierarchy with controllers
    V1 = "v1"  # legacy hierarchies only
    HYBRID = "hybrid"  # v1 controllers plus a controller-less v2 mount (limits go through v1)


@record(frozen=True)
class Capabilities:
    """What this host, through this driver, can do. Filled by :meth:`Driver.probe`."""

    driver: str
    mode: CgroupMode
    # Knobs this driver cannot set on this host, each with the reason (shown in the plan as an error).
    unsupported: Mapping[Knob, str] = field(default_factory=dict)
    # v2: controllers must be enabled in each ancestor's cgroup.subtree_control (planned top-down).
    needs_subtree_control: bool = False
    # v1: the kernel refuses (EBUSY) any cpuset write that leaves a child's cpus/mems outside its
    # parent's, so narrowing is planned children-first (v2 just intersects with the parent).
    cpuset_within_parent: bool = False
    # v1: memory and swap are limited together (memory.memsw.limit_in_bytes = memory + swap), so a
    # finite swap limit needs a finite memory limit beside it.
    swap_needs_memory_limit: bool = False
    # Controllers the managed root can get (v2: the root's parent's cgroup.controllers; v1: mounted).
    controllers: frozenset[str] = frozenset()
    can_freeze: bool = True
    online_cpus: CpuList = CpuList()
    online_mems: CpuList = CpuList()
    # Kernel features probed by their files, e.g. {"cgroup.kill": True, "memory.peak": False, "psi": True}.
    features: Mapping[str, bool] = field(default_factory=dict)
    # Free-form facts for `cgctl check` (mount points, systemd version, ...).
    details: Mapping[str, str] = field(default_factory=dict)
    # How the driver names a group for people (e.g. its unit name under systemd); None → the path.
    describes_groups_as: str | None = None


@record
class ObservedGroup:
    """One group as it is now."""

    exists: bool
    values: dict[SettingKey, Value] = field(default_factory=dict)
    frozen: bool = False  # effective: frozen by itself or an ancestor
    self_frozen: bool = False  # frozen by its own request (cgroup.freeze = 1 / FreezeUnit)
    populated: bool = False  # frozen/self_frozen/populated: see Driver.observe(state=...)
    memory_current: int | None = None
    # v2: the controllers in this group's cgroup.subtree_control (empty elsewhere).
    subtree_control: frozenset[str] = frozenset()
    # v2: its cgroup.type ("domain", "threaded", "domain threaded", "domain invalid") where the caller
    # asked for it (Driver.observe's ``types``); None elsewhere.
    cgroup_type: str | None = None
    # The name people see for it on this driver (a cgroup path, a unit name).
    display: str = ""


MISSING = ObservedGroup(exists=False)


@record
class GroupUsage:
    """Live usage of one group, already in base units (seconds, bytes). ``None`` = not available here.

    The exporter turns this into metric families; a field that the kernel does not provide stays None
    and produces no sample (never a fake 0).
    """

    cgroup: str  # path under the cgroup mount, e.g. "/cgctl/web"
    cpu_usage_seconds: float | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_seconds: float | None = None
    memory_usage_bytes: int | None = None
    memory_working_set_bytes: int | None = None
    memory_peak_bytes: int | None = None
    memory_swap_usage_bytes: int | None = None
    memory_stat_bytes: dict[str, int] = field(default_factory=dict)
    memory_events: dict[str, int] = field(default_factory=dict)
    io: dict[str, dict[str, int]] = field(default_factory=dict)  # "MAJ:MIN" → {rbytes,wbytes,rios,wios}
    pids_current: int | None = None
    pids_max: float | None = None  # math.inf for "max"
    pressure_some_seconds: dict[str, float] = field(default_factory=dict)  # resource → total
    pressure_full_seconds: dict[str, float] = field(default_factory=dict)
    frozen: bool | None = None
    populated: bool | None = None
    limits: dict[SettingKey, Value] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class DriverError(Exception):
    """A driver operation failed. Carries what failed, where, with which value, and why."""

    def __init__(
        self,
        message: str,
        *,
        group: GroupPath | None = None,
        target: str | None = None,  # a file path or "unit.property"
        value: str | None = None,
        errno: int | None = None,
        cause: str | None = None,  # the kernel's strerror or systemd's D-Bus error text
    ) -> None:
        super().__init__(message)
        self.message = message
        self.group = group
        self.target = target
        self.value = value
        self.errno = errno
        self.cause = cause

    def __str__(self) -> str:
        parts = [self.message]
        if self.target:
            parts.append(f"target={self.target}")
        if self.value is not None:
            parts.append(f"value={self.value!r}")
        if self.cause:
            parts.append(f"error={self.cause}")
        return "; ".join(parts)


class UnsafePathError(DriverError):
    """A path would leave the managed root (``..``, absolute parts, symlinks, another filesystem)."""


class GroupBusyError(DriverError):
    """A group cannot be removed because it holds processes or children."""


class FreezeTimeoutError(DriverError):
    """The kernel did not confirm a freeze/thaw in time (the request was reverted)."""


class UnsupportedError(DriverError):
    """The host or driver cannot do this at all."""


class NotOwnedError(DriverError):
    """The target belongs to another manager (e.g. a systemd-owned cgroup without delegation)."""


# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------


@record(frozen=True)
class DriverOptions:
    """How cgctl configures a driver. ``root`` is the policy's ``root:`` (a relative path)."""

    root: str = "cgctl"
    persistent: bool = False  # systemd: persistent properties instead of runtime ones
    mountpoint: str = "/sys/fs/cgroup"
    # No event loop (a one-shot CLI command, cgctl/oneshot.py): blocking calls run on the caller's
    # thread and no method may suspend. Only for drivers whose needs_event_loop is False.
    inline: bool = False


class Driver(abc.ABC):
    """One backend that reaches the kernel. All methods are coroutines; blocking I/O runs off the loop."""

    name: ClassVar[str]
    # False: with DriverOptions(inline=True) no method ever suspends, so a one-shot command can drive
    # it without asyncio (the cgroupfs driver). True: it waits on I/O the loop must multiplex (D-Bus).
    needs_event_loop: ClassVar[bool] = True

    def __init__(self, options: DriverOptions) -> None:
        self.options = options

    @classmethod
    def usable(cls) -> tuple[bool, str]:
        """Whether this driver fits the host (for ``driver: auto`` and ``cgctl check``), and why."""
        return True, ""

    @abc.abstractmethod
    async def probe(self) -> Capabilities: ...

    def effective_value(self, key: SettingKey, value: Value) -> Value:
        """The value as this driver will read it back after setting ``value`` (e.g. after a v1
        weight→shares→weight round trip, or systemd's 10 ms quota rounding). The planner compares
        observed values with this, so a re-apply of an unchanged policy plans zero writes."""
        return value

    def target_of(self, path: GroupPath, key: SettingKey) -> str:
        """Where a setting lands, for people: a file path, or the unit under systemd."""
        return f"{format_path(path)}:{key}"

    def describe_value(self, key: SettingKey, value: Value) -> str:
        """A value as this backend writes it, for plans: v2 file syntax by default; systemd shows its
        properties (``CPUQuotaPerSecUSec=130000 CPUQuotaPeriodUSec=100000``)."""
        return format_value(value)

    def describe_group(self, path: GroupPath) -> str:
        """A group as plan lines name it (create, remove, freeze…): its path; systemd adds its unit."""
        return format_path(path)

    @abc.abstractmethod
    async def observe(
        self,
        paths: Iterable[GroupPath],
        keys: Mapping[GroupPath, Collection[SettingKey]],
        *,
        state: Collection[GroupPath] | None = None,
        usage: Collection[GroupPath] | None = None,
        types: Collection[GroupPath] = (),
    ) -> dict[GroupPath, ObservedGroup]:
        """Read the groups' state; ``keys`` says which settings to read for each path (others may be
        read too). Missing groups come back with ``exists=False``. The managed root ``()`` is always
        included in the result. ``state`` names the groups whose frozen/populated flags the caller
        needs (None: all); a driver may skip those reads for the others, whose flags then say False
        (a re-apply of 1000 unchanged v1 groups reads ~2000 files fewer). ``usage`` likewise names the
        groups whose ``memory_current`` the caller needs (None: every group whose memory limits are
        read); the others may say None. ``types`` names the groups whose ``cgroup_type`` (v2 threaded
        mode) the caller needs; drivers without such types leave it None."""

    @abc.abstractmethod
    async def create(self, path: GroupPath) -> None:
        """Create one group (its parent exists). Marks it as created by cgctl where the backend can."""

    @abc.abstractmethod
    async def remove(self, path: GroupPath) -> None:
        """Remove one empty group; raises GroupBusyError if it holds processes or children."""

    @abc.abstractmethod
    async def set(self, path: GroupPath, key: SettingKey, value: Value) -> None: ...

    async def enable_controllers(self, path: GroupPath, controllers: Collection[str]) -> None:
        """v2: add controllers to ``path``'s cgroup.subtree_control (``()`` also covers the managed root's
        ancestors up to the mount). Drivers without subtree_control never get this call."""
        raise UnsupportedError(f"{self.name}: controllers are not enabled by hand", group=path)

    async def disable_controllers(self, path: GroupPath, controllers: Collection[str]) -> None:
        """Undo of enable_controllers (rollback only)."""
        raise UnsupportedError(f"{self.name}: controllers are not disabled by hand", group=path)

    async def make_threaded(self, path: GroupPath) -> None:
        """v2: turn a group this apply created in a threaded subtree (the kernel made it "domain
        invalid") threaded. Only drivers that report cgroup types (Driver.observe's ``types``) get it."""
        raise UnsupportedError(f"{self.name}: no threaded cgroups", group=path)

    @abc.abstractmethod
    async def freeze(self, path: GroupPath, timeout: float) -> None:
        """Freeze and return once the kernel confirms; on timeout revert and raise FreezeTimeoutError."""

    @abc.abstractmethod
    async def thaw(self, path: GroupPath, timeout: float) -> None: ...

    @abc.abstractmethod
    async def move(self, path: GroupPath, pids: Sequence[int]) -> None:
        """Place running processes into the group (the caller's own pid works too: exec uses it)."""

    @abc.abstractmethod
    async def stats(self, paths: Iterable[GroupPath]) -> dict[GroupPath, GroupUsage]:
        """Usage for the exporter and ``cgctl show``; missing groups are left out of the result."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (D-Bus) or descriptors."""
