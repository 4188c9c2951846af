"""A real systemd (tests/vm/run --systemd) turns unit properties set over D-Bus into cgroup v2 files.

A transient slice with CPU, memory and tasks limits and a transient service inside it are created with
dbus-fast over the system bus; the kernel's files of the slice's cgroup are read back; both units are
stopped at the end (also on failure) and their cgroups disappear.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

pytestmark = pytest.mark.systemd

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
CGROUP_MOUNT = Path("/sys/fs/cgroup")
CALL_TIMEOUT_S = 60


class Systemd:
    """The few Manager calls this test needs, over one system bus connection."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def call(
        self,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        path: str = MANAGER_PATH,
        interface: str = MANAGER,
    ) -> list[Any]:
        message = Message(
            destination=SYSTEMD,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        # Bounded: a systemd that stops answering must fail the test, not hang the VM until its timeout.
        reply = await asyncio.wait_for(self.bus.call(message), CALL_TIMEOUT_S)
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}: {reply.body}")
        return list(reply.body)

    async def start_transient(self, name: str, properties: list[list[Any]]) -> None:
        await self.call("StartTransientUnit", "ssa(sv)a(sa(sv))", [name, "fail", properties, []])

    async def unit_property(self, name: str, interface: str, prop: str) -> Any:
        [path] = await self.call("GetUnit", "s", [name])
        [value] = await self.call(
            "Get", "ss", [interface, prop], path=path, interface="org.freedesktop.DBus.Properties"
        )
        return value.value

    async def wait_active(self, name: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while (
            state := await self.unit_property(name, "org.freedesktop.systemd1.Unit", "ActiveState")
        ) != "active":
            assert state not in ("failed", "inactive") or time.monotonic() < deadline, f"{name} is {state}"
            assert time.monotonic() < deadline, f"{name} still {state} after {timeout_s} s"
            await asyncio.sleep(0.1)

    async def stop(self, name: str) -> None:
        try:
            await self.call("StopUnit", "ss", [name, "replace"])
        except RuntimeError as error:
            if "NoSuchUnit" not in str(error):
                raise


@pytest.fixture
async def systemd() -> AsyncIterator[Systemd]:
    bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(), CALL_TIMEOUT_S)
    try:
        yield Systemd(bus)
    finally:
        bus.disconnect()


async def wait_gone(path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while path.exists():
        assert time.monotonic() < deadline, f"{path} still exists {timeout_s} s after the stop"
        await asyncio.sleep(0.1)


async def test_transient_slice_properties_become_cgroup_files(systemd: Systemd, unique_name: str) -> None:
    # A dash in a slice name means nesting (a-b.slice lives in a.slice): keep the test slice top-level.
    slice_name = unique_name.replace("-", "_") + ".slice"
    service_name = unique_name + ".service"
    group: Path | None = None
    try:
        await systemd.start_transient(
            slice_name,
            [
                ["Description", Variant("s", "cgctl environment test slice")],
                ["CPUQuotaPerSecUSec", Variant("t", 300_000)],
                ["MemoryMax", Variant("t", 128 << 20)],
                ["TasksMax", Variant("t", 20)],
            ],
        )
        await systemd.start_transient(
            service_name,
            [
                ["Description", Variant("s", "cgctl environment test sleeper")],
                ["Slice", Variant("s", slice_name)],
                ["ExecStart", Variant("a(sasb)", [["/bin/sleep", ["/bin/sleep", "600"], False]])],
            ],
        )
        await systemd.wait_active(service_name)
        cgroup = await systemd.unit_property(slice_name, "org.freedesktop.systemd1.Slice", "ControlGroup")
        group = CGROUP_MOUNT / cgroup.lstrip("/")

        assert (group / "cpu.max").read_text().split() == ["30000", "100000"]
        assert (group / "memory.max").read_text().strip() == str(128 << 20)
        assert (group / "pids.max").read_text().strip() == "20"
        service_cgroup = await systemd.unit_property(
            service_name, "org.freedesktop.systemd1.Service", "ControlGroup"
        )
        assert Path(service_cgroup).parent == Path(cgroup)
        assert (CGROUP_MOUNT / service_cgroup.lstrip("/") / "cgroup.procs").read_text().split()
    finally:
        await systemd.stop(service_name)
        await systemd.stop(slice_name)

    assert group is not None
    await wait_gone(group)
