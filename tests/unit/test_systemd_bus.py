"""The D-Bus client's failure modes that need no systemd: no bus at all, and a peer that never answers
(a fake: a unix socket that accepts and stays silent, standing in for a hung dbus-daemon)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from drivers.api import DriverError
from drivers.systemd.bus import SystemdBus


async def test_a_missing_bus_is_a_driver_error(tmp_path: Path) -> None:
    address = f"unix:path={tmp_path}/nothing-here"
    bus = SystemdBus(timeout=2, address=address)
    with pytest.raises(DriverError, match="cannot connect to the system bus") as info:
        await bus.version()
    assert info.value.target == address
    await bus.close()


async def test_a_silent_fake_bus_times_out_instead_of_hanging(tmp_path: Path) -> None:
    path = str(tmp_path / "silent")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    bus = SystemdBus(timeout=0.3, address=f"unix:path={path}")
    started = time.monotonic()
    try:
        with pytest.raises(DriverError):
            await asyncio.wait_for(bus.get_unit("cgctl.slice"), 5)
    finally:
        await bus.close()
        server.close()
    assert time.monotonic() - started < 3
