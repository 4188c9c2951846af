"""The systemd driver: groups are slices, limits are unit properties, systemd is the single writer.

- The managed root is ``<root>.slice`` (``cgctl.slice``), a group ``('web', 'worker')`` is
  ``cgctl-web-worker.slice`` (see naming.py). Slices are created as transient units
  (``StartTransientUnit``), changed with ``SetUnitProperties``, removed with ``StopUnit`` once empty.
  ``persistent`` is passed on as ``runtime=false``, but systemd stores every property of a *transient*
  unit under ``/run/systemd/transient/<unit>.d`` regardless (observed on 252), so slices and their limits
  are re-created by cgctl after a reboot (the agent converges them), not by systemd. A nested root such as
  ``a/b`` (``a-b.slice``) makes systemd load ``a.slice`` implicitly.
- Ownership: a slice cgctl created carries ``Description=cgctl: managed group <path>`` (``cgctl: managed
  root <root>`` for the root). remove() refuses a slice without that mark (NotOwnedError), create()
  refuses to adopt one.
- This driver never writes a cgroup file (systemd would revert it: anchors §3 pitfall 6). It *reads* the
  kernel's files under the unit's ``ControlGroup`` (asked over D-Bus, never derived from the name) for
  what systemd does not expose: ``cgroup.events`` (populated, frozen), ``memory.current``, usage.
- Processes are placed with a transient scope ``cgctl-<group>-<random>.scope`` in the group's slice
  (slices cannot hold processes themselves).
- Freezing (systemd ≥ 246, cgroup v2): systemd 252 freezes a slice by freezing every unit in it and then
  the slice's cgroup, so children report FreezerState "frozen" too. A group counts as *self*-frozen when
  it is frozen and its parent slice is not; a child of a frozen slice reads ``frozen`` but not
  ``self_frozen``, and cannot be thawed on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from dbus_fast import Variant

from drivers.api import (
    NOT_BOOTED,
    Capabilities,
    CgroupMode,
    CpuList,
    Driver,
    DriverError,
    DriverOptions,
    FreezeTimeoutError,
    GroupBusyError,
    GroupPath,
    GroupUsage,
    Knob,
    NotOwnedError,
    ObservedGroup,
    SettingKey,
    UnsupportedError,
    Value,
    format_path,
    format_value,
    setting_key,
    split_key,
    systemd_booted,
)
from drivers.cgroupfs import usage
from drivers.cgroupfs.mountinfo import CgroupLayout, read_layout
from drivers.systemd import devices, naming, properties
from drivers.systemd.bus import (
    NO_SUCH_UNIT,
    SLICE_IFACE,
    UNIT_EXISTS,
    UNIT_IFACE,
    BusCallError,
    CallTimeoutError,
    SystemdBus,
)

DESCRIPTION_PREFIX = "cgctl: managed "
SCOPE_DESCRIPTION_PREFIX = "cgctl: processes placed into "
SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
# Accounting makes systemd enable the controllers whose usage files stats() reads (memory.current,
# io.stat, pids.current); limits enable their own controllers.
_ACCOUNTING = ("CPUAccounting", "MemoryAccounting", "IOAccounting", "TasksAccounting")
_GONE_STATES = frozenset({"inactive", "failed"})
_POLL_S = 0.01


def describe(root: str, path: GroupPath) -> str:
    return (
        f"{DESCRIPTION_PREFIX}root {root}" if not path else f"{DESCRIPTION_PREFIX}group {format_path(path)}"
    )


def parse_version(text: str) -> int:
    """``252.39-1~deb12u2`` / ``v255`` → 252 / 255."""
    match = re.search(r"\d+", text)
    if not match:
        raise DriverError(
            "cannot read systemd's version", target="org.freedesktop.systemd1.Version", value=text
        )
    return int(match.group())


def _read_text(path: str) -> str | None:
    data = usage.read_file(path)
    return None if data is None else data.decode("utf-8", "replace")


def _system_bus_path() -> str | None:
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={SYSTEM_BUS_SOCKET}")
    for part in address.split(";"):
        if part.startswith("unix:"):
            for option in part[5:].split(","):
                if option.startswith("path="):
                    return option[5:]
    return None


class SystemdDriver(Driver):
    name = "systemd"

    def __init__(
        self, options: DriverOptions, *, timeout: float = 10.0, bus_address: str | None = None
    ) -> None:
        super().__init__(options)
        self._bus = SystemdBus(timeout=timeout, address=bus_address)
        self._version: int | None = None
        self._version_text = ""
        self._layout: CgroupLayout | None = None

    # ---- host checks ------------------------------------------------------------------------------

    @classmethod
    def usable(cls) -> tuple[bool, str]:
        if not systemd_booted():
            return False, NOT_BOOTED
        path = _system_bus_path()
        if path is None:
            return False, "the system bus address is not a unix socket path"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(path)
        except OSError as exc:
            return (
                False,
                f"systemd is PID 1 but the system bus at {path} is unreachable ({exc.strerror or exc})",
            )
        return True, "systemd is PID 1 and the system bus is reachable"

    async def _systemd_version(self) -> int:
        if self._version is None:
            self._version_text = await self._bus.version()
            self._version = parse_version(self._version_text)
        return self._version

    def _cgroup_layout(self) -> CgroupLayout:
        if self._layout is None:
            self._layout = read_layout(self.options.mountpoint)
        return self._layout

    def _unified_mount(self) -> str | None:
        return self._cgroup_layout().unified

    async def probe(self) -> Capabilities:
        version = await self._systemd_version()
        layout = await asyncio.to_thread(self._cgroup_layout)
        if layout.mode is None:
            raise UnsupportedError("no cgroup filesystem is mounted", target=self.options.mountpoint)
        unified = layout.mode is CgroupMode.V2
        unsupported = properties.unsupported_knobs(version, unified)
        # systemd's cg_freezer_supported() wants the whole tree unified (not hybrid).
        can_freeze = version >= properties.VERSION_FREEZE and unified
        if version < properties.VERSION_FREEZE:
            freeze_note = (
                f"no: FreezeUnit needs systemd >= {properties.VERSION_FREEZE}; this is systemd {version}"
            )
        elif not unified:
            freeze_note = "no: systemd freezes units only on a pure cgroup v2 hierarchy"
        else:
            freeze_note = "yes (FreezeUnit/ThawUnit)"
        facts = await asyncio.to_thread(self._probe_files, layout)
        controllers, cpus, mems, features = facts
        features = {
            **features,
            "systemd.freeze": can_freeze,
            "systemd.cpu_quota_period": version >= properties.VERSION_CPU_QUOTA_PERIOD,
        }
        details = {
            "systemd_version": self._version_text,
            "root_slice": naming.slice_name(self.options.root, ()),
            "freeze": freeze_note,
            # Seen on 252: properties of transient units always go to /run/systemd/transient/<unit>.d,
            # whatever SetUnitProperties' runtime flag says, so they never outlive a reboot.
            "persistent_properties": "no: transient slices keep their properties in /run (lost at reboot)",
            "cpu_quota_rounding": f"CPUQuotaPerSecUSec rounded up to {properties.CPU_QUOTA_STEP_US} µs steps",
            **layout.describe(),
        }
        return Capabilities(
            driver=self.name,
            mode=layout.mode,
            unsupported=unsupported,
            needs_subtree_control=False,  # systemd enables the controllers its units need
            controllers=controllers,
            can_freeze=can_freeze,
            online_cpus=cpus,
            online_mems=mems,
            features=features,
            details=details,
            describes_groups_as="unit",
        )

    def _probe_files(self, layout: CgroupLayout) -> tuple[frozenset[str], CpuList, CpuList, dict[str, bool]]:
        controllers: frozenset[str] = frozenset()
        features: dict[str, bool] = {}
        if layout.unified is not None:
            text = _read_text(f"{layout.unified}/cgroup.controllers") or ""
            controllers = frozenset(text.split())
            # Kernel features are probed by their files in this process's own cgroup (read only).
            own = ""
            for line in (_read_text("/proc/self/cgroup") or "").splitlines():
                if line.startswith("0::"):
                    own = line[3:].strip()
            base = f"{layout.unified.rstrip('/')}{own}" if own not in ("", "/") else None
            if base is not None:
                for feature, name in (
                    ("cgroup.kill", "cgroup.kill"),
                    ("cgroup.freeze", "cgroup.freeze"),
                    ("memory.peak", "memory.peak"),
                    ("psi", "cpu.pressure"),
                ):
                    features[feature] = os.path.exists(f"{base}/{name}")
        if layout.mode is not CgroupMode.V2:
            controllers = frozenset(layout.by_controller)
        cpus = CpuList.parse(_read_text("/sys/devices/system/cpu/online") or "0")
        mems = CpuList.parse(_read_text("/sys/devices/system/node/online") or "0")
        return controllers, cpus, mems, features

    # ---- helpers ----------------------------------------------------------------------------------

    def _unit(self, path: GroupPath) -> str:
        try:
            return naming.slice_name(self.options.root, path)
        except naming.UnitNameError as exc:
            raise DriverError(
                "cannot name this group as a systemd slice", group=path, cause=str(exc)
            ) from exc

    def _cgroup_dir(self, control_group: str) -> str | None:
        mount = self._unified_mount()
        if mount is None or not control_group:
            return None
        return mount.rstrip("/") + control_group

    async def _unit_state(self, name: str) -> tuple[str | None, dict[str, Any]]:
        """(object path, Unit properties) — (None, {}) when systemd has no such unit loaded."""
        obj = await self._bus.get_unit(name)
        if obj is None:
            return None, {}
        return obj, await self._bus.get_all(obj, UNIT_IFACE, unit=name)

    @staticmethod
    def _alive(unit_props: Mapping[str, Any]) -> bool:
        return (
            unit_props.get("LoadState") == "loaded"
            and unit_props.get("ActiveState", "inactive") not in _GONE_STATES
        )

    async def _require(self, path: GroupPath) -> tuple[str, str, dict[str, Any]]:
        """(unit name, object path, Unit properties) of an existing group, else DriverError."""
        name = self._unit(path)
        obj, props = await self._unit_state(name)
        if obj is None or not self._alive(props):
            raise DriverError(f"group {format_path(path)} does not exist", group=path, target=name)
        return name, obj, props

    async def _frozen_state(self, name: str) -> str:
        obj, props = await self._unit_state(name)
        return str(props.get("FreezerState", "running")) if obj is not None else "running"

    def _events(self, control_group: str) -> dict[bytes, bytes]:
        directory = self._cgroup_dir(control_group)
        if directory is None:
            return {}
        return usage.parse_flat_keyed(usage.read_file(f"{directory}/cgroup.events"))

    # ---- observe ----------------------------------------------------------------------------------

    async def observe(
        self,
        paths: Iterable[GroupPath],
        keys: Mapping[GroupPath, Collection[SettingKey]],
        *,
        state: Collection[GroupPath] | None = None,  # one GetAll per unit reads it anyway
        usage: Collection[GroupPath] | None = None,  # likewise (MemoryCurrent)
        types: Collection[GroupPath] = (),  # systemd's units are domain cgroups: never threaded
    ) -> dict[GroupPath, ObservedGroup]:
        wanted = dict.fromkeys([(), *paths])
        results = await asyncio.gather(*(self._observe_one(path, keys.get(path, ())) for path in wanted))
        observed = dict(zip(wanted, results, strict=True))
        # Effective vs own freeze (see module docstring): frozen because the parent slice is frozen.
        parents: dict[str, str] = {}
        for group in observed.values():
            if not group.self_frozen:
                continue
            parent = naming.parent_slice(group.display)
            if parent is None:
                continue
            if parent not in parents:
                parents[parent] = await self._frozen_state(parent)
            if parents[parent] in ("frozen", "freezing"):
                group.self_frozen = False
        return observed

    async def _observe_one(self, path: GroupPath, keys: Collection[SettingKey]) -> ObservedGroup:
        name = self._unit(path)
        obj, unit_props = await self._unit_state(name)
        if obj is None or not self._alive(unit_props):
            return ObservedGroup(exists=False, display=name)
        slice_props = await self._bus.get_all(obj, SLICE_IFACE, unit=name)
        if not slice_props:  # stopped between the two calls
            return ObservedGroup(exists=False, display=name)
        control_group = str(slice_props.get("ControlGroup", ""))

        def blocking_reads() -> tuple[dict[SettingKey, Value], dict[str, int | None]]:
            return self._decode_all(slice_props, keys), self._kernel_state(control_group)

        values, kernel = await asyncio.to_thread(blocking_reads)
        freezer = str(unit_props.get("FreezerState", "running"))
        own_frozen = freezer in ("frozen", "freezing")
        memory_current = kernel.get("memory.current")
        if memory_current is None:
            raw = slice_props.get("MemoryCurrent")
            memory_current = None if raw is None or int(raw) == properties.UINT64_MAX else int(raw)
        return ObservedGroup(
            exists=True,
            values=values,
            frozen=bool(kernel["frozen"]) if kernel.get("frozen") is not None else freezer == "frozen",
            self_frozen=own_frozen,
            populated=bool(kernel.get("populated")),
            memory_current=memory_current,
            display=name,
        )

    def _decode_all(self, props: Mapping[str, Any], keys: Collection[SettingKey]) -> dict[SettingKey, Value]:
        """Every knob whose properties this systemd has, plus io.max for each device systemd lists and
        each one asked for (runs in a thread: device paths are stat()ed)."""
        values: dict[SettingKey, Value] = {}
        for knob in properties.TABLE:
            if knob is Knob.IO_MAX or properties.property_names(knob)[0] not in props:
                continue
            values[setting_key(knob)] = properties.decode(knob, props)
        devices_seen: dict[str, None] = {}
        for _field, prop in properties.IO_MAX_PROPERTIES:
            for dev_path, _raw in props.get(prop, []):
                majmin = devices.majmin_of(str(dev_path))
                if majmin is not None:
                    devices_seen[majmin] = None
        for key in keys:
            knob, device = split_key(key)
            if knob is Knob.IO_MAX and device is not None:
                devices_seen[device] = None
        for device in devices_seen:

            def match(dev_path: str, device: str = device) -> bool:
                return devices.majmin_of(dev_path) == device

            values[setting_key(Knob.IO_MAX, device)] = properties.decode(Knob.IO_MAX, props, match)
        return values

    def _kernel_state(self, control_group: str) -> dict[str, int | None]:
        directory = self._cgroup_dir(control_group)
        if directory is None:
            return {}
        events = usage.parse_flat_keyed(usage.read_file(f"{directory}/cgroup.events"))
        out: dict[str, int | None] = {
            "populated": int(events[b"populated"]) if b"populated" in events else None,
            "frozen": int(events[b"frozen"]) if b"frozen" in events else None,
            "memory.current": usage.parse_int(usage.read_file(f"{directory}/memory.current")),
        }
        return out

    def effective_value(self, key: SettingKey, value: Value) -> Value:
        knob, _device = split_key(key)
        return properties.normalize(knob, value)

    def target_of(self, path: GroupPath, key: SettingKey) -> str:
        return self._unit(path)

    def describe_group(self, path: GroupPath) -> str:
        try:
            return f"{format_path(path)} ({self._unit(path)})"
        except DriverError:  # not nameable as a slice: the plan line still names the group
            return format_path(path)

    def describe_value(self, key: SettingKey, value: Value) -> str:
        """The setting in systemd's terms: ``CPUQuotaPerSecUSec=130000 CPUQuotaPeriodUSec=100000``."""
        knob, device = split_key(key)
        if knob in properties.NOT_EXPRESSIBLE:
            return f"{key}={format_value(value)} (not expressible in systemd)"
        device_path = device
        if device is not None:
            with contextlib.suppress(DriverError):  # unresolvable: show MAJ:MIN; set() will refuse it
                device_path = devices.device_path(device)
        try:
            assignments = properties.encode(knob, value, self._version or 10_000, device_path)
        except properties.ConversionError as exc:
            return f"{key}={format_value(value)} ({exc})"
        return " ".join(f"{name}={properties.format_property(variant)}" for name, variant in assignments)

    # ---- create / remove --------------------------------------------------------------------------

    async def create(self, path: GroupPath) -> None:
        name = self._unit(path)
        if path:
            # systemd would silently create a missing parent slice (without cgctl's mark).
            parent = self._unit(path[:-1])
            parent_obj, parent_props = await self._unit_state(parent)
            if parent_obj is None or not self._alive(parent_props):
                raise DriverError(
                    f"parent group {format_path(path[:-1])} does not exist", group=path, target=parent
                )
        description = describe(self.options.root, path)
        props: list[tuple[str, Variant]] = [("Description", Variant("s", description))]
        props += [(flag, Variant("b", True)) for flag in _ACCOUNTING]
        deadline = time.monotonic() + self._bus.timeout
        while True:
            try:
                await self._bus.start_transient_unit(name, props, group=path)
                return
            except BusCallError as exc:
                if exc.dbus_error != UNIT_EXISTS:
                    raise
            obj, unit_props = await self._unit_state(name)
            if obj is not None and self._alive(unit_props):
                if unit_props.get("Description") == description:
                    return  # already there and ours
                raise NotOwnedError(
                    f"{name} already exists and was not created by cgctl",
                    group=path,
                    target=name,
                    cause=f"Description={unit_props.get('Description')!r}",
                )
            # A stopped transient unit stays loaded until systemd's garbage collection runs.
            if time.monotonic() > deadline:
                raise DriverError(f"{name} is still loaded after being stopped", group=path, target=name)
            await asyncio.sleep(0.05)

    async def remove(self, path: GroupPath) -> None:
        name = self._unit(path)
        obj, unit_props = await self._unit_state(name)
        if obj is None or not self._alive(unit_props):
            return
        if not str(unit_props.get("Description", "")).startswith(DESCRIPTION_PREFIX):
            raise NotOwnedError(
                f"{name} was not created by cgctl; refusing to stop it",
                group=path,
                target=name,
                cause=f"Description={unit_props.get('Description')!r}",
            )
        slice_props = await self._bus.get_all(obj, SLICE_IFACE, unit=name)
        events = await asyncio.to_thread(self._events, str(slice_props.get("ControlGroup", "")))
        processes = await self._bus.get_unit_processes(name, group=path)
        if events.get(b"populated") == b"1" or processes:
            pids = ", ".join(str(pid) for _cg, pid, _cmd in processes[:10])
            raise GroupBusyError(
                f"group {format_path(path)} still holds processes",
                group=path,
                target=name,
                cause=f"pids: {pids}",
            )
        members = [str(member) for member in unit_props.get("SliceOf", [])]
        active: list[str] = []
        for member in members:
            member_obj, member_props = await self._unit_state(member)
            if member_obj is not None and self._alive(member_props):
                active.append(member)
        if active:
            raise GroupBusyError(
                f"group {format_path(path)} still holds units",
                group=path,
                target=name,
                cause=", ".join(active),
            )
        try:
            await self._bus.stop_unit(name, group=path)
        except BusCallError as exc:
            if exc.dbus_error != NO_SUCH_UNIT:
                raise

    # ---- set --------------------------------------------------------------------------------------

    async def set(self, path: GroupPath, key: SettingKey, value: Value) -> None:
        name = self._unit(path)
        knob, device = split_key(key)
        version = await self._systemd_version()
        names = "/".join(properties.property_names(knob)) or knob.value
        reason = properties.unsupported_knobs(version, self._cgroup_layout().mode is CgroupMode.V2).get(knob)
        if reason is not None:
            raise UnsupportedError(
                f"{knob} cannot be set through systemd",
                group=path,
                target=f"{name}.{names}",
                value=format_value(value),
                cause=reason,
            )
        device_path = await asyncio.to_thread(devices.device_path, device) if device is not None else None
        try:
            assignments = properties.encode(knob, value, version, device_path)
        except properties.ConversionError as exc:
            raise DriverError(
                f"{key} has no systemd equivalent",
                group=path,
                target=f"{name}.{names}",
                value=format_value(value),
                cause=str(exc),
            ) from exc
        await self._bus.set_unit_properties(
            name, assignments, runtime=not self.options.persistent, group=path
        )

    # ---- freeze / thaw ----------------------------------------------------------------------------

    async def _confirm(self, path: GroupPath, name: str, want_frozen: bool, deadline: float) -> bool:
        """Poll until systemd's FreezerState and the kernel's cgroup.events agree with the request."""
        want_state = "frozen" if want_frozen else "running"
        check_kernel = True
        if not want_frozen:
            # Thawed inside a still-frozen parent slice, the kernel keeps the group frozen.
            parent = naming.parent_slice(name)
            check_kernel = parent is None or await self._frozen_state(parent) not in ("frozen", "freezing")
        while True:
            obj, unit_props = await self._unit_state(name)
            control_group = ""
            if obj is not None:
                control_group = str(await self._bus.get_property(obj, SLICE_IFACE, "ControlGroup", unit=name))
            events = await asyncio.to_thread(self._events, control_group)
            kernel_ok = (
                not check_kernel
                or b"frozen" not in events
                or events[b"frozen"] == (b"1" if want_frozen else b"0")
            )
            if unit_props.get("FreezerState") == want_state and kernel_ok:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)

    async def freeze(self, path: GroupPath, timeout: float) -> None:
        name, _obj, _props = await self._require(path)
        deadline = time.monotonic() + timeout
        try:
            await self._bus.freeze_unit(name, group=path, timeout=timeout)
            confirmed = await self._confirm(path, name, True, deadline)
        except CallTimeoutError:
            confirmed = False
        if not confirmed:
            # Do not leave a half-frozen group behind (runc#5325): thaw back, then report.
            reverted = await self._revert_freeze(path, name, max(timeout, self._bus.timeout))
            raise FreezeTimeoutError(
                f"systemd did not confirm freezing {name} within {timeout:g}s; "
                + ("thawed it again" if reverted else "and thawing it again failed too"),
                group=path,
                target=f"{name}.FreezerState",
            )

    async def _revert_freeze(self, path: GroupPath, name: str, budget: float) -> bool:
        """Thaw after a failed freeze. systemd may still be busy with the freeze ("operation still in
        progress"), so retry until the thaw is confirmed or the budget is spent."""
        deadline = time.monotonic() + budget
        while True:
            try:
                await self._bus.thaw_unit(name, group=path, timeout=max(deadline - time.monotonic(), _POLL_S))
                if await self._confirm(path, name, False, deadline):
                    return True
            except DriverError:
                pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S * 5)

    async def thaw(self, path: GroupPath, timeout: float) -> None:
        name, _obj, _props = await self._require(path)
        deadline = time.monotonic() + timeout
        try:
            await self._bus.thaw_unit(name, group=path, timeout=timeout)
            confirmed = await self._confirm(path, name, False, deadline)
        except CallTimeoutError:
            confirmed = False
        if not confirmed:
            raise FreezeTimeoutError(
                f"systemd did not confirm thawing {name} within {timeout:g}s",
                group=path,
                target=f"{name}.FreezerState",
            )

    # ---- move / stats -----------------------------------------------------------------------------

    async def move(self, path: GroupPath, pids: Sequence[int]) -> None:
        if not pids:
            return
        slice_unit, _obj, _props = await self._require(path)
        scope = naming.scope_name(self.options.root, path)
        props: list[tuple[str, Variant]] = [
            ("Description", Variant("s", f"{SCOPE_DESCRIPTION_PREFIX}{format_path(path)}")),
            ("Slice", Variant("s", slice_unit)),
            ("PIDs", Variant("au", [int(pid) for pid in pids])),
        ]
        await self._bus.start_transient_unit(scope, props, group=path)

    async def stats(self, paths: Iterable[GroupPath]) -> dict[GroupPath, GroupUsage]:
        async def control_group(path: GroupPath) -> str | None:
            name = self._unit(path)
            obj, unit_props = await self._unit_state(name)
            if obj is None or not self._alive(unit_props):
                return None
            return str(await self._bus.get_property(obj, SLICE_IFACE, "ControlGroup", unit=name)) or None

        wanted = list(dict.fromkeys(paths))
        found_groups = await asyncio.gather(*(control_group(path) for path in wanted))
        groups = {path: cg for path, cg in zip(wanted, found_groups, strict=True) if cg is not None}
        layout = self._cgroup_layout()

        def read() -> dict[GroupPath, GroupUsage]:
            out: dict[GroupPath, GroupUsage] = {}
            if layout.mode is CgroupMode.V2 and layout.unified is not None:
                found = usage.read_v2(layout.unified, groups.values(), limits=True)
            else:
                roots = {ctrl: h.mountpoint for ctrl, h in layout.by_controller.items()}
                found = usage.read_v1(roots, groups.values(), limits=True, unified=layout.unified)
            for path, control_group in groups.items():
                group_usage = found.get("/" + control_group.strip("/"))
                if group_usage is not None:
                    out[path] = group_usage
            return out

        return await asyncio.to_thread(read)

    async def close(self) -> None:
        await self._bus.close()
