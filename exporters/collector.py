"""The metric families cgctl exports, built from ONE snapshot of group usage plus the agent's own state.

``build_families`` is the single source of truth for names, types, labels and values. Two consumers
render it: :class:`CgctlCollector` (a prometheus_client custom collector, for any registry and its
encoders) and :mod:`exporters.exposition` (a direct renderer the server uses, because
prometheus_client's encoders cost ~10 µs per sample: 332 ms for the 33k samples of 1000 fully populated
groups, against 37 ms for build + render here).

Naming follows reference/anchors.md §2.5: base units, ``_total`` on counters, ``cgroup``/``group``
labels, no per-CPU or per-process labels. A field the kernel does not provide produces no sample.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from prometheus_client.metrics_core import Metric

from drivers.api import CpuMax, GroupUsage, IoMax, split_key
from drivers.cgroupfs.usage import MEMORY_STAT_V2

Kind: TypeAlias = Literal["counter", "gauge", "histogram", "info"]
Extra: TypeAlias = tuple[tuple[str, str], ...]


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


@dataclass(frozen=True, slots=True)
class GroupLabels:
    """The ``cgroup``/``group`` pair of one group, with its exposition text rendered once per scrape."""

    cgroup: str
    group: str
    text: str

    @classmethod
    def of(cls, cgroup: str, group: str) -> GroupLabels:
        return cls(
            cgroup, group, f'cgroup="{escape_label_value(cgroup)}",group="{escape_label_value(group)}"'
        )


# One sample: (suffix after the family name, group labels or None, other labels, value).
Sample: TypeAlias = tuple[str, GroupLabels | None, Extra, float]


@dataclass(slots=True)
class Family:
    """One metric family. ``name`` is the OpenMetrics family name: no ``_total``/``_info`` suffix."""

    name: str
    kind: Kind
    help: str
    # A list, or a generator that can be consumed once (see build_families).
    samples: Iterable[Sample] = field(default_factory=list)


@dataclass(frozen=True)
class FamilySpec:
    name: str
    kind: Kind
    help: str

    @property
    def sample_names(self) -> tuple[str, ...]:
        if self.kind == "counter":
            return (self.name + "_total",)
        if self.kind == "info":
            return (self.name + "_info",)
        if self.kind == "histogram":
            return (self.name + "_bucket", self.name + "_sum", self.name + "_count")
        return (self.name,)


def _spec(name: str, kind: Kind, help_text: str) -> FamilySpec:
    return FamilySpec(name, kind, help_text)


# Per-group families, in exposition order.
GROUP_FAMILIES: tuple[FamilySpec, ...] = (
    _spec("cgroup_cpu_usage_seconds", "counter", "CPU time consumed by the group's tasks."),
    _spec("cgroup_cpu_user_seconds", "counter", "CPU time consumed in user mode."),
    _spec("cgroup_cpu_system_seconds", "counter", "CPU time consumed in kernel mode."),
    _spec("cgroup_cpu_periods", "counter", "Elapsed CPU bandwidth enforcement periods."),
    _spec("cgroup_cpu_throttled_periods", "counter", "Periods in which the group was throttled."),
    _spec("cgroup_cpu_throttled_seconds", "counter", "Time the group's tasks were throttled."),
    _spec("cgroup_memory_usage_bytes", "gauge", "Memory charged to the group (memory.current)."),
    _spec("cgroup_memory_working_set_bytes", "gauge", "Memory usage minus inactive file cache."),
    _spec("cgroup_memory_peak_bytes", "gauge", "Highest memory usage recorded (where the kernel has it)."),
    _spec("cgroup_memory_swap_usage_bytes", "gauge", "Swap used by the group."),
    _spec("cgroup_memory_stat_bytes", "gauge", "Memory breakdown from memory.stat, by type."),
    _spec("cgroup_memory_events", "counter", "Memory events (limit hits, OOM, OOM kills), by event."),
    _spec("cgroup_io_read_bytes", "counter", "Bytes read from a block device."),
    _spec("cgroup_io_write_bytes", "counter", "Bytes written to a block device."),
    _spec("cgroup_io_read_operations", "counter", "Read operations on a block device."),
    _spec("cgroup_io_write_operations", "counter", "Write operations on a block device."),
    _spec("cgroup_pids_current", "gauge", "Number of tasks in the group."),
    _spec("cgroup_pids_max", "gauge", "Task limit of the group (+Inf when unlimited)."),
    _spec("cgroup_pressure_waiting_seconds", "counter", "PSI some: time at least one task waited."),
    _spec("cgroup_pressure_stalled_seconds", "counter", "PSI full: time all non-idle tasks stalled."),
    _spec("cgroup_frozen", "gauge", "1 when the group is frozen (by itself or an ancestor)."),
    _spec("cgroup_limit_cpu_quota_seconds", "gauge", "CPU quota per period (+Inf when unlimited)."),
    _spec("cgroup_limit_cpu_period_seconds", "gauge", "CPU bandwidth period."),
    _spec("cgroup_limit_cpu_weight", "gauge", "CPU weight (1-10000)."),
    _spec("cgroup_limit_memory_bytes", "gauge", "Memory limits by kind (+Inf when unlimited)."),
    _spec("cgroup_limit_pids", "gauge", "Configured task limit (+Inf when unlimited)."),
    _spec("cgroup_limit_io_weight", "gauge", "IO weight (1-10000)."),
    _spec("cgroup_limit_io_bytes_per_second", "gauge", "IO bandwidth limit by device and direction."),
    _spec("cgroup_limit_io_operations_per_second", "gauge", "IO operations limit by device and direction."),
)

AGENT_FAMILIES: tuple[FamilySpec, ...] = (
    _spec("cgctl_build", "info", "cgctl version, driver and cgroup mode."),
    _spec("cgctl_apply", "counter", "Reconciliations that applied changes, by result."),
    _spec("cgctl_apply_duration_seconds", "histogram", "Time spent applying a plan."),
    _spec("cgctl_policy_drift", "gauge", "1 while a knob's kernel value differs from the policy."),
    _spec("cgctl_policy_drift_detected", "counter", "Knobs found drifted (each transition into drift)."),
    _spec("cgctl_collect_duration_seconds", "histogram", "Time spent collecting group usage."),
    _spec("cgctl_collect_errors", "counter", "Collections that failed."),
    _spec("cgctl_scrape_cgroups", "gauge", "Cgroups in the current snapshot."),
)

ALL_FAMILIES: tuple[FamilySpec, ...] = GROUP_FAMILIES + AGENT_FAMILIES

# Every sample name cgctl can emit (dashboards and alert rules are checked against it).
EXPORTED_METRIC_NAMES: frozenset[str] = frozenset(name for spec in ALL_FAMILIES for name in spec.sample_names)

MEMORY_STAT_TYPES: frozenset[str] = frozenset(MEMORY_STAT_V2)

APPLY_RESULTS: tuple[str, ...] = ("ok", "error", "partial")
APPLY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COLLECT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# --------------------------------------------------------------------------------------------------
# Snapshot and agent state
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Usage of every exported group at one moment. ``names``: cgroup path → policy group name
    (groups absent from it, e.g. extra subtrees, get ``group=""``)."""

    usage: Mapping[str, GroupUsage] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)
    errors: int = 0  # failures during this collection (counted into cgctl_collect_errors_total)


@dataclass(frozen=True)
class HistogramState:
    buckets: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket, not cumulative; one extra slot for +Inf
    total: float
    count: int


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                index = i
                break
        self.counts[index] += 1
        self.total += value
        self.count += 1

    def state(self) -> HistogramState:
        return HistogramState(self.buckets, tuple(self.counts), self.total, self.count)


@dataclass(frozen=True)
class AgentState:
    version: str
    driver: str
    cgroup_mode: str
    apply_total: Mapping[str, int]
    apply_duration: HistogramState
    drift: Mapping[tuple[str, str], bool]
    drift_detected_total: int
    collect_duration: HistogramState
    collect_errors_total: int


class AgentMetrics:
    """The agent's own counters. Updated from the event loop, read by rendering in a worker thread."""

    def __init__(self, version: str, driver: str, cgroup_mode: str) -> None:
        self._lock = threading.Lock()
        self.version = version
        self.driver = driver
        self.cgroup_mode = cgroup_mode
        self._apply_total = dict.fromkeys(APPLY_RESULTS, 0)
        self._apply_duration = _Histogram(APPLY_BUCKETS)
        self._drift: dict[tuple[str, str], bool] = {}
        self._drift_detected = 0
        self._collect_duration = _Histogram(COLLECT_BUCKETS)
        self._collect_errors = 0

    def record_apply(self, result: str, seconds: float) -> None:
        """One reconciliation that applied a plan: ``result`` is ok, error or partial."""
        with self._lock:
            self._apply_total[result] = self._apply_total.get(result, 0) + 1
            self._apply_duration.observe(seconds)

    def set_drift(self, group: str, knob: str, drifted: bool) -> None:
        """Record whether ``knob`` of policy group ``group`` differs from the policy right now."""
        with self._lock:
            if drifted and not self._drift.get((group, knob), False):
                self._drift_detected += 1
            self._drift[(group, knob)] = drifted

    def forget_drift(self, keep: Iterable[tuple[str, str]] = ()) -> None:
        """Drop drift series of (group, knob) pairs the policy no longer manages."""
        wanted = set(keep)
        with self._lock:
            self._drift = {key: value for key, value in self._drift.items() if key in wanted}

    def record_collect(self, seconds: float, errors: int = 0) -> None:
        with self._lock:
            self._collect_duration.observe(seconds)
            self._collect_errors += errors

    def state(self) -> AgentState:
        with self._lock:
            return AgentState(
                version=self.version,
                driver=self.driver,
                cgroup_mode=self.cgroup_mode,
                apply_total=dict(self._apply_total),
                apply_duration=self._apply_duration.state(),
                drift=dict(self._drift),
                drift_detected_total=self._drift_detected,
                collect_duration=self._collect_duration.state(),
                collect_errors_total=self._collect_errors,
            )


# --------------------------------------------------------------------------------------------------
# Building the families
# --------------------------------------------------------------------------------------------------

# Scalar GroupUsage fields → family name.
_SCALARS: tuple[tuple[str, str], ...] = (
    ("cpu_usage_seconds", "cgroup_cpu_usage_seconds"),
    ("cpu_user_seconds", "cgroup_cpu_user_seconds"),
    ("cpu_system_seconds", "cgroup_cpu_system_seconds"),
    ("cpu_periods", "cgroup_cpu_periods"),
    ("cpu_throttled_periods", "cgroup_cpu_throttled_periods"),
    ("cpu_throttled_seconds", "cgroup_cpu_throttled_seconds"),
    ("memory_usage_bytes", "cgroup_memory_usage_bytes"),
    ("memory_working_set_bytes", "cgroup_memory_working_set_bytes"),
    ("memory_peak_bytes", "cgroup_memory_peak_bytes"),
    ("memory_swap_usage_bytes", "cgroup_memory_swap_usage_bytes"),
    ("pids_current", "cgroup_pids_current"),
    ("pids_max", "cgroup_pids_max"),
)
_IO_FIELDS: tuple[tuple[str, str], ...] = (
    ("rbytes", "cgroup_io_read_bytes"),
    ("wbytes", "cgroup_io_write_bytes"),
    ("rios", "cgroup_io_read_operations"),
    ("wios", "cgroup_io_write_operations"),
)
_MEMORY_LIMIT_KINDS: Mapping[str, str] = {
    "memory.max": "max",
    "memory.high": "high",
    "memory.low": "low",
    "memory.min": "min",
    "memory.swap.max": "swap_max",
}
_INF = math.inf


def _suffix(kind: Kind) -> str:
    return "_total" if kind == "counter" else ""


def _limit_number(value: object) -> float | None:
    """A byte/count limit: int as is, None ("max") as +Inf, anything else is not a number limit."""
    if value is None:
        return _INF
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


Rows: TypeAlias = Sequence[tuple[GroupLabels, GroupUsage]]
_MISSING = object()
_TYPE_LABELS: Mapping[str, Extra] = {t: (("type", t),) for t in MEMORY_STAT_TYPES}


def _scalar_samples(rows: Rows, attr: str, suffix: str) -> Iterator[Sample]:
    for labels, usage in rows:
        value = getattr(usage, attr)
        if value is not None:
            yield (suffix, labels, (), value)


def _memory_stat_samples(rows: Rows) -> Iterator[Sample]:
    for labels, usage in rows:
        for stat_type, value in usage.memory_stat_bytes.items():
            extra = _TYPE_LABELS.get(stat_type)
            if extra is not None:
                yield ("", labels, extra, value)


def _keyed_samples(rows: Rows, attr: str, label: str) -> Iterator[Sample]:
    """Counters kept in a dict per group (memory events, PSI by resource): one sample per key."""
    for labels, usage in rows:
        table: Mapping[str, float] = getattr(usage, attr)
        for key, value in table.items():
            yield ("_total", labels, ((label, key),), value)


def _io_samples(rows: Rows, field_name: str) -> Iterator[Sample]:
    for labels, usage in rows:
        for device, fields in usage.io.items():
            value = fields.get(field_name)
            if value is not None:
                yield ("_total", labels, (("device", device),), value)


def _frozen_samples(rows: Rows) -> Iterator[Sample]:
    for labels, usage in rows:
        if usage.frozen is not None:
            yield ("", labels, (), 1 if usage.frozen else 0)


def _cpu_limit_samples(rows: Rows, period: bool) -> Iterator[Sample]:
    for labels, usage in rows:
        value = usage.limits.get("cpu.max")
        if isinstance(value, CpuMax):
            if period:
                yield ("", labels, (), value.period_us / 1e6)
            else:
                yield ("", labels, (), _INF if value.quota_us is None else value.quota_us / 1e6)


def _number_limit_samples(rows: Rows, keys: Mapping[str, Extra]) -> Iterator[Sample]:
    """Integer limits where None means "max" (+Inf); ``keys``: setting key → extra labels."""
    for labels, usage in rows:
        limits = usage.limits
        if not limits:
            continue
        for key, extra in keys.items():
            value = limits.get(key, _MISSING)
            if value is _MISSING:
                continue
            number = _limit_number(value)
            if number is not None:
                yield ("", labels, extra, number)


_IO_LIMIT_FIELDS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "cgroup_limit_io_bytes_per_second": (("rbps", "read"), ("wbps", "write")),
    "cgroup_limit_io_operations_per_second": (("riops", "read"), ("wiops", "write")),
}


def _io_limit_samples(rows: Rows, family: str) -> Iterator[Sample]:
    fields = _IO_LIMIT_FIELDS[family]
    for labels, usage in rows:
        for key, value in usage.limits.items():
            if not key.startswith("io.max[") or not isinstance(value, IoMax):
                continue
            device = split_key(key)[1] or ""
            for field_name, direction in fields:
                limit = getattr(value, field_name)
                yield (
                    "",
                    labels,
                    (("device", device), ("direction", direction)),
                    _INF if limit is None else limit,
                )


def build_families(snapshot: Snapshot, agent: AgentState | None) -> list[Family]:
    """All families for one scrape, in a stable order (groups sorted by path): the per-group families
    of :func:`build_group_families`, then the agent's own of :func:`build_agent_families`."""
    return build_group_families(snapshot) + build_agent_families(agent, len(snapshot.usage))


def build_group_families(snapshot: Snapshot) -> list[Family]:
    """The per-group families (``GROUP_FAMILIES``): a function of the snapshot alone, so the server
    renders them once per snapshot and reuses the bytes for every scrape of it.

    The families hold generators, consumed once by the renderer: a scrape of 5000 groups has ~110k
    samples, and holding them all as tuples at once cost ~30 MB of peak RSS and long pauses of the
    cyclic GC (which runs with the GIL held and so stalls the event loop).
    """
    names = snapshot.names
    rows: Rows = [
        (GroupLabels.of(cgroup, names.get(cgroup, "")), snapshot.usage[cgroup])
        for cgroup in sorted(snapshot.usage)
    ]
    memory_kinds: dict[str, Extra] = {key: (("kind", kind),) for key, kind in _MEMORY_LIMIT_KINDS.items()}
    kinds = {spec.name: spec.kind for spec in GROUP_FAMILIES}
    generators: dict[str, Iterable[Sample]] = {
        name: _scalar_samples(rows, attr, _suffix(kinds[name])) for attr, name in _SCALARS
    }
    generators.update(
        {
            "cgroup_memory_stat_bytes": _memory_stat_samples(rows),
            "cgroup_memory_events": _keyed_samples(rows, "memory_events", "event"),
            "cgroup_pressure_waiting_seconds": _keyed_samples(rows, "pressure_some_seconds", "resource"),
            "cgroup_pressure_stalled_seconds": _keyed_samples(rows, "pressure_full_seconds", "resource"),
            "cgroup_frozen": _frozen_samples(rows),
            "cgroup_limit_cpu_quota_seconds": _cpu_limit_samples(rows, period=False),
            "cgroup_limit_cpu_period_seconds": _cpu_limit_samples(rows, period=True),
            "cgroup_limit_cpu_weight": _number_limit_samples(rows, {"cpu.weight": ()}),
            "cgroup_limit_io_weight": _number_limit_samples(rows, {"io.weight": ()}),
            "cgroup_limit_memory_bytes": _number_limit_samples(rows, memory_kinds),
            "cgroup_limit_pids": _number_limit_samples(rows, {"pids.max": ()}),
        }
    )
    for field_name, name in _IO_FIELDS:
        generators[name] = _io_samples(rows, field_name)
    for name in _IO_LIMIT_FIELDS:
        generators[name] = _io_limit_samples(rows, name)
    return [Family(spec.name, spec.kind, spec.help, generators.get(spec.name, [])) for spec in GROUP_FAMILIES]


def build_agent_families(agent: AgentState | None, cgroups: int) -> list[Family]:
    """The agent's own families (``AGENT_FAMILIES``), from its state at this scrape; ``cgroups`` is the
    number of groups in the snapshot being served. Without ``agent`` the families have no samples."""
    families = [Family(spec.name, spec.kind, spec.help, []) for spec in AGENT_FAMILIES]
    if agent is not None:
        _add_agent({family.name: family for family in families}, agent, cgroups)
    return families


def _histogram_samples(family: Family, state: HistogramState) -> None:
    samples: list[Sample] = []
    family.samples = samples
    cumulative = 0
    for bound, count in zip((*state.buckets, _INF), state.counts, strict=True):
        cumulative += count
        samples.append(("_bucket", None, (("le", _format_le(bound)),), cumulative))
    samples.append(("_count", None, (), state.count))
    samples.append(("_sum", None, (), state.total))


def _format_le(bound: float) -> str:
    # The same spelling prometheus_client uses for bucket bounds (Go's float formatting).
    return "+Inf" if bound == _INF else repr(float(bound))


def _add_agent(families: Mapping[str, Family], agent: AgentState, cgroups: int) -> None:
    build = (("cgroup_mode", agent.cgroup_mode), ("driver", agent.driver), ("version", agent.version))
    families["cgctl_build"].samples = [("_info", None, build, 1)]
    families["cgctl_apply"].samples = [
        ("_total", None, (("result", result),), agent.apply_total[result])
        for result in sorted(agent.apply_total)
    ]
    _histogram_samples(families["cgctl_apply_duration_seconds"], agent.apply_duration)
    families["cgctl_policy_drift"].samples = [
        ("", None, (("group", group), ("knob", knob)), 1 if drifted else 0)
        for (group, knob), drifted in sorted(agent.drift.items())
    ]
    families["cgctl_policy_drift_detected"].samples = [("_total", None, (), agent.drift_detected_total)]
    _histogram_samples(families["cgctl_collect_duration_seconds"], agent.collect_duration)
    families["cgctl_collect_errors"].samples = [("_total", None, (), agent.collect_errors_total)]
    families["cgctl_scrape_cgroups"].samples = [("", None, (), cgroups)]


# --------------------------------------------------------------------------------------------------
# prometheus_client collector
# --------------------------------------------------------------------------------------------------


def to_metrics(families: Sequence[Family]) -> Iterator[Metric]:
    """The families as prometheus_client metrics. ``Metric`` (the base of the ``*MetricFamily``
    classes) is used directly because one representation carries every family type."""
    for family in families:
        metric = Metric(family.name, family.help, family.kind)
        for suffix, labels, extra, value in family.samples:
            label_dict = {"cgroup": labels.cgroup, "group": labels.group} if labels is not None else {}
            label_dict.update(extra)
            metric.add_sample(family.name + suffix, label_dict, value)
        yield metric


class CgctlCollector:
    """A prometheus_client custom collector: ``registry.register(CgctlCollector(...))``.

    ``snapshot`` returns the latest snapshot (the collector never reads cgroupfs itself, so a scrape
    through any prometheus_client encoder renders exactly what the server renders).
    """

    def __init__(self, snapshot: Callable[[], Snapshot], agent: AgentMetrics | None = None) -> None:
        self._snapshot = snapshot
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self._agent.state() if self._agent is not None else None
        yield from to_metrics(build_families(self._snapshot(), agent))
