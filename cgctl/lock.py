"""One writer at a time: an flock under /run/cgctl/ serializes applies, freezes, thaws and prunes.

The lock is advisory and tied to the open file, so a crashed cgctl never leaves it held. The holder
writes its pid into the file so a waiting command can say who it is waiting for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

DEFAULT_RUN_DIR = "/run/cgctl"


def run_dir() -> str:
    return os.environ.get("CGCTL_RUN_DIR", DEFAULT_RUN_DIR)


class LockBusyError(Exception):
    pass


@contextlib.contextmanager
def writer_lock(timeout: float = 30.0) -> Iterator[None]:
    os.makedirs(run_dir(), mode=0o755, exist_ok=True)
    path = os.path.join(run_dir(), "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise LockBusyError(
                        f"another cgctl (pid {holder}) holds {path}; waited {timeout:.0f}s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
