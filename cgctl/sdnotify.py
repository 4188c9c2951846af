"""sd_notify(3) without a compiled dependency: a datagram to ``$NOTIFY_SOCKET``.

The protocol is a few ``KEY=value`` lines in one datagram; a socket path starting with ``@`` is an
abstract socket. deps.md §7: pystemd/systemd-python send the same bytes but need gcc and libsystemd-dev.

A send never blocks for long: the agent notifies from its event loop, and a receiver that stops reading
(a hung manager, a test that read only READY=1) fills its queue after ``net.unix.max_dgram_qlen``
datagrams (10 by default); a blocking sendto() then stopped the whole agent — control requests went
unanswered and SIGTERM was never handled (seen in the v2 VM suite). A message that finds no room within
``patience`` seconds is dropped and counted; a lost WATCHDOG=1 is followed by the next one at half the
timeout.
"""

from __future__ import annotations

import os
import socket
import time

SEND_PATIENCE = 0.1  # seconds one message may wait for room in the receiver's queue


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None, patience: float = SEND_PATIENCE) -> None:
        env = os.environ if environ is None else environ
        self.patience = patience
        self.dropped = 0  # messages given up because the receiver's queue stayed full
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_usec = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec else None

    def notify(self, **fields: str | int) -> bool:
        """``notify(READY=1, STATUS="...")``. Returns False when not run by systemd, on error, or when the
        message was dropped (the receiver's queue stayed full for ``patience`` seconds)."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        deadline = time.monotonic() + self.patience
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            while True:
                try:
                    self._sock.sendto(message, socket.MSG_DONTWAIT, self._address)
                    return True
                except BlockingIOError:  # the receiver's queue is full
                    if time.monotonic() >= deadline:
                        self.dropped += 1
                        return False
                    time.sleep(0.005)
        except OSError:
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
