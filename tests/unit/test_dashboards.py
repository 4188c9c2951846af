"""The committed Grafana dashboard: regenerates identically, is valid, and queries only real metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards import generate
from exporters.collector import EXPORTED_METRIC_NAMES

SCHEMA = Path(generate.__file__).resolve().parent / "schema" / "dashboard.schema.json"

_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "Inf",
    "NaN",
}


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(generate.OUTPUT.read_text())
    return data


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _queries(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(board) for t in p.get("targets", []) if "expr" in t]
    exprs += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (or a label_values() variable query)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings
    text = re.sub(r"\{[^}]*\}", "", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"label_values\(([^,()]+),[^)]*\)", r"\1", text)  # the label argument is no metric
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("("):  # a function call
            continue
        if match.group() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def test_promql_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (instance, le) (rate(x_bucket{a=~"b|c", le!="1"}[$__rate_interval])))'
        " / on (cgroup) y < +Inf or vector(0)"
    )
    assert promql_metric_names(expr) == {"x_bucket", "y"}
    assert promql_metric_names('label_values(m{instance=~"$i"}, group)') == {"m"}


def test_committed_dashboard_is_not_stale(committed: dict[str, Any]) -> None:
    assert generate.OUTPUT.read_text() == generate.render(), "run: python -m dashboards.generate"
    assert generate.main(["--check"]) == 0


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "cgctl.json"
    stale.write_text(generate.render().replace("CPU throttling", "CPU"))
    assert generate.main(["--check", "--output", str(stale)]) == 1
    assert generate.main(["--output", str(stale)]) == 0
    assert generate.main(["--check", "--output", str(stale)]) == 0


def test_dashboard_round_trips_through_the_sdk_models(committed: dict[str, Any]) -> None:
    # The SDK's typed models (generated from Grafana's 11.6 schema) accept every field we emit.
    again = json.loads(json.dumps(Dashboard.from_json(committed), cls=JSONEncoder))
    assert again == committed
    assert committed["schemaVersion"] == 41


def test_dashboard_validates_against_grafanas_json_schema(committed: dict[str, Any]) -> None:
    if not SCHEMA.exists():
        pytest.skip(f"{SCHEMA} not vendored: Grafana's v11.6 dashboard schema was not obtainable offline")
    import jsonschema

    jsonschema.validate(committed, json.loads(SCHEMA.read_text()))


def test_queries_use_only_metrics_the_exporter_emits(committed: dict[str, Any]) -> None:
    used: set[str] = set()
    for expr in _queries(committed):
        names = promql_metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        used |= names
    assert used <= EXPORTED_METRIC_NAMES, used - EXPORTED_METRIC_NAMES
    assert {"cgroup_cpu_usage_seconds_total", "cgroup_memory_working_set_bytes", "cgctl_policy_drift"} <= used


def test_required_panels_and_variables(committed: dict[str, Any]) -> None:
    titles = {p["title"] for p in _panels(committed)}
    for required in (
        "CPU usage vs limit",
        "CPU throttling",
        "Memory usage / working set vs max and high",
        "OOM kills and other memory events",
        "IO bytes",
        "Tasks vs pids.max",
        "Pressure stall (PSI)",
        "Frozen groups",
        "Policy drift",
        "Agent health",
    ):
        assert required in titles
    variables = {v["name"]: v for v in committed["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["group"]["type"] == "query"
    assert variables["group"]["query"].startswith("label_values(cgroup_memory_usage_bytes")
    assert variables["group"]["query"].endswith(", group)")
    for panel in _panels(committed):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                if target["expr"].startswith("cgroup_") or "(cgroup_" in target["expr"]:
                    assert 'group=~"$group"' in target["expr"]
