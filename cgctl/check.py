"""``cgctl check``: what this host offers for cgroup control, in the spirit of ``docker info`` and the
kernel-config check an operator runs by hand — and, given a policy, whether this host can honour it."""

from __future__ import annotations

import gzip
import os
from typing import TYPE_CHECKING, Any

from drivers.api import DriverError, DriverOptions

from .registry import UnknownDriverError, choose_driver, driver_class

if TYPE_CHECKING:
    from .policy import Policy

# The kernel options cgroup control depends on, and what each one gives.
KERNEL_FLAGS: dict[str, str] = {
    "CONFIG_CGROUPS": "control groups at all",
    "CONFIG_MEMCG": "memory controller",
    "CONFIG_MEMCG_SWAP": "swap accounting (pre-6.1 kernels; memory.swap.max / memsw)",
    "CONFIG_SWAP": "swap",
    "CONFIG_CGROUP_PIDS": "pids controller",
    "CONFIG_CGROUP_FREEZER": "v1 freezer (v2 freezing is built into the core)",
    "CONFIG_BLK_CGROUP": "io / blkio controller",
    "CONFIG_BLK_DEV_THROTTLING": "io.max / blkio.throttle",
    "CONFIG_BFQ_GROUP_IOSCHED": "io.weight under the BFQ scheduler",
    "CONFIG_BLK_CGROUP_IOCOST": "io.weight via io.cost",
    "CONFIG_CGROUP_SCHED": "cpu controller",
    "CONFIG_FAIR_GROUP_SCHED": "cpu.weight / cpu.shares",
    "CONFIG_CFS_BANDWIDTH": "cpu.max / cfs quota",
    "CONFIG_CPUSETS": "cpuset controller",
    "CONFIG_CGROUP_CPUACCT": "v1 cpuacct accounting",
    "CONFIG_PSI": "pressure stall information (*.pressure)",
}


def kernel_config() -> tuple[str | None, dict[str, str]]:
    """Read the running kernel's config; returns (source, {flag: y|m|n}) or (None, {})."""
    release = os.uname().release
    candidates = [f"/boot/config-{release}", "/proc/config.gz"]
    for path in candidates:
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rt") as f:
                    text = f.read()
            else:
                with open(path) as f:
                    text = f.read()
        except OSError:
            continue
        flags: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                name, value = line.split("=", 1)
                flags[name] = value
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                flags[line[2:].split(" ", 1)[0]] = "n"
        return path, flags
    return None, {}


def _systemd_pid1() -> bool:
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


async def host_report(policy: Policy | None, driver_override: str | None) -> dict[str, Any]:
    report: dict[str, Any] = {"kernel": os.uname().release}
    source, flags = kernel_config()
    report["kernel_config"] = {
        "source": source,
        "flags": {name: flags.get(name, "n" if source else "unknown") for name in KERNEL_FLAGS},
    }
    report["systemd_pid1"] = _systemd_pid1()
    requested = driver_override or (policy.driver if policy else "auto")
    try:
        cls, why = choose_driver(requested)
    except UnknownDriverError as exc:
        report["driver"] = {"error": str(exc)}
        return report
    report["driver"] = {"name": cls.name, "why": why}
    # The cgroupfs view is the kernel's own, whichever driver applies: always describe it.
    root = policy.root if policy else "cgctl"
    probes: dict[str, Any] = {}
    for name in sorted({"cgroupfs", cls.name}):
        try:
            driver = driver_class(name)(DriverOptions(root=root))
            caps = await driver.probe()
            await driver.close()
        except (DriverError, UnknownDriverError, OSError) as exc:
            probes[name] = {"error": str(exc)}
            continue
        probes[name] = {
            "mode": caps.mode.value,
            "controllers": sorted(caps.controllers),
            "unsupported": {k.value: v for k, v in sorted(caps.unsupported.items())},
            "can_freeze": caps.can_freeze,
            "online_cpus": str(caps.online_cpus),
            "online_mems": str(caps.online_mems),
            "features": dict(sorted(caps.features.items())),
            "details": dict(caps.details),
        }
    report["drivers"] = probes
    if policy is not None:
        report["policy"] = await _policy_report(policy, cls.name)
    return report


async def _policy_report(policy: Policy, driver_name: str) -> dict[str, Any]:
    from .engine import prepare

    driver = driver_class(driver_name)(DriverOptions(root=policy.root))
    try:
        prepared = await prepare(policy, driver)
    except DriverError as exc:
        return {"files": list(policy.files), "errors": [f"observing failed: {exc}"], "warnings": []}
    finally:
        await driver.close()
    plan = prepared.plan
    return {
        "files": list(policy.files),
        "groups": len(policy.groups),
        "errors": [str(i) for i in plan.errors],
        "warnings": [str(i) for i in plan.warnings],
        "pending_changes": len(plan.ops),
    }


def render_report(report: dict[str, Any]) -> str:
    lines = [f"Kernel:           {report['kernel']}"]
    lines.append(f"systemd is PID 1: {'yes' if report['systemd_pid1'] else 'no'}")
    drv = report["driver"]
    lines.append(f"Driver:           {drv.get('name', '?')} — {drv.get('why', drv.get('error', ''))}")
    for name, probe in report.get("drivers", {}).items():
        lines.append(f"\n[{name}]")
        if "error" in probe:
            lines.append(f"  error: {probe['error']}")
            continue
        lines.append(f"  cgroup mode:     {probe['mode']}")
        lines.append(f"  controllers:     {' '.join(probe['controllers']) or '(none)'}")
        lines.append(f"  freezing:        {'yes' if probe['can_freeze'] else 'no'}")
        lines.append(f"  online cpus:     {probe['online_cpus']}   mems: {probe['online_mems']}")
        for feature, present in probe["features"].items():
            lines.append(f"  {feature + ':':<16} {'yes' if present else 'no'}")
        for key, value in probe["details"].items():
            lines.append(f"  {key + ':':<16} {value}")
        for knob, reason in probe["unsupported"].items():
            lines.append(f"  cannot set {knob}: {reason}")
    config = report["kernel_config"]
    lines.append(
        f"\nKernel config ({config['source'] or 'not found: no /boot/config-* or /proc/config.gz'}):"
    )
    for flag, value in config["flags"].items():
        lines.append(f"  {flag:<28} {value:<8} {KERNEL_FLAGS[flag]}")
    policy = report.get("policy")
    if policy is not None:
        lines.append(f"\nPolicy {', '.join(policy['files'])}:")
        for error in policy["errors"]:
            lines.append(f"  {error}")
        for warning in policy["warnings"]:
            lines.append(f"  {warning}")
        if not policy["errors"]:
            pending = policy.get("pending_changes", 0)
            lines.append(f"  this host can honour it ({pending} change(s) pending)")
    return "\n".join(lines)
