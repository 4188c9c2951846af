"""A body served as a prefix rendered once per snapshot plus a tail rendered per scrape equals the body
rendered whole: text and OpenMetrics, plain and gzip (one gzip member, so clients need no multi-member
support)."""

from __future__ import annotations

import gzip
import math
import zlib

import pytest

from drivers.api import GroupUsage
from exporters.collector import (
    AgentMetrics,
    Snapshot,
    build_agent_families,
    build_families,
    build_group_families,
)
from exporters.exposition import finish, render, render_prefix


def _snapshot(groups: int = 3000) -> Snapshot:
    usage = {
        f"/cgctl/g{i}": GroupUsage(
            cgroup=f"/cgctl/g{i}",
            cpu_usage_seconds=i / 3,
            memory_usage_bytes=i * 4096,
            memory_stat_bytes={"anon": i, "file": 2 * i},
            pids_max=math.inf,
        )
        for i in range(groups)
    }
    return Snapshot(usage=usage, names={f"/cgctl/g{i}": f"g{i}" for i in range(groups)})


def _agent() -> AgentMetrics:
    agent = AgentMetrics("0.1.0", "cgroupfs", "v1")
    agent.record_apply("ok", 0.02)
    agent.record_collect(0.04)
    return agent


def _joined(snapshot: Snapshot, agent: AgentMetrics, *, openmetrics: bool, gzip_level: int | None) -> bytes:
    prefix = render_prefix(build_group_families(snapshot), openmetrics=openmetrics, gzip_level=gzip_level)
    return b"".join(finish(prefix, build_agent_families(agent.state(), len(snapshot.usage))))


def _single_member(body: bytes) -> bytes:
    """Decompress exactly one gzip member and insist nothing follows it."""
    decompressor = zlib.decompressobj(31)
    text = decompressor.decompress(body) + decompressor.flush()
    assert decompressor.eof
    assert decompressor.unused_data == b""
    return text


@pytest.mark.parametrize("openmetrics", [False, True])
@pytest.mark.parametrize("groups", [0, 1, 3000])
def test_prefix_and_tail_equal_the_whole_body(openmetrics: bool, groups: int) -> None:
    snapshot, agent = _snapshot(groups), _agent()
    whole = render(build_families(snapshot, agent.state()), openmetrics=openmetrics)
    assert _joined(snapshot, agent, openmetrics=openmetrics, gzip_level=None) == whole


@pytest.mark.parametrize("openmetrics", [False, True])
@pytest.mark.parametrize("groups", [0, 1, 3000])
def test_gzip_prefix_and_tail_form_one_valid_gzip_member(openmetrics: bool, groups: int) -> None:
    snapshot, agent = _snapshot(groups), _agent()
    whole = render(build_families(snapshot, agent.state()), openmetrics=openmetrics)
    body = _joined(snapshot, agent, openmetrics=openmetrics, gzip_level=1)
    assert _single_member(body) == whole  # also checks the trailer's CRC-32 and length
    assert gzip.decompress(body) == whole


def test_openmetrics_eof_only_at_the_end_and_text_has_none() -> None:
    snapshot, agent = _snapshot(10), _agent()
    om = _joined(snapshot, agent, openmetrics=True, gzip_level=None).decode()
    text = _joined(snapshot, agent, openmetrics=False, gzip_level=None).decode()
    assert om.count("# EOF") == 1
    assert om.endswith("\ncgctl_scrape_cgroups 10\n# EOF\n")
    assert "# EOF" not in text
    assert text.endswith("\ncgctl_scrape_cgroups 10\n")
    prefix = render_prefix(build_group_families(snapshot), openmetrics=True)
    assert b"# EOF" not in prefix.data


def test_one_prefix_serves_changing_agent_counters() -> None:
    snapshot, agent = _snapshot(5), _agent()
    prefix = render_prefix(build_group_families(snapshot), openmetrics=True, gzip_level=1)
    first = gzip.decompress(b"".join(finish(prefix, build_agent_families(agent.state(), 5)))).decode()
    agent.record_apply("ok", 0.5)
    second = gzip.decompress(b"".join(finish(prefix, build_agent_families(agent.state(), 5)))).decode()
    assert 'cgctl_apply_total{result="ok"} 1\n' in first
    assert 'cgctl_apply_total{result="ok"} 2\n' in second
    assert second == render(build_families(snapshot, agent.state()), openmetrics=True).decode()
