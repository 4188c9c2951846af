"""``cgctl show``: each group's limits next to its live usage, as a tree or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drivers.api import Driver, GroupPath, Knob, SettingKey, format_path, format_value

from .state import State
from .units import format_setting, format_size

if TYPE_CHECKING:
    from .policy import Policy

# Without a policy, show these limits (the ones an operator looks at first).
DEFAULT_KEYS: tuple[SettingKey, ...] = (
    Knob.CPU_WEIGHT.value,
    Knob.CPU_MAX.value,
    Knob.MEMORY_HIGH.value,
    Knob.MEMORY_MAX.value,
    Knob.PIDS_MAX.value,
)


async def collect_show(driver: Driver, policy: Policy | None, only: GroupPath | None) -> list[dict[str, Any]]:
    await driver.probe()
    if policy is not None:
        paths = set(policy.groups)
        keys = {p: tuple(spec.resources) for p, spec in policy.groups.items()}
    else:
        paths = set(State.load(driver.name, driver.options.root).created) - {()}
        keys = {p: DEFAULT_KEYS for p in paths}
    if only is not None:
        paths = {p for p in paths if p[: len(only)] == only} | {only}
        keys.setdefault(only, DEFAULT_KEYS)
    ordered = sorted(paths)
    observed = await driver.observe(ordered, keys)
    usage = await driver.stats([p for p in ordered if observed.get(p) and observed[p].exists])
    rows: list[dict[str, Any]] = []
    for path in ordered:
        seen = observed.get(path)
        if seen is None or not seen.exists:
            rows.append({"group": format_path(path), "exists": False})
            continue
        use = usage.get(path)
        memory_max = seen.values.get(Knob.MEMORY_MAX.value)
        pids_max = seen.values.get(Knob.PIDS_MAX.value)
        rows.append(
            {
                "group": format_path(path),
                "exists": True,
                "cgroup": seen.display,
                "limits": {k: format_value(v) for k, v in sorted(seen.values.items())},
                "limits_text": {k: format_setting(k, v) for k, v in sorted(seen.values.items())},
                "cpu_seconds": None if use is None else use.cpu_usage_seconds,
                "memory_bytes": None if use is None else use.memory_usage_bytes,
                "memory_max": None if Knob.MEMORY_MAX.value not in seen.values else memory_max,
                "pids": None if use is None else use.pids_current,
                "pids_max": None if Knob.PIDS_MAX.value not in seen.values else pids_max,
                "frozen": seen.frozen,
                "populated": seen.populated,
            }
        )
    return rows


def _fmt_limit(value: object, present: bool, fmt: Any = str) -> str:
    if not present:
        return ""
    return " / max" if value is None else f" / {fmt(value)}"


def render_tree(root: str, rows: list[dict[str, Any]]) -> str:
    header = ("GROUP", "CPU", "MEMORY", "PIDS", "FROZEN", "LIMITS")
    table: list[tuple[str, ...]] = [header]
    paths = [tuple(r["group"].split("/")) for r in rows]
    for i, row in enumerate(rows):
        path = paths[i]
        depth = len(path) - 1
        is_last = not any(p[:depth] == path[:depth] and len(p) == len(path) for p in paths[i + 1 :])
        branch = ("   " * (depth - 1) + ("└─ " if is_last else "├─ ")) if depth > 0 else ""
        name = branch + path[-1]
        if not row["exists"]:
            table.append((name, "-", "-", "-", "-", "(missing)"))
            continue
        cpu = "-" if row["cpu_seconds"] is None else f"{row['cpu_seconds']:.2f}s"
        mem = "-" if row["memory_bytes"] is None else format_size(row["memory_bytes"], exact=False)
        mem += _fmt_limit(row["memory_max"], "memory.max" in row["limits"], format_size)
        pids = "-" if row["pids"] is None else str(row["pids"])
        pids += _fmt_limit(row["pids_max"], "pids.max" in row["limits"])
        limits = ", ".join(f"{k} {v}" for k, v in row["limits_text"].items())
        table.append((name, cpu, mem, pids, "yes" if row["frozen"] else "no", limits))
    widths = [max(len(r[c]) for r in table) for c in range(len(header) - 1)]
    lines = [f"{root}/"]
    for r in table:
        lines.append("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r[:-1])) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines)
