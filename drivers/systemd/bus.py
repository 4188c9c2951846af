"""A thin asyncio client for systemd's Manager on the system bus (dbus-fast, low-level messages).

Why low-level ``Message`` calls and not introspected proxies: the signatures are fixed by systemd's
documented API (org.freedesktop.systemd1(5)), introspection costs a round trip per object, and proxies
guess value types where systemd demands exact ones.

What this layer guarantees:
- every call has a timeout (``asyncio.wait_for``); a call that times out raises DriverError;
- a dropped connection is re-established on the next call; calls that are safe to repeat are retried
  once on a fresh connection;
- a refusal by systemd becomes a DriverError naming the unit, the property when there is one, and
  systemd's error name and message (``org.freedesktop.DBus.Error.InvalidArgs: ...``);
- jobs (start/stop) are waited for until systemd reports them finished (``JobRemoved`` after
  ``Subscribe``), so a returned ``start_transient_unit`` means the unit is running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from drivers.api import DriverError, GroupPath

log = logging.getLogger(__name__)

DESTINATION = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SLICE_IFACE = "org.freedesktop.systemd1.Slice"
SCOPE_IFACE = "org.freedesktop.systemd1.Scope"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"

NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"

_JOB_MATCH = (
    f"type='signal',sender='{DESTINATION}',path='{MANAGER_PATH}',"
    f"interface='{MANAGER_IFACE}',member='JobRemoved'"
)
# Results of jobs that finished before anyone waited for them (systemd broadcasts every job; keep a few).
_RECENT_JOBS = 512


class BusCallError(DriverError):
    """systemd answered a call with an error; ``dbus_error`` is its D-Bus error name."""

    def __init__(self, message: str, *, dbus_error: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.dbus_error = dbus_error


class CallTimeoutError(DriverError):
    """systemd did not answer in time (the call may still take effect later)."""


class SystemdBus:
    """One connection to systemd, shared by every operation of a driver instance."""

    def __init__(self, *, timeout: float = 10.0, address: str | None = None) -> None:
        self.timeout = timeout
        self._address = address
        self._bus: MessageBus | None = None
        self._lock = asyncio.Lock()
        self._job_waiters: dict[str, asyncio.Future[str]] = {}
        self._job_results: collections.OrderedDict[str, str] = collections.OrderedDict()

    # ---- connection -------------------------------------------------------------------------------

    async def _connected(self) -> MessageBus:
        bus = self._bus
        if bus is not None and bus.connected:
            return bus
        async with self._lock:
            if self._bus is not None and self._bus.connected:
                return self._bus
            if self._bus is not None:
                log.warning("event=dbus_reconnect reason=connection_lost")
                self._drop()
            bus = (
                MessageBus(bus_address=self._address)
                if self._address
                else MessageBus(bus_type=BusType.SYSTEM)
            )
            try:
                await asyncio.wait_for(bus.connect(), self.timeout)
            except Exception as exc:  # OSError, auth failure, timeout: all mean no bus
                with contextlib.suppress(Exception):
                    bus.disconnect()
                raise DriverError(
                    "cannot connect to the system bus", target=self._address or "system bus", cause=repr(exc)
                ) from exc
            bus.add_message_handler(self._on_message)
            try:
                # Jobs are confirmed by JobRemoved; systemd only broadcasts it to subscribed clients.
                await self._raw_call(
                    bus,
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "AddMatch",
                    "s",
                    [_JOB_MATCH],
                    unit=None,
                )
                await self._raw_call(
                    bus, DESTINATION, MANAGER_PATH, MANAGER_IFACE, "Subscribe", "", [], unit=None
                )
            except Exception as exc:
                with contextlib.suppress(Exception):
                    bus.disconnect()
                if isinstance(exc, DriverError):
                    raise
                raise DriverError(
                    "system bus connection lost while subscribing to systemd",
                    target=self._address or "system bus",
                    cause=repr(exc),
                ) from exc
            self._bus = bus
            return bus

    def _drop(self) -> None:
        if self._bus is not None:
            with contextlib.suppress(Exception):
                self._bus.disconnect()
        self._bus = None
        for waiter in self._job_waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("system bus connection lost"))
        self._job_waiters.clear()

    async def close(self) -> None:
        self._drop()

    def _on_message(self, msg: Message) -> bool:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "JobRemoved"
            and msg.interface == MANAGER_IFACE
        ):
            _id, job, _unit, result = msg.body
            waiter = self._job_waiters.pop(job, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)
            else:
                self._job_results[job] = result
                while len(self._job_results) > _RECENT_JOBS:
                    self._job_results.popitem(last=False)
        return False

    # ---- calls ------------------------------------------------------------------------------------

    async def _raw_call(
        self,
        bus: MessageBus,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str,
        body: Sequence[Any],
        *,
        unit: str | None,
        prop: str | None = None,
        value: str | None = None,
        group: GroupPath | None = None,
        timeout: float | None = None,
    ) -> list[Any]:
        target = f"{unit}.{prop}" if unit and prop else unit or member
        timeout = self.timeout if timeout is None else timeout
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        try:
            reply = await asyncio.wait_for(bus.call(msg), timeout)
        except TimeoutError as exc:
            raise CallTimeoutError(
                f"systemd did not answer {member} within {timeout:g}s",
                group=group,
                target=target,
                value=value,
            ) from exc
        if reply is None:
            raise ConnectionError(f"no reply to {member}")
        if reply.message_type is MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            raise BusCallError(
                f"systemd refused {member}" + (f" of {unit}" if unit else ""),
                dbus_error=reply.error_name or "",
                group=group,
                target=target,
                value=value,
                cause=f"{reply.error_name}: {text}",
            )
        return list(reply.body)

    async def call(
        self,
        member: str,
        signature: str,
        body: Sequence[Any],
        *,
        unit: str | None,
        prop: str | None = None,
        value: str | None = None,
        group: GroupPath | None = None,
        path: str = MANAGER_PATH,
        interface: str = MANAGER_IFACE,
        retry: bool = True,
        timeout: float | None = None,
    ) -> list[Any]:
        """Call a method on systemd. ``retry``: the call may be repeated on a fresh connection if the
        old one dropped (true for reads and for calls whose repetition is harmless)."""
        for attempt in (1, 2):
            bus = await self._connected()
            try:
                return await self._raw_call(
                    bus,
                    DESTINATION,
                    path,
                    interface,
                    member,
                    signature,
                    body,
                    unit=unit,
                    prop=prop,
                    value=value,
                    group=group,
                    timeout=timeout,
                )
            except DriverError:
                raise
            except Exception as exc:  # connection-level failure (EOF, reset, disconnected bus)
                self._drop()
                if not retry or attempt == 2:
                    raise DriverError(
                        f"system bus connection lost during {member}",
                        group=group,
                        target=f"{unit}.{prop}" if unit and prop else unit,
                        value=value,
                        cause=repr(exc),
                    ) from exc
                log.warning("event=dbus_retry member=%s unit=%s error=%r", member, unit, exc)
        raise AssertionError("unreachable")

    # ---- Manager methods --------------------------------------------------------------------------

    async def version(self) -> str:
        (variant,) = await self.call(
            "Get", "ss", [MANAGER_IFACE, "Version"], unit=None, interface=PROPERTIES_IFACE
        )
        return str(variant.value)

    async def get_unit(self, name: str) -> str | None:
        """The unit's object path, or None when systemd has not loaded it."""
        try:
            (path,) = await self.call("GetUnit", "s", [name], unit=name)
        except BusCallError as exc:
            if exc.dbus_error == NO_SUCH_UNIT:
                return None
            raise
        return str(path)

    async def get_all(self, object_path: str, interface: str, *, unit: str) -> dict[str, Any]:
        """All properties of one interface, unwrapped from their Variants. A unit that vanished in the
        meantime answers UnknownObject: that is an empty dict."""
        try:
            (props,) = await self.call(
                "GetAll", "s", [interface], unit=unit, path=object_path, interface=PROPERTIES_IFACE
            )
        except BusCallError as exc:
            if exc.dbus_error in ("org.freedesktop.DBus.Error.UnknownObject", NO_SUCH_UNIT):
                return {}
            raise
        return {name: variant.value for name, variant in props.items()}

    async def get_property(self, object_path: str, interface: str, prop: str, *, unit: str) -> Any:
        (variant,) = await self.call(
            "Get", "ss", [interface, prop], unit=unit, prop=prop, path=object_path, interface=PROPERTIES_IFACE
        )
        return variant.value

    async def _wait_job(self, job: str, *, unit: str, what: str, group: GroupPath | None) -> None:
        result = self._job_results.pop(job, None)
        if result is None:
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._job_waiters[job] = waiter
            try:
                result = await asyncio.wait_for(waiter, self.timeout)
            except TimeoutError as exc:
                raise DriverError(
                    f"systemd did not finish the {what} job of {unit} within {self.timeout:g}s",
                    group=group,
                    target=unit,
                ) from exc
            except ConnectionError as exc:
                raise DriverError(
                    f"system bus connection lost while waiting for the {what} job of {unit}",
                    group=group,
                    target=unit,
                    cause=str(exc),
                ) from exc
            finally:
                self._job_waiters.pop(job, None)
        if result != "done":
            raise DriverError(
                f"systemd's {what} job for {unit} ended '{result}'",
                group=group,
                target=unit,
                cause=f"job result: {result}",
            )

    async def start_transient_unit(
        self,
        name: str,
        properties: Sequence[tuple[str, Variant]],
        *,
        group: GroupPath | None = None,
        mode: str = "fail",
    ) -> None:
        props = [[prop, variant] for prop, variant in properties]
        described = ", ".join(f"{prop}={variant.value!r}" for prop, variant in properties)
        (job,) = await self.call(
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            [name, mode, props, []],
            unit=name,
            value=described or None,
            group=group,
            retry=False,
        )
        await self._wait_job(str(job), unit=name, what="start", group=group)

    async def stop_unit(self, name: str, *, group: GroupPath | None = None, mode: str = "fail") -> None:
        (job,) = await self.call("StopUnit", "ss", [name, mode], unit=name, group=group)
        await self._wait_job(str(job), unit=name, what="stop", group=group)

    async def set_unit_properties(
        self,
        name: str,
        properties: Sequence[tuple[str, Variant]],
        *,
        runtime: bool,
        group: GroupPath | None = None,
    ) -> None:
        """Set properties in one call. systemd checks all of them before applying any (two passes in
        ``bus_unit_set_properties``), so a refused one leaves the unit as it was."""
        props = [[prop, variant] for prop, variant in properties]
        names = "/".join(prop for prop, _ in properties)
        described = ", ".join(f"{prop}={variant.value!r}" for prop, variant in properties)
        await self.call(
            "SetUnitProperties",
            "sba(sv)",
            [name, runtime, props],
            unit=name,
            prop=names,
            value=described,
            group=group,
        )

    async def freeze_unit(
        self, name: str, *, group: GroupPath | None = None, timeout: float | None = None
    ) -> None:
        """systemd replies once the kernel reported the cgroup frozen (or at once if it already was)."""
        await self.call("FreezeUnit", "s", [name], unit=name, group=group, timeout=timeout)

    async def thaw_unit(
        self, name: str, *, group: GroupPath | None = None, timeout: float | None = None
    ) -> None:
        await self.call("ThawUnit", "s", [name], unit=name, group=group, timeout=timeout)

    async def get_unit_processes(
        self, name: str, *, group: GroupPath | None = None
    ) -> list[tuple[str, int, str]]:
        """(cgroup path, pid, command line) of every process in the unit and its children."""
        (processes,) = await self.call("GetUnitProcesses", "s", [name], unit=name, group=group)
        return [(str(cg), int(pid), str(cmd)) for cg, pid, cmd in processes]
