"""Joins the agent to ``exporters/``: what a scrape collects (the policy's groups through the driver,
plus optional read-only subtrees), and how reconcile outcomes become the ``cgctl_*`` families."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from drivers.api import CgroupMode, GroupPath, GroupUsage, format_path
from exporters.collector import AgentMetrics, Snapshot
from exporters.server import MetricsServer, SnapshotCache

from . import __version__
from .reconcile import Outcome

if TYPE_CHECKING:
    from .agent import Agent


class AgentMetricsRecorder(AgentMetrics):
    """AgentMetrics that understands reconcile outcomes."""

    def __init__(self, driver: str, mode: str) -> None:
        super().__init__(__version__, driver, mode)
        self._drifting: set[tuple[str, str]] = set()

    def record_outcome(self, outcome: Outcome) -> None:
        if outcome.result is not None:
            label = "ok" if outcome.result.ok else "error" if outcome.result.rollback_complete else "partial"
            self.record_apply(label, outcome.result.seconds)
        elif outcome.error is not None:
            self.record_apply("error", outcome.seconds)
        now = {(d.group, d.knob) for d in outcome.drift}
        for key in now:
            self.set_drift(*key, True)
        corrected = outcome.result is not None and outcome.result.ok
        # In enforce mode a corrected knob is back in line: the gauge says so, the counter remembers.
        for key in (self._drifting - now) | (now if corrected else set()):
            self.set_drift(*key, False)
        self._drifting = set() if corrected else now


def make_agent_metrics(driver: str, mode: str) -> AgentMetricsRecorder:
    return AgentMetricsRecorder(driver, mode)


async def _collect(agent: Agent) -> Snapshot:
    reconciler = agent.reconciler
    assert reconciler is not None
    policy = reconciler.policy
    paths: list[GroupPath] = sorted(policy.groups) if policy is not None else []
    usage = await reconciler.driver.stats(paths)
    by_cgroup: dict[str, GroupUsage] = {}
    names: dict[str, str] = {}
    for path, group_usage in usage.items():
        by_cgroup[group_usage.cgroup] = group_usage
        names[group_usage.cgroup] = format_path(path)
    extra = await asyncio.to_thread(_extra_subtrees, agent, set(by_cgroup))
    by_cgroup.update(extra)
    return Snapshot(usage=by_cgroup, names=names)


def _extra_subtrees(agent: Agent, known: set[str]) -> dict[str, GroupUsage]:
    """Other subtrees the operator asked to export (read-only, cgroupfs), filtered by include/exclude
    patterns and depth so the series count stays bounded (cAdvisor users cannot do this: #2701, #3460)."""
    args = agent.args
    if not args.export_subtree:
        return {}
    from drivers.cgroupfs import usage as cgusage

    if agent.cgroup_mode == CgroupMode.V2.value:
        hierarchies: dict[str, str] = {}
        walk_root = "/sys/fs/cgroup"
    else:
        hierarchies = cgusage.v1_hierarchies()
        walk_root = hierarchies.get("memory") or next(iter(hierarchies.values()), "/sys/fs/cgroup")
    cgroups = cgusage.discover(
        walk_root,
        args.export_subtree,
        include=args.export_include or ["*"],
        exclude=args.export_exclude,
        max_depth=args.export_max_depth,
    )
    fresh = [c for c in cgroups if c not in known]
    return cgusage.read_v1(hierarchies, fresh) if hierarchies else cgusage.read_v2(walk_root, fresh)


async def start_metrics_server(agent: Agent, listen: tuple[str, int]) -> MetricsServer:
    cache = SnapshotCache(lambda: _collect(agent), agent.metrics, min_interval=1.0)
    server = MetricsServer(cache, agent.metrics, host=listen[0], port=listen[1], health=agent.healthy)
    await server.start()
    return server
