#!/usr/bin/env python3
"""Experiment behind a design option for #3: does the kernel overlap group creation with limit writes?

Creates N cgroup v1 groups the way ``bench_apply.py``'s raw script does (a directory in each of the 7
hierarchies, then the same 4 limit files), twice, alternating, median of R rounds:

* sequentially, as cgctl and the raw script do today;
* pipelined: one thread makes the directories, a second writes each group's limits once its
  directories exist (the same syscalls, in the same order per group).

mkdir and rmdir serialise on the kernel's cgroup_mutex, but most limit writes take other locks, so on a
machine with 2+ CPUs the second thread's writes can run while the first is in mkdir. The figure this
prints is the most a pipelined executor in cgctl could gain on its kernel time; cgctl's Python would
also have to overlap for the whole gain. Prints figures only; creates groups only under its own unique
``cgctl-bench-<hex>`` roots and removes them.

Usage (as root, on a v1/hybrid host): .venv/bin/python bench/bench_pipelined_writes.py [N] [ROUNDS]
"""

from __future__ import annotations

import os
import queue
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import kernel

HIERARCHIES = kernel.V1_HIERARCHIES  # the 7 cgctl creates a group in on this host
LIMITS = (
    ("cpu", "cpu.shares", "2048"),
    ("cpu", "cpu.cfs_quota_us", "50000"),
    ("memory", "memory.limit_in_bytes", str(64 << 20)),
    ("pids", "pids.max", "50"),
)


def put(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def prepare(root: str) -> None:
    """The root in every hierarchy, its cpuset ready for children to clone (as cgctl prepares it)."""
    for hierarchy in HIERARCHIES:
        os.mkdir(f"/sys/fs/cgroup/{hierarchy}/{root}")
    cpuset = f"/sys/fs/cgroup/cpuset/{root}"
    for file in ("cpuset.cpus", "cpuset.mems"):
        put(f"{cpuset}/{file}", Path(f"/sys/fs/cgroup/cpuset/{file}").read_text().strip())
    put(f"{cpuset}/cgroup.clone_children", "1")


def make_group(root: str, index: int) -> None:
    for hierarchy in HIERARCHIES:
        os.mkdir(f"/sys/fs/cgroup/{hierarchy}/{root}/g{index}")


def write_limits(root: str, index: int) -> None:
    for hierarchy, file, value in LIMITS:
        put(f"/sys/fs/cgroup/{hierarchy}/{root}/g{index}/{file}", value)


def sequential(root: str, n: int) -> None:
    prepare(root)
    for index in range(n):
        make_group(root, index)
        write_limits(root, index)


def pipelined(root: str, n: int) -> None:
    prepare(root)
    made: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            while (index := made.get()) is not None:
                write_limits(root, index)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for index in range(n):
            make_group(root, index)
            made.put(index)
    finally:
        made.put(None)
        thread.join()
    if failures:
        raise failures[0]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    if kernel.is_pure_v2():
        raise SystemExit("this experiment uses the v1 hierarchies")
    ways: dict[str, Callable[[str, int], None]] = {"sequential": sequential, "pipelined": pipelined}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(rounds):
        order = list(ways.items()) if round_ % 2 == 0 else list(reversed(ways.items()))
        for name, way in order:
            root = f"cgctl-bench-{uuid.uuid4().hex[:8]}"
            try:
                start = time.perf_counter()
                way(root, n)
                times[name].append(time.perf_counter() - start)
            finally:
                kernel.remove_tree(root)
    shape = f"{n} v1 groups x {len(HIERARCHIES)} hierarchies + {len(LIMITS)} limits"
    print(f"# {shape}, {rounds} rounds, {os.cpu_count()} CPUs")
    for name, samples in times.items():
        print(f"{name:>10}: median {statistics.median(samples):.3f} s, min {min(samples):.3f} s")
    ratio = statistics.median(times["pipelined"]) / statistics.median(times["sequential"])
    print(f"pipelined / sequential (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
