"""The processes the kernel tests start and how they watch them, shared by the host suite (cgroup
v1/hybrid) and the pure-v2 suite: ``Children`` (one a test, from the ``children`` fixture in
tests/conftest.py) starts them, already inside the test's groups if it likes, and kills them at teardown;
the workloads they run; the go-line handshake; a process's CPU time; waiting for the kernel to confirm a
state. The kernel's cgroup files are read with tests/kernel.py.

A workload that a test moves into a group after starting it waits for one line on its stdin before it does
anything (``after_go``): ``go(proc)`` sends that line once the process is where the test wants it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _join_cgroups(cgroups: Sequence[Path]) -> Callable[[], None]:
    """A preexec function moving the child into each group before it execs (so all its forks are in)."""
    targets = [str(cgroup / "cgroup.procs") for cgroup in cgroups]

    def join() -> None:
        for target in targets:
            with open(target, "w") as handle:
                handle.write("0")

    return join


class Children:
    """Processes a test starts; each is killed (and reaped) at teardown, whatever the outcome: one started
    in a session of its own is killed with its process group, i.e. with the processes it forked."""

    def __init__(self, before_kill: Callable[[int], None] = lambda pid: None) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.before_kill = before_kill  # called with each live child's pid

    def start(
        self, argv: Sequence[str], *, cgroups: Sequence[Path] = (), **popen: Any
    ) -> subprocess.Popen[bytes]:
        """Start ``argv``, already inside ``cgroups`` (v2: one group; v1: one per hierarchy)."""
        process: subprocess.Popen[bytes] = subprocess.Popen(
            list(argv), preexec_fn=_join_cgroups(cgroups) if cgroups else None, **popen
        )
        self.processes.append(process)
        return process

    def python(self, code: str, *, cgroups: Sequence[Path] = ()) -> subprocess.Popen[bytes]:
        """``python -c code`` (the workloads below) with pipes to its stdin and from its stdout, in a
        session of its own: its forks share its process group, which teardown kills."""
        return self.start(
            [sys.executable, "-c", code],
            cgroups=cgroups,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )

    def busy_loop(self, *, cgroups: Sequence[Path] = ()) -> subprocess.Popen[bytes]:
        """A shell spinning on the CPU forever."""
        return self.start(SHELL_SPIN, cgroups=cgroups)

    def sleeper(self, *, cgroups: Sequence[Path] = ()) -> subprocess.Popen[bytes]:
        return self.start(["sleep", "3600"], cgroups=cgroups)

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:  # alive, unreaped: its pid (and a process group it leads) is ours
                self.before_kill(process.pid)
                if os.getpgid(process.pid) == process.pid:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print(f"tests/procs.py: child {process.pid} did not exit after SIGKILL", file=sys.stderr)


# A shell, not Python: it starts at once even under TCG.
SHELL_SPIN = ("/bin/sh", "-c", "while :; do :; done")


def after_go(code: str = "") -> str:
    """Python code that waits for the line ``go()`` sends, then runs ``code``."""
    return "import sys\nsys.stdin.readline()\n" + code


IDLE = after_go()  # waits for a line (or its stdin's end), then exits
SPIN = after_go("while True: pass\n")

# Killed by the memory controller before it prints (bytearray fills the block, so every page is touched).
ALLOCATE_200M = """
block = bytearray(200 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
print("survived")
"""

# Prints how many forks succeeded before one was refused (at most 10), then exits.
FORK_UNTIL_REFUSED = """
import os, time
forked = 0
for _ in range(10):
    try:
        pid = os.fork()
    except BlockingIOError:
        break
    if pid == 0:
        os.close(1)  # so the test sees end-of-output as soon as the parent is done
        time.sleep(60)
        os._exit(0)
    forked += 1
print(forked, flush=True)
"""


def settled_usage(cpu_seconds: float, mib: int, io: str = "") -> str:
    """A workload for usage readings: after go, it spins for ``cpu_seconds`` of CPU time, touches ``mib``
    MiB, runs the ``io`` code, prints ``ready`` (see ``go_until_ready``) and stays, so that its usage
    does not change while the test reads it."""
    return after_go(
        "import time\n"
        f"end = time.process_time() + {cpu_seconds}\n"
        "while time.process_time() < end:\n    pass\n"
        f"block = bytearray({mib} << 20)\n"
        "for i in range(0, len(block), 4096):\n    block[i] = 1\n"
        f"{io}\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )


def go(proc: subprocess.Popen[bytes]) -> None:
    """Let a workload started with ``after_go`` code run."""
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def go_until_ready(proc: subprocess.Popen[bytes]) -> None:
    """``go()``, then wait for the workload to print ``ready`` (its work done, its usage now stable)."""
    go(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"ready", f"the workload said {line!r}, exit status {proc.poll()}"


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_until(
    condition: Callable[[], bool], timeout: float, failure: str | Callable[[], str], interval: float = 0.02
) -> None:
    """Poll ``condition`` until it holds; after ``timeout`` seconds fail with ``failure`` (called then, if it
    is a function: say what the kernel shows)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(failure() if callable(failure) else failure)
        time.sleep(interval)
