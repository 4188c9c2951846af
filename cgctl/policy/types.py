"""The loaded policy: what the planner and the CLI consume. Light on purpose (no yaml)."""

from __future__ import annotations

from drivers.api import GroupPath, Knob, SettingKey, Value, split_key
from drivers.records import field, record

# Where each knob is written in the policy file, for messages like "groups.web.memory.swap_max: ...".
POLICY_FIELDS: dict[Knob, str] = {
    Knob.CPU_WEIGHT: "cpu.weight",
    Knob.CPU_MAX: "cpu.max",
    Knob.CPUSET_CPUS: "cpu.cpus",
    Knob.CPUSET_MEMS: "cpu.mems",
    Knob.MEMORY_MIN: "memory.min",
    Knob.MEMORY_LOW: "memory.low",
    Knob.MEMORY_HIGH: "memory.high",
    Knob.MEMORY_MAX: "memory.max",
    Knob.MEMORY_SWAP_MAX: "memory.swap_max",
    Knob.MEMORY_OOM_GROUP: "memory.oom_group",
    Knob.IO_WEIGHT: "io.weight",
    Knob.IO_MAX: "io.max",
    Knob.PIDS_MAX: "pids.max",
}


@record(frozen=True, order=True)
class SourceRef:
    """A place in a policy file; line and column are 1-based."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@record(frozen=True, order=True)
class PolicyIssue:
    """One problem in a policy (an error, or a warning about an odd but legal combination)."""

    file: str
    line: int
    col: int
    field: str  # dotted, e.g. "groups.web.memory.max"; "" for whole-file problems
    message: str

    @classmethod
    def at(cls, ref: SourceRef, field_: str, message: str) -> PolicyIssue:
        return cls(ref.file, ref.line, ref.col, field_, message)

    @property
    def ref(self) -> SourceRef:
        return SourceRef(self.file, self.line, self.col)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyError(Exception):
    """The policy is invalid. ``errors`` holds every problem found, sorted by file and position."""

    def __init__(self, errors: list[PolicyIssue]) -> None:
        self.errors = sorted(errors)
        super().__init__("\n".join(str(issue) for issue in self.errors))


@record(frozen=True)
class GroupSpec:
    """One group the policy defines, with only the settings it names (drivers.api value types)."""

    path: GroupPath
    resources: dict[SettingKey, Value]
    frozen: bool | None  # None: the policy does not say
    origin: SourceRef  # where the group's name is written
    origins: dict[SettingKey, SourceRef] = field(default_factory=dict)  # where each setting's value is


@record(frozen=True)
class Policy:
    """A validated, normalized policy.

    ``groups`` holds every group the policy defines, keyed by path and sorted parents-first (depth-first
    in name order). The managed root ``()`` itself is not in it: it is ``root``, created by the driver.
    """

    files: tuple[str, ...]
    version: int
    driver: str  # "auto" | "cgroupfs" | "systemd"
    root: str  # relative path under the cgroup mount, e.g. "cgctl" or "apps/cgctl"
    on_unsupported: str  # "error" | "warn": what a knob the host cannot honour becomes in the plan
    groups: dict[GroupPath, GroupSpec]
    warnings: list[PolicyIssue] = field(default_factory=list)

    def field_name(self, path: GroupPath, key: SettingKey | None = None) -> str:
        """``(('web', 'worker'), 'memory.max')`` → ``groups.web.groups.worker.memory.max``.

        ``key`` may be a setting key (``io.max[8:0]`` → ``...io.max[8:0]``), ``"frozen"``, or None for
        the group itself.
        """
        return field_name(path, key)

    def origin_of(self, path: GroupPath, key: SettingKey | None = None) -> SourceRef | None:
        """Where a setting (or, with ``key=None``, the group) is written; None if the policy lacks it."""
        spec = self.groups.get(path)
        if spec is None:
            return None
        if key is None or key == "frozen":
            return spec.origin if key is None else spec.origins.get("frozen", spec.origin)
        return spec.origins.get(key)


def field_name(path: GroupPath, key: SettingKey | None = None) -> str:
    parts: list[str] = []
    for name in path:
        parts += ["groups", name]
    if key is not None:
        if key == "frozen":
            parts.append("frozen")
        else:
            knob, device = split_key(key)
            parts.append(POLICY_FIELDS[knob] + (f"[{device}]" if device is not None else ""))
    return ".".join(parts)
