"""A real Prometheus (Debian's) scrapes the metrics server; PromQL through its HTTP API returns the
CPU usage the server read from the host's own cgroupfs. Read-only: it reads the v1 root groups."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from drivers.cgroupfs import usage as u
from exporters.collector import AgentMetrics, Snapshot
from exporters.server import MetricsServer, SnapshotCache

pytestmark = pytest.mark.host


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success"
    result: list[dict[str, object]] = body["data"]["result"]
    return result


async def test_prometheus_scrapes_the_agent_and_answers_promql(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    hierarchies = u.v1_hierarchies()
    if prometheus is None:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    if "cpuacct" not in hierarchies:
        pytest.skip("needs the v1 cpuacct hierarchy")

    async def collect() -> Snapshot:
        found = await asyncio.to_thread(u.read_v1, hierarchies, ["/"])
        return Snapshot(usage=found, names={"/": "root"})

    agent = AgentMetrics("test", "cgroupfs", "hybrid")
    server = MetricsServer(SnapshotCache(collect, agent), agent)
    await server.start()
    prom_port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: cgctl\n    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        found: list[dict[str, object]] = []
        for _ in range(60):  # up to 30 s for start-up and the first scrapes
            await asyncio.sleep(0.5)
            try:
                found = await asyncio.to_thread(
                    _query, prom_port, 'cgroup_cpu_usage_seconds_total{job="cgctl",group="root"}'
                )
            except OSError:
                continue
            if found:
                break
        assert found, "Prometheus never returned the group's CPU usage"
        sample = found[0]
        labels = sample["metric"]
        assert isinstance(labels, dict)
        assert labels["cgroup"] == "/"
        value = sample["value"]
        assert isinstance(value, list)
        seconds = float(value[1])
        with open(hierarchies["cpuacct"] + "/cpuacct.usage") as handle:
            now = int(handle.read()) / 1e9
        assert 0 < seconds <= now and math.isfinite(seconds)
        up = await asyncio.to_thread(_query, prom_port, 'up{job="cgctl"}')
        assert up and isinstance(up[0]["value"], list) and up[0]["value"][1] == "1"
        build = await asyncio.to_thread(_query, prom_port, "cgctl_build_info")
        assert build, "the info family (OpenMetrics, negotiated by Prometheus) did not arrive"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await server.close()
