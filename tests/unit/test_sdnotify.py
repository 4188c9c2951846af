"""sd_notify over real AF_UNIX datagram sockets (path and abstract), as systemd receives it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from cgctl.sdnotify import Notifier


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_ready_and_status_reach_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _receiver(path) as rx:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.notify(READY=1, STATUS="reconciled 3 groups")
        assert rx.recv(4096) == b"READY=1\nSTATUS=reconciled 3 groups"
        n.close()


def test_abstract_socket_and_watchdog_interval() -> None:
    name = f"cgctl-test-{os.getpid()}"
    with _receiver(b"\0" + name.encode()) as rx:
        n = Notifier(
            {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
        )
        assert n.watchdog_interval == 10.0
        assert n.notify(WATCHDOG=1)
        assert rx.recv(4096) == b"WATCHDOG=1"
        n.close()


def test_without_systemd_nothing_is_sent_and_watchdog_for_other_pid_is_ignored() -> None:
    n = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert not n.enabled and not n.notify(READY=1)
    assert n.watchdog_interval is None


def test_a_receiver_that_stops_reading_never_blocks_the_sender(tmp_path: Path) -> None:
    """A full queue (net.unix.max_dgram_qlen, 10 by default) must not stop the agent's event loop: each
    send gives up after its patience and the message is counted as dropped."""
    path = str(tmp_path / "notify")
    with _receiver(path) as rx:
        n = Notifier({"NOTIFY_SOCKET": path}, patience=0.05)
        started = time.monotonic()
        sent = [
            n.notify(WATCHDOG=1)
            for _ in range(int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text()) + 5)
        ]
        assert time.monotonic() - started < 2.0
        assert sent[0] and not sent[-1] and n.dropped >= 1
        assert rx.recv(4096) == b"WATCHDOG=1"  # room again: the next message goes through
        assert n.notify(STOPPING=1)
        n.close()
