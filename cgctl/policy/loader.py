"""Policy files → a validated, normalized :class:`Policy`, or a :class:`PolicyError` listing every problem.

Per file: YAML → data with positions (:mod:`.source`) → schema models (:mod:`.models`) → group specs
in driver value types. Then ``include:`` targets, depth-first in the order written (a directory
contributes its ``*.yaml``/``*.yml`` files in name order, hidden files skipped).

Rules across files:

* ``version:`` is required in the main file. Included files may leave version, driver, root and
  on_unsupported out; if they set one, it must equal the main file's.
* Include paths are relative to the including file. A file included while it is being loaded is a
  cycle; a file reached twice by other routes is reported too (its groups would be duplicates anyway).
* A group path is defined exactly once. A file adds children only by nesting them under a group it
  defines itself, so two files that both write ``web:`` are an error naming both places; use
  different top-level groups per file (e.g. one per team) in ``policy.d/``.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

from cgctl import units
from cgctl.policy.cache import Inputs
from cgctl.policy.files import policy_files_in, read_text
from cgctl.policy.models import GroupModel, PolicyFileModel, SchemaIssue, validate_file
from cgctl.policy.names import MAX_DEPTH
from cgctl.policy.source import Loc, Source, dotted, parse_source_safe
from cgctl.policy.types import GroupSpec, Policy, PolicyError, PolicyIssue, SourceRef
from drivers.api import CpuList, GroupPath, IoMax, Knob, SettingKey, Value, setting_key

DeviceResolver = Callable[[str], str]

_MEMORY_FIELDS: tuple[tuple[str, Knob], ...] = (
    ("min", Knob.MEMORY_MIN),
    ("low", Knob.MEMORY_LOW),
    ("high", Knob.MEMORY_HIGH),
    ("max", Knob.MEMORY_MAX),
    ("swap_max", Knob.MEMORY_SWAP_MAX),
)
# Why a memory value above the next one in min ≤ low ≤ high ≤ max is (legal but) pointless.
_ORDER_EFFECT = {
    "min": ", so memory.low adds nothing",
    "low": ": the extra protection cannot be used",
    "high": ", so it never takes effect",
}
_SHARED_KEYS = ("version", "driver", "root", "on_unsupported")


def load_policy(path: str | os.PathLike[str], *, resolve_device: DeviceResolver | None = None) -> Policy:
    """Load a policy file and everything it includes. Raises PolicyError with every problem found."""
    return load_policy_and_inputs(path, resolve_device=resolve_device)[0]


def load_policy_and_inputs(
    path: str | os.PathLike[str], *, resolve_device: DeviceResolver | None = None
) -> tuple[Policy, Inputs]:
    """:func:`load_policy`, and what the policy was made from (for :mod:`cgctl.policy.cache`)."""
    file = os.fspath(path)
    loader = _Loader(resolve_device)
    text = loader.read(file, None)
    if text is None:
        raise PolicyError(loader.errors)
    with _cyclic_gc_paused():
        return loader.run(text, file), loader.inputs


def parse_policy_text(text: str, filename: str, *, resolve_device: DeviceResolver | None = None) -> Policy:
    """Load a policy from a string (includes resolve relative to ``filename``'s directory)."""
    with _cyclic_gc_paused():
        return _Loader(resolve_device).run(text, filename)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Loading allocates a few hundred objects per group (nodes, data, models) and no garbage cycles;
    the cyclic collector would rescan the growing heap again and again (measured: 5000 groups take
    1.5 s with it, 0.6 s without). Reference counting still frees everything as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Loader:
    def __init__(self, resolve_device: DeviceResolver | None) -> None:
        if resolve_device is None:
            from cgctl.devices import resolve_device as host_resolver

            resolve_device = host_resolver
        self.resolve_device: DeviceResolver = resolve_device
        self.errors: list[PolicyIssue] = []
        self.warnings: list[PolicyIssue] = []
        self.files: list[str] = []
        self.loaded: dict[str, SourceRef | None] = {}  # realpath → where it was included from
        self.groups: dict[GroupPath, GroupSpec] = {}
        self.devices: dict[str, str | ValueError] = {}
        self.main: PolicyFileModel | None = None
        self.main_source: Source | None = None
        self.main_valid = False
        self.inputs = Inputs()  # what this load read, for the policy cache

    # -- files -------------------------------------------------------------------------------------

    def read(self, file: str, ref: SourceRef | None, field_: str = "") -> str | None:
        try:
            text = read_text(file)
            self.inputs.files[file] = text
            return text
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = ref or SourceRef(file, 1, 1)
            self.errors.append(PolicyIssue.at(where, field_, f"cannot read {file}: {reason}"))
            return None

    def run(self, text: str, file: str) -> Policy:
        self.load_text(text, file, stack=(os.path.realpath(file),), included_from=None)
        if self.errors:
            raise PolicyError(self.errors)
        main = self.main
        assert main is not None
        return Policy(
            files=tuple(self.files),
            version=main.version,
            driver=main.driver,
            root=main.root,
            on_unsupported=main.on_unsupported,
            groups=dict(sorted(self.groups.items())),
            warnings=sorted(self.warnings),
        )

    def load_text(
        self, text: str, file: str, stack: tuple[str, ...], included_from: SourceRef | None
    ) -> None:
        self.files.append(file)
        self.loaded[stack[-1]] = included_from
        source = parse_source_safe(text, file)
        self.errors.extend(source.issues)
        if not isinstance(source.data, dict):
            return
        data = source.data
        model, issues = validate_file(data)
        self.errors.extend(_positioned(source, issues))
        if included_from is None:
            if "version" not in data:
                self.errors.append(
                    PolicyIssue.at(source.value_ref(()), "version", "missing required key (write version: 1)")
                )
            self.main = model or PolicyFileModel()
            self.main_source = source
            self.main_valid = model is not None
        elif model is not None and self.main_valid:  # else the comparison would be with stand-in values
            self.check_shared_keys(model, source)
        if model is not None:
            for name, group in model.groups.items():
                self.add_group(source, ("groups", name), (name,), group, None)
        for index, target in _include_targets(data, model):
            self.include(
                source,
                file,
                ("include",) if isinstance(data["include"], str) else ("include", index),
                target,
                stack,
            )

    def check_shared_keys(self, model: PolicyFileModel, source: Source) -> None:
        main, main_source = self.main, self.main_source
        assert main is not None and main_source is not None
        for key in _SHARED_KEYS:
            if key not in model.given:
                continue
            mine, theirs = getattr(model, key), getattr(main, key)
            if mine != theirs:
                where = (
                    f"set in {main_source.value_ref((key,))}"
                    if key in main.given
                    else f"the default of {main_source.file}"
                )
                self.errors.append(
                    PolicyIssue.at(
                        source.value_ref((key,)),
                        key,
                        f"{mine!r} differs from {theirs!r} ({where}); an included file must agree with the"
                        " main policy",
                    )
                )

    def include(self, source: Source, file: str, loc: Loc, target: str, stack: tuple[str, ...]) -> None:
        ref = source.value_ref(loc)
        field_ = dotted(loc)
        path = os.path.normpath(os.path.join(os.path.dirname(file), os.path.expanduser(target)))
        if os.path.isdir(path):
            try:
                files = policy_files_in(path)
            except OSError as exc:
                self.errors.append(PolicyIssue.at(ref, field_, f"cannot read {path}: {exc.strerror}"))
                return
            self.inputs.directories[path] = files
        elif os.path.exists(path):
            files = [path]
        else:
            self.errors.append(PolicyIssue.at(ref, field_, f"{path}: no such file or directory"))
            return
        for included in files:
            real = os.path.realpath(included)
            if real in stack:
                chain = " → ".join([*(_short(p) for p in stack[stack.index(real) :]), _short(real)])
                self.errors.append(PolicyIssue.at(ref, field_, f"include cycle: {chain}"))
                continue
            if real in self.loaded:
                first = self.loaded[real]
                self.errors.append(
                    PolicyIssue.at(
                        ref, field_, f"{included} is already part of the policy (included at {first})"
                    )
                )
                continue
            text = self.read(included, ref, field_)
            if text is not None:
                self.load_text(text, included, (*stack, real), ref)

    # -- groups ------------------------------------------------------------------------------------

    def add_group(
        self, source: Source, loc: Loc, path: GroupPath, group: GroupModel, parent: GroupSpec | None
    ) -> None:
        origin = source.key_ref(loc)
        field_ = dotted(loc)
        if len(path) > MAX_DEPTH:
            self.errors.append(
                PolicyIssue.at(origin, field_, f"groups nest deeper than {MAX_DEPTH} levels below the root")
            )
            return
        previous = self.groups.get(path)
        if previous is not None:
            self.errors.append(
                PolicyIssue.at(
                    origin,
                    field_,
                    f"group {'/'.join(path)} is defined twice: at {previous.origin} and {origin}",
                )
            )
            return
        resources: dict[SettingKey, Value] = {}
        origins: dict[SettingKey, SourceRef] = {}
        self.cpu(source, loc, group, resources, origins)
        self.memory(source, loc, group, resources, origins)
        self.io(source, loc, group, resources, origins)
        if "max" in group.pids.given:
            resources[Knob.PIDS_MAX.value] = group.pids.max
            origins[Knob.PIDS_MAX.value] = source.value_ref((*loc, "pids", "max"))
        frozen: bool | None = None
        if "frozen" in group.given:
            frozen = group.frozen
            origins["frozen"] = source.value_ref((*loc, "frozen"))
        spec = GroupSpec(path=path, resources=resources, frozen=frozen, origin=origin, origins=origins)
        self.groups[path] = spec
        if parent is not None:
            self.check_cpuset_within_parent(source, loc, spec, parent)
        for name, child in group.groups.items():
            self.add_group(source, (*loc, "groups", name), (*path, name), child, spec)

    def cpu(
        self,
        source: Source,
        loc: Loc,
        group: GroupModel,
        resources: dict[SettingKey, Value],
        origins: dict[SettingKey, SourceRef],
    ) -> None:
        cpu = group.cpu
        given = cpu.given
        if "weight" in given:
            _put(resources, origins, Knob.CPU_WEIGHT, cpu.weight, source.value_ref((*loc, "cpu", "weight")))
        if "max" in given or "period" in given:
            where = (*loc, "cpu", "max" if "max" in given else "period")
            try:
                value = cpu.max.resolve(cpu.period)
            except ValueError as exc:
                self.errors.append(PolicyIssue.at(source.value_ref(where), dotted(where), str(exc)))
            else:
                _put(resources, origins, Knob.CPU_MAX, value, source.value_ref(where))
        if "cpus" in given:
            _put(resources, origins, Knob.CPUSET_CPUS, cpu.cpus, source.value_ref((*loc, "cpu", "cpus")))
        if "mems" in given:
            _put(resources, origins, Knob.CPUSET_MEMS, cpu.mems, source.value_ref((*loc, "cpu", "mems")))

    def memory(
        self,
        source: Source,
        loc: Loc,
        group: GroupModel,
        resources: dict[SettingKey, Value],
        origins: dict[SettingKey, SourceRef],
    ) -> None:
        memory = group.memory
        given = memory.given
        if not given:
            return
        ordered: list[tuple[str, int]] = []  # explicit finite limits, in min ≤ low ≤ high ≤ max order
        for name, knob in _MEMORY_FIELDS:
            if name in given:
                value: int | None = getattr(memory, name)
                _put(resources, origins, knob, value, source.value_ref((*loc, "memory", name)))
                if value is not None and knob is not Knob.MEMORY_SWAP_MAX:
                    ordered.append((name, value))
        if "oom_group" in given:
            ref = source.value_ref((*loc, "memory", "oom_group"))
            _put(resources, origins, Knob.MEMORY_OOM_GROUP, memory.oom_group, ref)
        # The kernel accepts any order, but a protection above a limit or high above max never acts:
        # legal yet almost certainly a typo, so a warning rather than an error.
        for (low_name, low), (high_name, high) in itertools.pairwise(ordered):
            if low > high:
                where = (*loc, "memory", low_name)
                message = f"{units.format_size(low)} is above memory.{high_name} ({units.format_size(high)})"
                self.warnings.append(
                    PolicyIssue.at(source.value_ref(where), dotted(where), message + _ORDER_EFFECT[low_name])
                )

    def io(
        self,
        source: Source,
        loc: Loc,
        group: GroupModel,
        resources: dict[SettingKey, Value],
        origins: dict[SettingKey, SourceRef],
    ) -> None:
        io = group.io
        if "weight" in io.given:
            _put(resources, origins, Knob.IO_WEIGHT, io.weight, source.value_ref((*loc, "io", "weight")))
        seen: dict[str, tuple[SourceRef, str]] = {}
        for index, entry in enumerate(io.max):
            entry_loc = (*loc, "io", "max", index)
            device_loc = (*entry_loc, "device")
            device_ref = source.value_ref(device_loc)
            device = self.device(entry.device)
            if isinstance(device, ValueError):
                self.errors.append(PolicyIssue.at(device_ref, dotted(device_loc), str(device)))
                continue
            if device in seen:
                first_ref, first_spec = seen[device]
                same = (
                    f"{first_spec} and {entry.device} are both {device}" if first_spec != entry.device else ""
                )
                self.errors.append(
                    PolicyIssue.at(
                        device_ref,
                        dotted(device_loc),
                        f"device {device} is already limited at {first_ref}"
                        + (f" ({same}); write one entry per disk" if same else ""),
                    )
                )
                continue
            seen[device] = (device_ref, entry.device)
            key = setting_key(Knob.IO_MAX, device)
            resources[key] = IoMax(rbps=entry.rbps, wbps=entry.wbps, riops=entry.riops, wiops=entry.wiops)
            origins[key] = source.value_ref(entry_loc)

    def device(self, spec: str) -> str | ValueError:
        cached = self.devices.get(spec)
        if cached is None:
            try:
                cached = self.resolve_device(spec)
            except ValueError as exc:
                cached = exc
            except OSError as exc:
                cached = ValueError(f"{spec}: {exc.strerror or exc}")
            self.devices[spec] = cached
            if isinstance(cached, str):
                self.inputs.devices[spec] = cached
        return cached

    def check_cpuset_within_parent(
        self, source: Source, loc: Loc, spec: GroupSpec, parent: GroupSpec
    ) -> None:
        for knob, name in ((Knob.CPUSET_CPUS, "cpus"), (Knob.CPUSET_MEMS, "mems")):
            mine, theirs = spec.resources.get(knob.value), parent.resources.get(knob.value)
            if (
                isinstance(mine, CpuList)
                and isinstance(theirs, CpuList)
                and not set(mine.ids) <= set(theirs.ids)
            ):
                where = (*loc, "cpu", name)
                self.warnings.append(
                    PolicyIssue.at(
                        source.value_ref(where),
                        dotted(where),
                        f"{mine} is not within the parent's {theirs}: cgroup v1 refuses it and v2 uses only"
                        " the overlap",
                    )
                )


def _put(
    resources: dict[SettingKey, Value],
    origins: dict[SettingKey, SourceRef],
    knob: Knob,
    value: Value,
    ref: SourceRef,
) -> None:
    resources[knob.value] = value
    origins[knob.value] = ref


def _short(path: str) -> str:
    return os.path.basename(path)


def _include_targets(data: dict[str, Any], model: PolicyFileModel | None) -> Iterator[tuple[int, str]]:
    """The include list; from the raw data when the file failed validation elsewhere, so errors in
    included files are still reported in the same run."""
    if model is not None:
        yield from enumerate(model.include)
        return
    raw = data.get("include")
    items = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    for index, item in enumerate(items):
        if isinstance(item, str):
            yield index, item


def _positioned(source: Source, issues: list[SchemaIssue]) -> list[PolicyIssue]:
    """Schema issues with their place in the file (those under a place the parser already reported
    are dropped: they would repeat that problem in other words)."""
    out = []
    for issue in issues:
        if source.already_reported(issue.loc):
            continue
        if issue.points_at == "key":
            ref = source.key_ref(issue.loc)
        elif issue.points_at == "mapping":
            ref = source.value_ref(issue.loc[:-1])
        else:
            ref = source.value_ref(issue.loc)
        out.append(PolicyIssue.at(ref, dotted(issue.loc), issue.message))
    return out
