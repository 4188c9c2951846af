"""Exposition of a fixed snapshot: names, labels, values, +Inf, absent fields, both formats, promtool."""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from drivers.api import CpuMax, GroupUsage, IoMax
from exporters.collector import (
    EXPORTED_METRIC_NAMES,
    AgentMetrics,
    CgctlCollector,
    Snapshot,
    build_agent_families,
    build_families,
    build_group_families,
)
from exporters.exposition import finish, iter_render, render, render_prefix

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _web() -> GroupUsage:
    return GroupUsage(
        cgroup="/cgctl/web",
        cpu_usage_seconds=12.5,
        cpu_user_seconds=10.0,
        cpu_system_seconds=2.5,
        cpu_periods=100,
        cpu_throttled_periods=7,
        cpu_throttled_seconds=0.35,
        memory_usage_bytes=104857600,
        memory_working_set_bytes=83886080,
        memory_peak_bytes=None,  # kernel < 5.19: no sample at all
        memory_swap_usage_bytes=0,
        memory_stat_bytes={"anon": 4096, "inactive_file": 20971520, "pgfault": 99},
        memory_events={"max": 5, "oom_kill": 1},
        io={"8:0": {"rbytes": 4096, "wbytes": 8192, "rios": 1, "wios": 2}},
        pids_current=3,
        pids_max=math.inf,
        pressure_some_seconds={"cpu": 1.5, "memory": 0.25},
        pressure_full_seconds={"memory": 0.125},
        frozen=False,
        populated=True,
        limits={
            "cpu.max": CpuMax(50000, 100000),
            "cpu.weight": 200,
            "memory.max": 268435456,
            "memory.high": None,
            "pids.max": None,
            "io.max[8:0]": IoMax(rbps=1048576, wiops=100),
            "cpuset.cpus": None,  # not a numeric limit family: ignored
        },
    )


def _other() -> GroupUsage:
    return GroupUsage(
        cgroup='/system.slice/odd"name\\.service',
        cpu_usage_seconds=1.0,
        memory_usage_bytes=4096,
        memory_peak_bytes=8192,
        pids_max=64.0,
        frozen=True,
    )


def _snapshot() -> Snapshot:
    usage = {"/cgctl/web": _web(), _other().cgroup: _other()}
    return Snapshot(usage=usage, names={"/cgctl/web": "web"})


def _agent() -> AgentMetrics:
    agent = AgentMetrics("0.1.0", "cgroupfs", "v2")
    agent.record_apply("ok", 0.02)
    agent.record_apply("error", 3.0)
    agent.set_drift("web", "memory.max", True)
    agent.set_drift("web", "memory.max", True)  # still drifted: not a new detection
    agent.set_drift("web", "cpu.weight", False)
    agent.record_collect(0.04, errors=2)
    return agent


def _samples(text: str, openmetrics: bool = False) -> dict[SampleKey, float]:
    parse = parse_openmetrics if openmetrics else parse_text
    result: dict[SampleKey, float] = {}
    for family in parse(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in result, f"duplicate series {key}"
            result[key] = sample.value
    return result


def _key(name: str, **labels: str) -> SampleKey:
    return (name, tuple(sorted(labels.items())))


@pytest.fixture
def text() -> str:
    return render(build_families(_snapshot(), _agent().state()), openmetrics=False).decode()


def test_group_samples_have_names_labels_and_base_units(text: str) -> None:
    samples = _samples(text)
    web = {"cgroup": "/cgctl/web", "group": "web"}
    assert samples[_key("cgroup_cpu_usage_seconds_total", **web)] == 12.5
    assert samples[_key("cgroup_cpu_throttled_seconds_total", **web)] == 0.35
    assert samples[_key("cgroup_cpu_throttled_periods_total", **web)] == 7
    assert samples[_key("cgroup_memory_working_set_bytes", **web)] == 83886080
    assert samples[_key("cgroup_memory_stat_bytes", type="anon", **web)] == 4096
    assert samples[_key("cgroup_memory_events_total", event="oom_kill", **web)] == 1
    assert samples[_key("cgroup_io_write_bytes_total", device="8:0", **web)] == 8192
    assert samples[_key("cgroup_io_read_operations_total", device="8:0", **web)] == 1
    assert samples[_key("cgroup_pressure_waiting_seconds_total", resource="cpu", **web)] == 1.5
    assert samples[_key("cgroup_pressure_stalled_seconds_total", resource="memory", **web)] == 0.125
    assert samples[_key("cgroup_frozen", **web)] == 0
    assert _key("cgroup_memory_stat_bytes", type="pgfault", **web) not in samples


def test_unlimited_is_plus_inf_and_absent_peak_has_no_sample(text: str) -> None:
    samples = _samples(text)
    web = {"cgroup": "/cgctl/web", "group": "web"}
    assert samples[_key("cgroup_pids_max", **web)] == math.inf
    assert 'cgroup_pids_max{cgroup="/cgctl/web",group="web"} +Inf\n' in text
    assert _key("cgroup_memory_peak_bytes", **web) not in samples
    other = {"cgroup": _other().cgroup, "group": ""}
    assert samples[_key("cgroup_memory_peak_bytes", **other)] == 8192
    assert samples[_key("cgroup_frozen", **other)] == 1
    # fields the other group lacks produce nothing (no fake zeros)
    assert _key("cgroup_cpu_periods_total", **other) not in samples


def test_limit_families(text: str) -> None:
    samples = _samples(text)
    web = {"cgroup": "/cgctl/web", "group": "web"}
    assert samples[_key("cgroup_limit_cpu_quota_seconds", **web)] == 0.05
    assert samples[_key("cgroup_limit_cpu_period_seconds", **web)] == 0.1
    assert samples[_key("cgroup_limit_cpu_weight", **web)] == 200
    assert samples[_key("cgroup_limit_memory_bytes", kind="max", **web)] == 268435456
    assert samples[_key("cgroup_limit_memory_bytes", kind="high", **web)] == math.inf
    assert samples[_key("cgroup_limit_pids", **web)] == math.inf
    bps = "cgroup_limit_io_bytes_per_second"
    ops = "cgroup_limit_io_operations_per_second"
    assert samples[_key(bps, device="8:0", direction="read", **web)] == 1048576
    assert samples[_key(bps, device="8:0", direction="write", **web)] == math.inf
    assert samples[_key(ops, device="8:0", direction="write", **web)] == 100


def test_agent_families(text: str) -> None:
    samples = _samples(text)
    build = _key("cgctl_build_info", version="0.1.0", driver="cgroupfs", cgroup_mode="v2")
    assert samples[build] == 1
    assert samples[_key("cgctl_apply_total", result="ok")] == 1
    assert samples[_key("cgctl_apply_total", result="error")] == 1
    assert samples[_key("cgctl_apply_total", result="partial")] == 0
    assert samples[_key("cgctl_apply_duration_seconds_bucket", le="0.025")] == 1
    assert samples[_key("cgctl_apply_duration_seconds_bucket", le="2.5")] == 1
    assert samples[_key("cgctl_apply_duration_seconds_bucket", le="5.0")] == 2
    assert samples[_key("cgctl_apply_duration_seconds_bucket", le="+Inf")] == 2
    assert samples[_key("cgctl_apply_duration_seconds_count")] == 2
    assert samples[_key("cgctl_apply_duration_seconds_sum")] == 3.02
    assert samples[_key("cgctl_policy_drift", group="web", knob="memory.max")] == 1
    assert samples[_key("cgctl_policy_drift", group="web", knob="cpu.weight")] == 0
    assert samples[_key("cgctl_policy_drift_detected_total")] == 1
    assert samples[_key("cgctl_collect_errors_total")] == 2
    assert samples[_key("cgctl_collect_duration_seconds_count")] == 1
    assert samples[_key("cgctl_scrape_cgroups")] == 2


def test_label_values_are_escaped(text: str) -> None:
    assert 'cgroup="/system.slice/odd\\"name\\\\.service"' in text
    assert any(labels == (("cgroup", _other().cgroup), ("group", "")) for _, labels in _samples(text))


def test_every_emitted_name_is_declared(text: str) -> None:
    emitted = {name for name, _ in _samples(text)}
    assert emitted <= EXPORTED_METRIC_NAMES
    # the fixed snapshot exercises nearly everything: only the io weight limit is not in it
    assert EXPORTED_METRIC_NAMES - emitted == {"cgroup_limit_io_weight"}


def test_fast_renderer_matches_prometheus_client_encoders() -> None:
    snapshot, agent = _snapshot(), _agent()
    registry = CollectorRegistry()
    registry.register(CgctlCollector(lambda: snapshot, agent))
    ours_text = render(build_families(snapshot, agent.state()), openmetrics=False).decode()
    ours_om = render(build_families(snapshot, agent.state()), openmetrics=True).decode()
    assert _samples(ours_text) == _samples(generate_latest(registry).decode())
    assert _samples(ours_om, openmetrics=True) == _samples(
        generate_openmetrics(registry).decode(),  # type: ignore[no-untyped-call]
        openmetrics=True,
    )
    assert ours_om.endswith("# EOF\n")
    assert "# TYPE cgroup_cpu_usage_seconds counter\n" in ours_om
    assert "# TYPE cgroup_cpu_usage_seconds_total counter\n" in ours_text
    assert "# TYPE cgctl_build info\n" in ours_om
    assert "# TYPE cgctl_build_info gauge\n" in ours_text


def test_deleted_groups_disappear_between_snapshots() -> None:
    first = render(build_families(_snapshot(), None), openmetrics=False).decode()
    second = render(build_families(Snapshot(usage={"/cgctl/web": _web()}), None), openmetrics=False).decode()
    assert "odd" in first
    assert "odd" not in second
    # no agent state given: the agent families have no samples
    assert not any(name.startswith("cgctl_") for name, _ in _samples(second))


def test_promtool_check_metrics_accepts_the_output(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_chunked_and_gzip_rendering_equal_the_whole_body() -> None:
    usage = {
        f"/g{i}": GroupUsage(cgroup=f"/g{i}", cpu_usage_seconds=i / 3, pids_max=math.inf) for i in range(3000)
    }
    snapshot = Snapshot(usage=usage)
    whole = render(build_families(snapshot, _agent().state()), openmetrics=True)
    chunks = list(iter_render(build_families(snapshot, _agent().state()), openmetrics=True))
    assert len(chunks) > 1  # 6000 samples span several chunks
    assert b"".join(chunks) == whole
    prefix = render_prefix(build_group_families(snapshot), openmetrics=True, gzip_level=1)
    compressed = b"".join(finish(prefix, build_agent_families(_agent().state(), len(usage))))
    assert gzip.decompress(compressed) == whole
    assert len(_samples(whole.decode(), openmetrics=True)) > 6000
