"""A real Prometheus server (Debian's ``prometheus``, on loopback) scrapes a real agent, and a PromQL
query through its HTTP API returns a policy group's CPU usage; ``promtool check metrics`` accepts the
agent's exposition."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_cases import RunningAgent, agent, extra_agent_args, free_port  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="Debian package 'prometheus' not installed"
    ),
]


@pytest.fixture
def prometheus(agent: RunningAgent, tmp_path: Path) -> Iterator[int]:  # noqa: F811
    agent.wait_notify("READY=1")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: cgctl\n    static_configs: [{{targets: ['127.0.0.1:{agent.port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def diagnosis(port: int, tmp_path: Path) -> str:
    """Why no sample arrived: Prometheus's view of the scrape target, and the end of its own log."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=10) as resp:
            targets = [
                {k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrape")}
                for t in json.load(resp)["data"]["activeTargets"]
            ]
    except OSError as exc:
        targets = [{"error": f"Prometheus API unreachable: {exc}"}]
    log = (tmp_path / "prometheus.log").read_text(errors="replace").splitlines()
    return f"targets: {targets}\nprometheus log (last 15 lines):\n" + "\n".join(log[-15:])


def query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = json.load(resp)
    except OSError:
        return []
    assert data["status"] == "success"
    result: list[dict[str, object]] = data["data"]["result"]
    return result


def test_prometheus_scrapes_the_agent_and_promql_returns_a_groups_cpu_usage(
    agent: RunningAgent,  # noqa: F811
    prometheus: int,
    tmp_path: Path,
) -> None:
    promql = 'cgroup_cpu_usage_seconds_total{group="web"}'
    deadline = time.monotonic() + 90
    result: list[dict[str, object]] = []
    while time.monotonic() < deadline and not result:
        time.sleep(1)
        result = query(prometheus, promql)
    assert result, f"no answer to {promql} within 90 s\n{diagnosis(prometheus, tmp_path)}"
    metric = result[0]["metric"]
    assert isinstance(metric, dict) and metric["cgroup"] == f"/{agent.root}/web"
    value = result[0]["value"]
    assert isinstance(value, list) and float(value[1]) >= 0.0
    up = query(prometheus, 'up{job="cgctl"}')
    assert up and up[0]["value"][1] == "1"  # type: ignore[index]


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="Debian package 'prometheus' (promtool) not installed"
)
def test_promtool_accepts_the_agents_exposition(agent: RunningAgent) -> None:  # noqa: F811
    agent.wait_notify("READY=1")
    text = agent.metrics()
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
