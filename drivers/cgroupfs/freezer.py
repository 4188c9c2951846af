"""Freeze and thaw, confirmed by the kernel, never by busy-polling.

v2 (kernel cgroup-v2.rst "cgroup.freeze"): writing ``cgroup.freeze`` only records the request; the
kernel reports completion as ``frozen 1`` in ``cgroup.events`` and wakes pollers with POLLPRI. The
events file is opened and read *before* the write (a read re-arms the notification), so a completion
between the write and poll() is never missed. ``frozen`` is the effective state: a group frozen by an
ancestor reads ``frozen 1`` too. The kernel rate-limits these notifications (``cgroup_file_notify``:
at most one per ~10 ms, later ones deferred by a timer), so poll() also has a timeout, 250 µs doubling
to 10 ms, after which the file is re-read: a sleep either way, never a busy loop.

v1 (``freezer-subsystem.rst``): ``freezer.state`` goes FREEZING → FROZEN with no notification, so the
wait sleeps between reads: every 100 µs for the first 2 ms (where a freeze normally completes: 1.6 ms
measured with 100 busy tasks), then doubling to 10 ms. Busy-polling would steal the CPU the tasks need
to reach the freezer (measured 4.7–5.9 ms against 0.9–1.6 ms); pure doubling from the start overshoots
a 1.6 ms freeze to 3.1 ms. A state stuck in FREEZING (tasks forking or in
D state) gets FROZEN re-written every 50 ms, as runc does.

On timeout a freeze is reverted (thawed) so nothing is left half-frozen (runc#2774, runc#5325), and
FreezeTimeoutError is raised.
"""

from __future__ import annotations

import os
import select
import time

from drivers.api import FreezeTimeoutError
from drivers.cgroupfs.common import parse_flat_keyed
from drivers.cgroupfs.safefs import GroupDir, error

V2_FIRST_RECHECK = 250e-6
V2_MAX_RECHECK = 0.01
V1_FIRST_SLEEP = 100e-6
V1_FAST_PHASE = 0.002  # keep the first sleep this long before backing off
V1_MAX_SLEEP = 0.01
V1_REWRITE_EVERY = 0.05


def _read_fd(gd: GroupDir, fd: int, name: str) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 4096).decode()
    except OSError as exc:
        raise error("read", gd.path_of(name), exc, group=gd.group) from None


def set_frozen_v2(gd: GroupDir, frozen: bool, timeout: float, ancestor_frozen: bool = False) -> float:
    """Write cgroup.freeze and wait for cgroup.events to agree. Returns the seconds from the end of the
    write to the confirmation. A thaw under a frozen ancestor returns at once (it cannot take effect)."""
    want = "1" if frozen else "0"
    events = gd.open("cgroup.events", os.O_RDONLY)
    try:
        _read_fd(gd, events, "cgroup.events")  # arm the notification before the request
        gd.write("cgroup.freeze", want)
        start = time.monotonic()
        if not frozen and ancestor_frozen:
            return 0.0
        deadline = start + timeout
        poller = select.poll()
        poller.register(events, select.POLLPRI | select.POLLERR)
        recheck = V2_FIRST_RECHECK
        while True:
            if parse_flat_keyed(_read_fd(gd, events, "cgroup.events")).get("frozen") == want:
                return time.monotonic() - start
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # sleep until the kernel notifies, but re-read after a bounded wait too: the kernel
            # rate-limits cgroup.events notifications (one per ~10 ms), so a completion right after
            # another event (the request itself, a populated change) is announced late
            poller.poll(max(0, min(remaining, recheck)) * 1000)
            recheck = min(recheck * 2, V2_MAX_RECHECK)
    finally:
        os.close(events)
    if frozen:
        gd.write("cgroup.freeze", "0")
    verb = "freeze" if frozen else "thaw"
    raise FreezeTimeoutError(
        f"the kernel did not confirm the {verb} of {gd.display} within {timeout:g}s"
        + ("; the freeze request was reverted (thawed)" if frozen else ""),
        group=gd.group,
        target=gd.path_of("cgroup.events"),
        value=want,
    )


def set_frozen_v1(gd: GroupDir, frozen: bool, timeout: float) -> float:
    """Write freezer.state and sleep-poll it until the kernel reports the state. Returns the seconds from
    the end of the first write to the confirmation."""
    want = "FROZEN" if frozen else "THAWED"
    gd.write("freezer.state", want)
    start = last_write = time.monotonic()
    deadline = start + timeout
    delay = V1_FIRST_SLEEP
    state = gd.read("freezer.state").strip()
    while state != want:
        if not frozen and gd.read("freezer.parent_freezing").strip() == "1":
            return 0.0  # thawed itself; an ancestor still holds it frozen
        now = time.monotonic()
        if now >= deadline:
            if frozen:
                gd.write("freezer.state", "THAWED")
            verb = "freeze" if frozen else "thaw"
            raise FreezeTimeoutError(
                f"the kernel did not confirm the {verb} of {gd.display} within {timeout:g}s (state {state})"
                + ("; the freeze request was reverted (thawed)" if frozen else ""),
                group=gd.group,
                target=gd.path_of("freezer.state"),
                value=want,
            )
        if frozen and now - last_write >= V1_REWRITE_EVERY:
            gd.write("freezer.state", want)
            last_write = now
        time.sleep(min(delay, max(0.0, deadline - now)))
        if now - start >= V1_FAST_PHASE:
            delay = min(delay * 2, V1_MAX_SLEEP)
        state = gd.read("freezer.state").strip()
    return time.monotonic() - start
