#!/usr/bin/env python3
"""Benchmark: ``cgctl apply`` of N new groups (cpu + memory + pids limits), whole process, against

* a raw Python script doing the very same mkdir/write syscalls (os.mkdir + os.open/os.write; on v1 it
  also prepares its root's cpuset as cgctl does, so its cpuset groups can hold tasks too), and
* libcgroup's ``cgconfigparser`` (Debian ``cgroup-tools``) creating the same groups with the same limits,
* the raw script again, after reading cgctl's policy file with PyYAML's C parser: the floor for any
  tool that takes this policy (no parse, no plan, no state), which shows how far each ratio target can
  be reached at all on this machine,

all measured in the same run, alternating, median of R rounds. Each tool's CPU time (user + sys of its
process) is shown too: on a shared machine wall time follows the other tenants' load, and the CPU
split says where a difference comes from (cgctl's Python in user time, the kernel's cgroup work in sys
time). Also: a re-apply of the unchanged policy
(time, and the number of write operations it performed: must be zero), once as it normally runs (the
validated policy comes from cgctl's cache, written by the first apply) and once "cold" (an empty cache
directory: PyYAML, parse and schema walk included), and ``cgctl freeze``/``thaw`` whole-process
latency. Prints figures and ratios; creates groups only under its own unique root and always removes
them.

Usage (as root): .venv/bin/python bench/bench_apply.py [--sizes 100,1000,5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import kernel  # noqa: E402
from tests.procs import SHELL_SPIN  # noqa: E402

LIMITS_V2 = {"cpu.weight": "200", "cpu.max": "50000 100000", "memory.max": str(64 << 20), "pids.max": "50"}
LIMITS_V1 = {
    "cpu": {"cpu.shares": "2048", "cpu.cfs_quota_us": "50000"},
    "memory": {"memory.limit_in_bytes": str(64 << 20)},
    "pids": {"pids.max": "50"},
}


def write_policy(path: Path, root: str, n: int) -> None:
    lines = [f"version: 1\ndriver: cgroupfs\nroot: {root}\ngroups:\n"]
    for i in range(n):
        lines.append(
            f"  g{i}:\n    cpu: {{weight: 200, max: 0.5}}\n    memory: {{max: 64M}}\n    pids: {{max: 50}}\n"
        )
    path.write_text("".join(lines))


# (user, sys) CPU seconds of the last command run by timed(): every figure is a child process's.
Cpu = tuple[float, float]


def timed(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, Cpu, subprocess.CompletedProcess[str]]:
    """Run ``cmd``: its wall time, its CPU time (from the children's rusage, one child at a time), and
    the completed process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime), proc


def cgctl(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    elapsed, _cpu, proc = cgctl_cpu(env, *args)
    return elapsed, proc


def cgctl_cpu(env: dict[str, str], *args: str) -> tuple[float, Cpu, subprocess.CompletedProcess[str]]:
    elapsed, cpu, proc = timed([sys.executable, "-m", "cgctl", *args], env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"cgctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed, cpu, proc


RAW_SCRIPT = r"""
import os, sys
root, n, mode, hierarchies = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
if len(sys.argv) > 5:  # the floor: read the policy file first, as any tool taking it must
    import yaml
    class Nodes(yaml.CSafeLoader):  # the fastest read we know: nodes only, no implicit typing (as cgctl)
        def resolve(self, kind, value, implicit):
            return "tag:yaml.org,2002:str"
    with open(sys.argv[5], "rb") as f:
        yaml.compose(f, Loader=Nodes)
def put(path, value):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
if mode == "v2":
    base = "/sys/fs/cgroup/" + root
    put("/sys/fs/cgroup/cgroup.subtree_control", "+cpu +memory +pids")
    os.mkdir(base)
    put(base + "/cgroup.subtree_control", "+cpu +memory +pids")
    for i in range(n):
        d = f"{base}/g{i}"
        os.mkdir(d)
        put(d + "/cpu.weight", "200"); put(d + "/cpu.max", "50000 100000")
        put(d + "/memory.max", str(64 << 20)); put(d + "/pids.max", "50")
else:
    for h in hierarchies:
        os.mkdir(f"/sys/fs/cgroup/{h}/{root}")
    if "cpuset" in hierarchies:
        # what cgctl does to its root so that new cpuset groups can hold tasks: the parent's cpus and
        # mems, and clone_children (the kernel then copies them into every new child)
        for f in ("cpuset.cpus", "cpuset.mems"):
            put(f"/sys/fs/cgroup/cpuset/{root}/{f}", open(f"/sys/fs/cgroup/cpuset/{f}").read().strip())
        put(f"/sys/fs/cgroup/cpuset/{root}/cgroup.clone_children", "1")
    for i in range(n):
        for h in hierarchies:
            os.mkdir(f"/sys/fs/cgroup/{h}/{root}/g{i}")
        c = f"/sys/fs/cgroup/cpu/{root}/g{i}"
        put(c + "/cpu.shares", "2048"); put(c + "/cpu.cfs_quota_us", "50000")
        put(f"/sys/fs/cgroup/memory/{root}/g{i}/memory.limit_in_bytes", str(64 << 20))
        put(f"/sys/fs/cgroup/pids/{root}/g{i}/pids.max", "50")
"""


def raw(
    root: str, n: int, mode: str, hierarchies: list[str], policy: Path | None = None
) -> tuple[float, Cpu]:
    cmd = [sys.executable, "-c", RAW_SCRIPT, root, str(n), mode, ",".join(hierarchies)]
    elapsed, cpu, proc = timed([*cmd, str(policy)] if policy else cmd)
    if proc.returncode != 0:
        raise SystemExit(f"the raw script failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed, cpu


def cgconfigparser(root: str, n: int, tmp: Path, hierarchies: list[str]) -> tuple[float, Cpu] | None:
    """The same groups as cgctl's: a directory in every hierarchy cgctl created one in (so the same
    mkdirs) and the same four limit writes."""
    exe = shutil.which("cgconfigparser")
    if exe is None or kernel.is_pure_v2():
        return None
    conf = tmp / "cgconfig.conf"
    limits = {
        "cpu": "cpu.shares = 2048; cpu.cfs_quota_us = 50000;",
        "memory": f"memory.limit_in_bytes = {64 << 20};",
        "pids": "pids.max = 50;",
    }
    empty = " ".join(f"{h} {{ }}" for h in hierarchies)
    per_group = " ".join(f"{h} {{ {limits.get(h, '')} }}" for h in hierarchies)
    parts = [f"group {root} {{ {empty} }}\n"]
    for i in range(n):
        parts.append(f"group {root}/g{i} {{ {per_group} }}\n")
    conf.write_text("".join(parts))
    elapsed, cpu, proc = timed([exe, "-l", str(conf)])
    if proc.returncode != 0:
        raise SystemExit(f"cgconfigparser failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed, cpu


def _cpu_text(name: str, samples: list[Cpu]) -> str:
    user = statistics.median(u for u, _ in samples)
    system = statistics.median(s for _, s in samples)
    return f"{name} {user + system:.3f} s (user {user:.3f}, sys {system:.3f})"


def hierarchies_of(root: str) -> list[str]:
    return [h for h in kernel.V1_HIERARCHIES if os.path.isdir(f"/sys/fs/cgroup/{h}/{root}")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # An installed cgctl has its bytecode compiled (pip does it); a checkout run with
    # PYTHONDONTWRITEBYTECODE=1 would otherwise recompile every module at every start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "cgctl", "drivers"], cwd=REPO, check=True)
    mode = "v2" if kernel.is_pure_v2() else "v1"
    print(f"# cgctl apply benchmark — cgroup {mode}, kernel {os.uname().release}, {os.cpu_count()} CPUs")
    print(
        f"{'N':>6} {'cgctl s':>9} {'raw s':>8} {'cgconf s':>9} {'cgctl/raw':>10} {'cgconf/cgctl':>13} "
        f"{'reapply s':>10} {'cold s':>7} {'reapply ops':>12}"
    )
    with tempfile.TemporaryDirectory(prefix="cgctl-bench-") as tmpdir:
        tmp = Path(tmpdir)
        env = dict(
            os.environ,
            CGCTL_STATE_DIR=str(tmp / "state"),
            CGCTL_CACHE_DIR=str(tmp / "cache"),
            CGCTL_RUN_DIR=str(tmp / "run"),
            CGCTL_AGENT_SOCKET=str(tmp / "none.sock"),
        )
        for n in [int(s) for s in args.sizes.split(",")]:
            t_cgctl: list[float] = []
            t_raw: list[float] = []
            t_floor: list[float] = []
            t_conf: list[float] = []
            t_re: list[float] = []
            t_cold: list[float] = []
            cpu: dict[str, list[Cpu]] = {"cgctl": [], "raw": [], "cgconfigparser": []}
            reapply_ops = -1
            for _ in range(args.rounds):
                root = f"cgctl-bench-{uuid.uuid4().hex[:8]}"
                policy = tmp / "policy.yaml"
                write_policy(policy, root, n)
                shutil.rmtree(tmp / "state", ignore_errors=True)
                try:
                    elapsed, used, _ = cgctl_cpu(env, "apply", str(policy))
                    t_cgctl.append(elapsed)
                    cpu["cgctl"].append(used)
                    hierarchies = hierarchies_of(root)
                    elapsed, proc = cgctl(env, "apply", str(policy), "--output", "json")
                    t_re.append(elapsed)
                    report = json.loads(proc.stdout)
                    reapply_ops = len(report["plan"]["ops"]) + (report["result"] or {}).get("steps_done", 0)
                    cold_env = dict(env, CGCTL_CACHE_DIR=str(tmp / f"cold-{uuid.uuid4().hex[:8]}"))
                    elapsed, proc = cgctl(cold_env, "apply", str(policy), "--output", "json")
                    t_cold.append(elapsed)
                    report = json.loads(proc.stdout)
                    reapply_ops += len(report["plan"]["ops"]) + (report["result"] or {}).get("steps_done", 0)
                finally:
                    kernel.remove_tree(root)
                root = f"cgctl-bench-{uuid.uuid4().hex[:8]}"
                try:
                    elapsed, used = raw(root, n, mode, hierarchies)
                    t_raw.append(elapsed)
                    cpu["raw"].append(used)
                finally:
                    kernel.remove_tree(root)
                root = f"cgctl-bench-{uuid.uuid4().hex[:8]}"
                try:
                    t_floor.append(raw(root, n, mode, hierarchies, policy)[0])
                finally:
                    kernel.remove_tree(root)
                root = f"cgctl-bench-{uuid.uuid4().hex[:8]}"
                try:
                    conf = cgconfigparser(root, n, tmp, hierarchies)
                    if conf is not None:
                        t_conf.append(conf[0])
                        cpu["cgconfigparser"].append(conf[1])
                finally:
                    kernel.remove_tree(root)
            m_cgctl, m_raw = statistics.median(t_cgctl), statistics.median(t_raw)
            m_conf = statistics.median(t_conf) if t_conf else float("nan")
            print(
                f"{n:>6} {m_cgctl:>9.3f} {m_raw:>8.3f} {m_conf:>9.3f} {m_cgctl / m_raw:>10.2f} "
                f"{m_conf / m_cgctl:>13.2f} {statistics.median(t_re):>10.3f} "
                f"{statistics.median(t_cold):>7.3f} {reapply_ops:>12}"
            )
            # The same ratios within each round (its three runs follow each other within seconds), so
            # that a machine slowing down or speeding up between rounds does not skew them.
            per_raw = statistics.median(c / r for c, r in zip(t_cgctl, t_raw, strict=True))
            paired = f"cgctl/raw {per_raw:.2f}"
            if t_conf:
                per_conf = statistics.median(f / c for c, f in zip(t_cgctl, t_conf, strict=True))
                paired += f", cgconf/cgctl {per_conf:.2f}"
            print(f"#        per-round ratios, median: {paired}")
            print(
                "#        CPU time, median: "
                + "; ".join(_cpu_text(name, samples) for name, samples in cpu.items() if samples)
            )
            # No tool that reads this policy can be faster than the floor: the best ratios reachable here.
            m_floor = statistics.median(t_floor)
            best = f"tool/raw {m_floor / m_raw:.2f}, cgconf/tool {m_conf / m_floor:.2f}"
            print(
                f"#        floor (raw script + parsing the policy with PyYAML's C parser): {m_floor:.3f} s, "
                f"so the best any tool reading this policy can reach here is {best} (the raw script "
                f"alone: cgconf/raw {m_conf / m_raw:.2f}); cgctl above the raw script: "
                f"{(m_cgctl - m_raw) / n * 1e6:.0f} µs per group"
            )
        freeze_latency(env, tmp)


def freeze_latency(env: dict[str, str], tmp: Path, rounds: int = 15) -> None:
    root = f"cgctl-bench-{uuid.uuid4().hex[:8]}"
    policy = tmp / "freeze.yaml"
    policy.write_text(
        f"version: 1\ndriver: cgroupfs\nroot: {root}\ngroups:\n  busy: {{pids: {{max: 1000}}}}\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cgctl(env, "apply", str(policy))
        procs = [subprocess.Popen(list(SHELL_SPIN)) for _ in range(100)]
        cgctl(env, "move", "busy", *[str(p.pid) for p in procs], "--root", root, "--driver", "cgroupfs")
        freezes, thaws = [], []
        for _ in range(rounds):
            freezes.append(cgctl(env, "freeze", "busy", "--root", root, "--driver", "cgroupfs")[0])
            thaws.append(cgctl(env, "thaw", "busy", "--root", root, "--driver", "cgroupfs")[0])
        p50, worst, thaw = statistics.median(freezes), max(freezes), statistics.median(thaws)
        print(
            f"# cgctl freeze whole process, 100 busy processes: p50 {p50 * 1000:.0f} ms, "
            f"max {worst * 1000:.0f} ms; thaw p50 {thaw * 1000:.0f} ms"
        )
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        print(f"# (bare python start in the same run: {(time.perf_counter() - start) * 1000:.0f} ms)")
    finally:
        kernel.remove_tree(root, {p.pid for p in procs})
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
