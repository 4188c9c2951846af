#!/usr/bin/env python3
"""Benchmark: a /metrics scrape of N groups over HTTP against the raw read floor, in one run.

For each size it creates N empty groups under a unique root (v1: the cpu, cpuacct, memory and pids
hierarchies; v2: one root with those controllers enabled), starts two agent processes that serve them
(``exporters.server`` + ``drivers.cgroupfs.usage``): one collecting on every scrape
(``SnapshotCache(min_interval=0)``), one serving the snapshot it collected first (the cache-hit path),
and alternates R rounds of

  (a) the raw read floor: plain ``os.open``/``os.read``/``os.close`` of exactly the files the agent reads,
  (b) one scrape of each agent with ``curl`` sending Prometheus's Accept and Accept-Encoding headers
      (OpenMetrics + gzip),

while the agents measure (c) the longest event-loop stall (a 5 ms ticker's lag) during each scrape and
report (d) their RSS. With ``--compare-cgroups-exporter`` each round also times PyPI's cgroups-exporter
on the same groups: one scrape of it (it serves what its background collector stored), and one pass of
its own collector (``Collector.callback()``, run in-process in a helper under its interpreter), so the
two exporters are compared in two modes: collecting per scrape, and serving the last collection.
Prints medians and ratios; always removes its groups, also on failure or Ctrl-C.

Usage (as root): .venv/bin/python bench/bench_scrape.py [--sizes 1000,5000] [--rounds 7] [--limits]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from drivers.cgroupfs import usage  # noqa: E402

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
V2_CONTROLLERS = ("cpu", "memory", "io", "pids")
V2_MOUNT = "/sys/fs/cgroup"


# --------------------------------------------------------------------------------------------------
# Layout and groups
# --------------------------------------------------------------------------------------------------


def detect_layout(mode: str) -> dict[str, object]:
    hierarchies = usage.v1_hierarchies()
    v1_ok = all(c in hierarchies for c in V1_CONTROLLERS)
    try:
        with open(f"{V2_MOUNT}/cgroup.controllers") as handle:
            v2_ok = all(c in handle.read().split() for c in V2_CONTROLLERS)
    except OSError:
        v2_ok = False
    if mode == "v2" or (mode == "auto" and v2_ok and not v1_ok):
        if not v2_ok:
            raise SystemExit("no cgroup v2 hierarchy with cpu, memory, io and pids")
        return {"mode": "v2", "mount": V2_MOUNT}
    if not v1_ok:
        raise SystemExit("no v1 hierarchies for " + ", ".join(V1_CONTROLLERS))
    return {"mode": "v1", "hierarchies": {c: hierarchies[c] for c in V1_CONTROLLERS}}


def group_paths(root: str, count: int) -> list[str]:
    return [f"{root}/g{i:05d}" for i in range(count)]


def _bases(layout: dict[str, object]) -> list[str]:
    if layout["mode"] == "v2":
        return [str(layout["mount"])]
    hierarchies = layout["hierarchies"]
    assert isinstance(hierarchies, dict)
    return [str(h) for h in hierarchies.values()]


def create_groups(layout: dict[str, object], root: str, count: int, created: list[str]) -> None:
    """mkdir the root and its N children in every hierarchy; ``created`` records each for cleanup."""
    for base in _bases(layout):
        os.mkdir(base + root)
        created.append(base + root)
        if layout["mode"] == "v2":
            with open(f"{base}/cgroup.subtree_control", "w") as handle:
                handle.write(" ".join("+" + c for c in V2_CONTROLLERS))
            with open(f"{base}{root}/cgroup.subtree_control", "w") as handle:
                handle.write(" ".join("+" + c for c in V2_CONTROLLERS))
        for path in group_paths(root, count):
            os.mkdir(base + path)
            created.append(base + path)


def remove_groups(created: list[str]) -> int:
    """rmdir in reverse creation order (children first); returns how many could not be removed."""
    failures = 0
    while created:
        directory = created.pop()
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as err:
            failures += 1
            print(f"warning: could not remove {directory}: {err}", file=sys.stderr)
    return failures


def floor_files(layout: dict[str, object], paths: Sequence[str], limits: bool) -> list[str]:
    if layout["mode"] == "v2":
        return usage.file_paths_v2(str(layout["mount"]), paths, limits=limits)
    hierarchies = layout["hierarchies"]
    assert isinstance(hierarchies, dict)
    return usage.file_paths_v1(hierarchies, paths, limits=limits)


def read_floor(files: Sequence[str]) -> float:
    """The raw floor: open/read/close every file, no parsing. Returns seconds."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    started = time.perf_counter()
    for path in files:
        try:
            fd = os.open(path, flags)
        except OSError:
            continue
        try:
            os.read(fd, 16384)
        except OSError:
            pass
        finally:
            os.close(fd)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------
# The agent process
# --------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


async def serve(
    layout: dict[str, object], root: str, count: int, limits: bool, freeze_gc: bool, min_interval: float
) -> None:
    from exporters.collector import AgentMetrics, Snapshot
    from exporters.server import MetricsServer, SnapshotCache

    paths = group_paths(root, count)
    names = {path: path.rsplit("/", 1)[1] for path in paths}
    agent = AgentMetrics("bench", "cgroupfs", str(layout["mode"]))

    def read() -> Snapshot:
        if layout["mode"] == "v2":
            result = usage.read_v2(str(layout["mount"]), paths, limits=limits)
        else:
            hierarchies = layout["hierarchies"]
            assert isinstance(hierarchies, dict)
            result = usage.read_v1(hierarchies, paths, limits=limits)
        return Snapshot(usage=result, names=names)

    async def collect() -> Snapshot:
        return await asyncio.to_thread(read)

    max_lag = 0.0
    max_gc = 0.0
    gc_started = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        # The cyclic GC runs with the GIL held, so its pauses stall the event loop too: report them.
        nonlocal max_gc, gc_started
        if phase == "start":
            gc_started = time.perf_counter()
        else:
            max_gc = max(max_gc, time.perf_counter() - gc_started)

    gc.callbacks.append(on_gc)
    if freeze_gc:
        gc.freeze()  # what an agent can do after start-up: its long-lived objects leave the GC's scans

    async def ticker() -> None:
        nonlocal max_lag
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            max_lag = max(max_lag, loop.time() - before - 0.005)

    def health() -> tuple[bool, str]:
        nonlocal max_lag, max_gc
        detail = json.dumps(
            {
                "max_lag_s": max_lag,
                "max_gc_s": max_gc,
                "rss_kb": _status_kb("VmRSS"),
                "hwm_kb": _status_kb("VmHWM"),
            }
        )
        max_lag = max_gc = 0.0
        return True, detail

    cache = SnapshotCache(collect, agent, min_interval=min_interval)
    server = MetricsServer(cache, agent, health=health)
    await server.start()
    tick = asyncio.ensure_future(ticker())
    print(f"PORT {server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGUSR1 stops the ticker: its 200 wake-ups a second would dominate an idle-CPU measurement.
    loop.add_signal_handler(signal.SIGUSR1, tick.cancel)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent closing our stdin also stops us
    await stop.wait()
    tick.cancel()
    await server.close()


# --------------------------------------------------------------------------------------------------
# The driver side
# --------------------------------------------------------------------------------------------------


def _curl(url: str, out: str, *headers: str) -> float:
    args = ["curl", "-s", "-o", out, "-w", "%{time_total}", "--max-time", "60"]
    for header in headers:
        args += ["-H", header]
    result = subprocess.run([*args, url], capture_output=True, text=True, check=True)
    return float(result.stdout)


def _health(port: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile() as body:
        _curl(f"http://127.0.0.1:{port}/healthz", body.name)
        data: dict[str, float] = json.loads(Path(body.name).read_text())
    return data


def _body_samples(path: str) -> tuple[list[str], int]:
    """A gzip-encoded scrape body's sample lines, and its uncompressed size."""
    text = gzip.decompress(Path(path).read_bytes()).decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")], len(text)


def _collect_totals(samples: list[str]) -> tuple[float, float]:
    """cgctl_collect_duration_seconds sum and count from a scrape's samples."""
    total = count = 0.0
    for line in samples:
        if line.startswith("cgctl_collect_duration_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("cgctl_collect_duration_seconds_count"):
            count = float(line.split()[-1])
    return total, count


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pid: int, url: str, seconds: float, interval: float = 15.0) -> float:
    """The agent's CPU use (share of one core) while scraped every ``interval`` s, as Prometheus would."""
    os.kill(pid, signal.SIGUSR1)  # the agent stops its lag ticker (our own child process)
    with tempfile.NamedTemporaryFile() as body:
        started, cpu_before = time.monotonic(), _cpu_seconds(pid)
        while time.monotonic() - started < seconds:
            tick = time.monotonic()
            _curl(url, body.name, f"Accept: {PROMETHEUS_ACCEPT}", "Accept-Encoding: gzip")
            time.sleep(max(0.0, interval - (time.monotonic() - tick)))
        return (_cpu_seconds(pid) - cpu_before) / (time.monotonic() - started)


def _promtool_ok(text: str) -> bool | None:
    """``promtool check metrics`` accepts the text (exit 0), or None when promtool is missing."""
    try:
        result = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
    except FileNotFoundError:
        return None
    return result.returncode == 0


def _body_text(path: str) -> str:
    data = Path(path).read_bytes()
    return gzip.decompress(data).decode() if data[:2] == b"\x1f\x8b" else data.decode()


# Runs under cgroups-exporter's own interpreter: one pass of its own collector per line on stdin, timed.
# It is the pass its PeriodicService runs every --collector-interval seconds, with the CLI's defaults
# (4 collector workers, a pool of 4 threads: cgroups_exporter/args.py), in a process of its own.
_CGX_COLLECT_PASS = """
import sys, time
from aiomisc import entrypoint
from cgroups_exporter.services.collector import Collector

async def main():
    collector = Collector(interval=3600, delay=0, cgroup_paths=sys.argv[1:], max_workers=4)
    for _ in sys.stdin:
        started = time.perf_counter()
        await collector.callback()
        print(time.perf_counter() - started, flush=True)

with entrypoint(pool_size=4, log_level="error") as loop:
    loop.run_until_complete(main())
"""


def _interpreter(script: str) -> str:
    """The Python a console script runs under (its ``#!`` line), i.e. its own virtualenv's."""
    with open(script, "rb") as handle:
        first = handle.readline().decode().strip()
    if first.startswith("#!") and "python" in first:
        return first[2:].split()[0]
    return str(Path(script).parent / "python")


class CgroupsExporter:
    """PyPI's cgroups-exporter (0.8.8) on the same groups, plus a helper timing its collection pass.

    cgroups-exporter collects in a background ``PeriodicService`` (every ``--collector-interval``
    seconds, an integer, default 15) into a global store, and a scrape only writes that store out (text
    0.0.4, one chunked write per line, gzip when asked). No option puts collection in the scrape path,
    so its "collect per scrape" cost is its collection pass (timed by the helper) plus its scrape.

    Its collector finds a group's controller by the path ("memory", "pids", "cpu,cpuacct", ...). Where
    cpu and cpuacct are separate mounts, as on this host, it exports no CPU data at all; with
    ``cpu_link`` a symlink named ``cpu,cpuacct`` to the cpu hierarchy (in a temporary directory; no
    cgroup is touched) gives it the layout of a host where systemd co-mounts them, as in
    reference/performance.md (64k series at 1000 groups).
    """

    def __init__(
        self, binary: str, layout: dict[str, object], root: str, count: int, tmp: str, cpu_link: bool
    ) -> None:
        if layout["mode"] != "v1":
            raise SystemExit("the cgroups-exporter comparison is implemented for the v1 layout only")
        hierarchies = layout["hierarchies"]
        assert isinstance(hierarchies, dict)
        self.globs = [f"{base}{root}/*" for base in _bases(layout)]
        cpu = str(hierarchies["cpu"])
        self.cpu_linked = cpu_link and "cpu,cpuacct" not in cpu
        if self.cpu_linked:
            os.symlink(cpu, f"{tmp}/cpu,cpuacct")
            self.globs.append(f"{tmp}/cpu,cpuacct{root}/*")
        self.binary = binary
        self.count = count
        self.root = root
        self.body_path = f"{tmp}/cgx-body"
        self.port = 19000 + secrets.randbelow(1000)
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.proc: subprocess.Popen[bytes] | None = None
        self.helper: subprocess.Popen[str] | None = None

    def start(self) -> None:
        cmd = [self.binary, "--metrics-address", "127.0.0.1", "--metrics-port", str(self.port)]
        # One collection right at start (delay 0) and none during the rounds (interval 3600 s), so its
        # scrapes are not slowed by its own collector running in the same process.
        cmd += ["--collector-delay", "0", "--collector-interval", "3600", "--log-level", "error"]
        self.proc = subprocess.Popen(
            [*cmd, "--cgroups-path", *self.globs], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.helper = subprocess.Popen(
            [_interpreter(self.binary), "-c", _CGX_COLLECT_PASS, *self.globs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.collect_pass()  # the first pass also creates every series in its store: not steady state
        deadline = time.monotonic() + 300
        previous = -1
        last = f"{self.root.strip('/')}/g{self.count - 1:05d}"
        while True:  # ready once every group is in and the output stopped growing
            assert time.monotonic() < deadline, "cgroups-exporter never finished its collection"
            time.sleep(1)
            try:
                self.scrape()
            except subprocess.CalledProcessError:
                continue
            text = _body_text(self.body_path)
            lines = text.count("\n")
            if last in text and lines == previous:
                break
            previous = lines

    def scrape(self) -> float:
        return _curl(self.url, self.body_path, f"Accept: {PROMETHEUS_ACCEPT}", "Accept-Encoding: gzip")

    def collect_pass(self) -> float:
        assert self.helper is not None and self.helper.stdin is not None and self.helper.stdout is not None
        self.helper.stdin.write("\n")
        self.helper.stdin.flush()
        return float(self.helper.stdout.readline())

    def stats(self) -> dict[str, float]:
        assert self.proc is not None
        gz_bytes = Path(self.body_path).stat().st_size
        text = _body_text(self.body_path)
        with open(f"/proc/{self.proc.pid}/status") as handle:
            rss_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
        return {
            "series": sum(1 for line in text.splitlines() if line and not line.startswith("#")),
            "body_kb": len(text) / 1024,
            "gzip_kb": gz_bytes / 1024,
            "rss_mb": rss_kb / 1024,
            "promtool_ok": float(_promtool_ok(text) or 0),
            "cpu_linked": float(self.cpu_linked),
        }

    def close(self) -> None:
        # Our own children, by their Popen handles: the helper ends when its stdin closes, the exporter
        # on SIGTERM; either is killed if it has not ended 30 s later.
        if self.helper is not None and self.helper.stdin is not None:
            self.helper.stdin.close()
        if self.proc is not None:
            self.proc.terminate()
        for proc in (self.helper, self.proc):
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.helper = self.proc = None


def _start_agent(
    layout: dict[str, object], root: str, count: int, limits: bool, freeze_gc: bool, min_interval: float
) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, __file__, "serve", "--layout", json.dumps(layout), "--root", root]
    cmd += ["--count", str(count), "--min-interval", str(min_interval)]
    cmd += (["--limits"] if limits else []) + (["--gc-freeze"] if freeze_gc else [])
    agent = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert agent.stdout is not None
    return agent, int(agent.stdout.readline().split()[1])


def _stop_agent(agent: subprocess.Popen[str]) -> None:
    if agent.stdin is not None:
        agent.stdin.close()
    try:
        agent.wait(timeout=10)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


def bench_size(
    layout: dict[str, object],
    count: int,
    rounds: int,
    limits: bool,
    freeze_gc: bool,
    compare: str | None = None,
    idle_seconds: float = 0.0,
    cpu_link: bool = True,
) -> dict[str, float]:
    root = f"/cgctl-bench-{secrets.token_hex(4)}"
    created: list[str] = []
    agents: list[subprocess.Popen[str]] = []
    other: CgroupsExporter | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            create_groups(layout, root, count, created)
            create_s = time.perf_counter() - started
            files = floor_files(layout, group_paths(root, count), limits)
            # "fresh": collects on every scrape; "cached": serves the snapshot its first scrape collected.
            agent, port = _start_agent(layout, root, count, limits, freeze_gc, 0.0)
            agents.append(agent)
            cached_agent, cached_port = _start_agent(layout, root, count, limits, freeze_gc, 1e9)
            agents.append(cached_agent)
            url = f"http://127.0.0.1:{port}/metrics"
            cached_url = f"http://127.0.0.1:{cached_port}/metrics"
            headers = (f"Accept: {PROMETHEUS_ACCEPT}", "Accept-Encoding: gzip")
            if compare:
                other = CgroupsExporter(compare, layout, root, count, tmp, cpu_link)
                other.start()
            body_path, cached_body_path = f"{tmp}/body", f"{tmp}/cached-body"
            read_floor(files)  # warm the dentry cache the same way for every side
            _curl(url, body_path, *headers)
            _curl(cached_url, cached_body_path, *headers)  # its one collection, and its rendering
            warm_sum, warm_count = _collect_totals(_body_samples(body_path)[0])
            floors, scrapes, lags, idle_lags, gcs = [], [], [], [], []
            cached, cached_lags, other_scrapes, other_collects = [], [], [], []
            for _ in range(rounds):
                floors.append(read_floor(files))
                _health(port)  # resets the agent's max lag
                scrapes.append(_curl(url, body_path, *headers))
                health = _health(port)
                lags.append(health["max_lag_s"])
                gcs.append(health["max_gc_s"])
                # The same ticker over an equally long window without a scrape: the lag this shared
                # machine's scheduler alone causes, to read the stall figure against.
                time.sleep(scrapes[-1])
                idle_lags.append(_health(port)["max_lag_s"])
                _health(cached_port)
                cached.append(_curl(cached_url, cached_body_path, *headers))
                cached_lags.append(_health(cached_port)["max_lag_s"])
                if other is not None:
                    other_collects.append(other.collect_pass())
                    other_scrapes.append(other.scrape())
            final = _health(port)
            cached_final = _health(cached_port)
            samples, body_bytes = _body_samples(body_path)
            gz_bytes = Path(body_path).stat().st_size
            cached_samples = _body_samples(cached_body_path)[0]
            collect_sum, collect_count = _collect_totals(samples)
            # Each body counts its own collection, so the delta covers exactly the measured rounds.
            collect_mean = (collect_sum - warm_sum) / max(collect_count - warm_count, 1)
            for body in (samples, cached_samples):
                scraped_groups = sum(1 for line in body if line.startswith("cgroup_memory_usage_bytes{"))
                assert scraped_groups == count, f"scrape saw {scraped_groups} groups, expected {count}"
            assert _collect_totals(cached_samples)[1] == 1, "the cached agent collected more than once"
            with tempfile.NamedTemporaryFile() as text_body:
                _curl(url, text_body.name)  # text format 0.0.4, what promtool parses
                promtool_ok = _promtool_ok(_body_text(text_body.name))
            extra: dict[str, float] = {}
            if other is not None:
                extra.update({f"other_{key}": value for key, value in other.stats().items()})
                per_scrape = [c + s for c, s in zip(other_collects, other_scrapes, strict=True)]
                extra.update(
                    {
                        "other_scrape_p50_s": statistics.median(other_scrapes),
                        "other_collect_p50_s": statistics.median(other_collects),
                        "other_fresh_p50_s": statistics.median(per_scrape),
                        # ratios of per-round pairs (each measured back to back), then their median
                        "fresh_ratio_p50": statistics.median(
                            o / ours for o, ours in zip(per_scrape, scrapes, strict=True)
                        ),
                        "cached_ratio_p50": statistics.median(
                            o / ours for o, ours in zip(other_scrapes, cached, strict=True)
                        ),
                    }
                )
                other.close()
                other = None
            if idle_seconds:
                extra["idle_cpu_share"] = idle_cpu(agent.pid, url, idle_seconds)
            return {
                **extra,
                "promtool_ok": float(promtool_ok or 0),
                "groups": count,
                "files": len(files),
                "create_s": create_s,
                "floor_p50_s": statistics.median(floors),
                "scrape_p50_s": statistics.median(scrapes),
                "scrape_min_s": min(scrapes),
                "ratio_p50": statistics.median(sc / fl for sc, fl in zip(scrapes, floors, strict=True)),
                "idle_lag_max_s": max(idle_lags),
                "idle_lag_p50_s": statistics.median(idle_lags),
                "collect_mean_s": collect_mean,
                "max_lag_s": max(lags),
                "lag_p50_s": statistics.median(lags),
                "max_gc_s": max(gcs),
                "rss_mb": final["rss_kb"] / 1024,
                "peak_rss_mb": final["hwm_kb"] / 1024,
                "series": len(samples),
                "body_kb": body_bytes / 1024,
                "gzip_kb": gz_bytes / 1024,
                "cached_p50_s": statistics.median(cached),
                "cached_min_s": min(cached),
                "cached_max_lag_s": max(cached_lags),
                "cached_rss_mb": cached_final["rss_kb"] / 1024,
                "cached_peak_rss_mb": cached_final["hwm_kb"] / 1024,
            }
    finally:
        if other is not None:
            other.close()
        for process in agents:
            _stop_agent(process)
        if remove_groups(created):
            print(f"warning: some groups under {root} were left behind", file=sys.stderr)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark /metrics scrapes against the raw read floor.")
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help=argparse.SUPPRESS)
    serve_parser.add_argument("--layout", required=True)
    serve_parser.add_argument("--root", required=True)
    serve_parser.add_argument("--count", type=int, required=True)
    serve_parser.add_argument("--limits", action="store_true")
    serve_parser.add_argument("--gc-freeze", action="store_true")
    serve_parser.add_argument("--min-interval", type=float, default=0.0)
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mode", choices=("auto", "v1", "v2"), default="auto")
    parser.add_argument("--limits", action="store_true", help="also read and export the limit files")
    parser.add_argument("--gc-freeze", action="store_true", help="agent calls gc.freeze() after start-up")
    parser.add_argument(
        "--compare-cgroups-exporter",
        metavar="BINARY",
        help="also time PyPI's cgroups-exporter (with argclass==1.0.2) on the same groups",
    )
    parser.add_argument(
        "--cgroups-exporter-cpu-link",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give cgroups-exporter a cpu,cpuacct symlink where the two are separate mounts (default: yes)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=0.0,
        help="for the first size, also measure the agent's CPU share while scraped every 15 s this long",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    if args.command == "serve":
        layout = json.loads(args.layout)
        asyncio.run(serve(layout, args.root, args.count, args.limits, args.gc_freeze, args.min_interval))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark creates cgroups")
    # Ctrl-C and SIGTERM unwind through the finally blocks, which remove the groups.
    signal.signal(signal.SIGTERM, _interrupt)
    layout = detect_layout(args.mode)
    print(
        f"layout: {layout['mode']}; rounds: {args.rounds}; limits: {args.limits}; "
        f"gc.freeze: {args.gc_freeze}; cpus: {os.cpu_count()}; load: {os.getloadavg()[0]:.2f}"
    )
    results = []
    for index, size in enumerate(int(s) for s in args.sizes.split(",")):
        idle = args.idle_seconds if index == 0 else 0.0
        r = bench_size(
            layout,
            size,
            args.rounds,
            args.limits,
            args.gc_freeze,
            args.compare_cgroups_exporter,
            idle,
            args.cgroups_exporter_cpu_link,
        )
        results.append(r)
        print(
            f"N={r['groups']:>5}  files={r['files']:>6}  floor p50 {r['floor_p50_s'] * 1000:7.1f} ms  "
            f"scrape p50 {r['scrape_p50_s'] * 1000:7.1f} ms (min {r['scrape_min_s'] * 1000:.1f})  "
            f"ratio {r['scrape_p50_s'] / r['floor_p50_s']:.2f}x (per-round p50 {r['ratio_p50']:.2f}x)  "
            f"collect {r['collect_mean_s'] * 1000:6.1f} ms  "
            f"max loop stall {r['max_lag_s'] * 1000:5.1f} ms (p50 {r['lag_p50_s'] * 1000:.1f}, "
            f"longest GC {r['max_gc_s'] * 1000:.1f}; without a scrape: max {r['idle_lag_max_s'] * 1000:.1f}, "
            f"p50 {r['idle_lag_p50_s'] * 1000:.1f})  "
            f"RSS {r['rss_mb']:.1f} MB (peak {r['peak_rss_mb']:.1f})  "
            f"series {r['series']}  body {r['body_kb']:.0f} KiB / gzip {r['gzip_kb']:.0f} KiB  "
            f"promtool {'ok' if r['promtool_ok'] else 'FAILED'}",
            flush=True,
        )
        if "idle_cpu_share" in r:
            print(
                f"         idle: {r['idle_cpu_share'] * 100:.2f}% of one core with a scrape every 15 s",
                flush=True,
            )
        print(
            f"         cached snapshot (cache-hit path): scrape p50 {r['cached_p50_s'] * 1000:.1f} ms "
            f"(min {r['cached_min_s'] * 1000:.1f})  max loop stall {r['cached_max_lag_s'] * 1000:.1f} ms  "
            f"RSS {r['cached_rss_mb']:.1f} MB (peak {r['cached_peak_rss_mb']:.1f})",
            flush=True,
        )
        if "other_scrape_p50_s" in r:
            linked = " (cpu,cpuacct link)" if r["other_cpu_linked"] else ""
            print(
                f"         cgroups-exporter{linked}: series {r['other_series']:.0f} "
                f"({r['other_series'] / r['series']:.1f}x ours)  body {r['other_body_kb']:.0f} KiB / "
                f"gzip {r['other_gzip_kb']:.0f} KiB  RSS {r['other_rss_mb']:.1f} MB  "
                f"promtool {'ok' if r['other_promtool_ok'] else 'FAILED'}\n"
                f"           collect per scrape:    cgctl {r['scrape_p50_s'] * 1000:7.1f} ms   "
                f"cgroups-exporter {r['other_fresh_p50_s'] * 1000:7.1f} ms "
                f"(collection pass {r['other_collect_p50_s'] * 1000:.1f} + scrape "
                f"{r['other_scrape_p50_s'] * 1000:.1f})   ours {r['fresh_ratio_p50']:.1f}x faster\n"
                f"           serve last collection: cgctl {r['cached_p50_s'] * 1000:7.1f} ms   "
                f"cgroups-exporter {r['other_scrape_p50_s'] * 1000:7.1f} ms   "
                f"ours {r['cached_ratio_p50']:.1f}x faster",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
