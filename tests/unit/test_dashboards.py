"""The committed Grafana dashboard: regenerates identically, is valid, and queries only real metrics."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards import generate
from exporters.collector import EXPORTED_METRIC_NAMES

# Grafana 11.6's own dashboard JSON schema, built from its npm types by dashboards/schema/build-schema
# (git-ignored). Without it the schema tests skip, unless CI says it must be there.
SCHEMA = Path(generate.__file__).resolve().parent / "schema" / "dashboard.schema.json"
REQUIRE_SCHEMA = os.environ.get("CGCTL_REQUIRE_GRAFANA_SCHEMA") == "1"

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
    # The SDK's typed models (generated from Grafana's 11.6 schema) accept every field we emit. Decoding
    # re-adds the SDK's interval-variable defaults, which render() drops again.
    model = generate.without_interval_defaults(Dashboard.from_json(committed))
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    assert again == committed
    assert committed["schemaVersion"] == 41


@pytest.fixture(scope="module")
def grafana_schema() -> Any:
    """A validator for Grafana's dashboard JSON schema.

    additionalProperties, deliberately strict: ts-json-schema-generator closes every interface without an
    index signature (``additionalProperties: false``), so a key Grafana's 11.6 model has no room for fails:
    a typo, or a field Grafana would silently drop. What a plugin owns (panel ``options``,
    ``fieldConfig.defaults.custom``, query ``targets``, an object variable ``query``) is
    ``Record<string, unknown>`` in Grafana's types and stays open. The price: the SDK and @grafana/schema
    pins must move to a new Grafana version together.
    """
    if not SCHEMA.exists():
        reason = f"{SCHEMA.name} missing: run dashboards/schema/build-schema (needs node and npm)"
        if REQUIRE_SCHEMA:
            pytest.fail(f"{reason}; CGCTL_REQUIRE_GRAFANA_SCHEMA=1 requires it")
        pytest.skip(reason)
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _schema_errors(validator: Any, board: dict[str, Any]) -> list[str]:
    """Every leaf error as "path: message", also those under an anyOf (a panel is a Panel or a RowPanel)."""
    errors, pending = [], list(validator.iter_errors(board))
    while pending:
        error = pending.pop(0)
        if error.context:
            pending.extend(error.context)
        else:
            errors.append(f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}")
    return errors


def test_dashboard_validates_against_grafanas_json_schema(
    committed: dict[str, Any], grafana_schema: Any
) -> None:
    assert _schema_errors(grafana_schema, committed) == []


def _first_graph(board: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in board["panels"] if p["type"] != "row")


# A corruption of a valid dashboard, and the error it must cause.
_CORRUPTIONS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "panels is a string": (lambda b: b.update(panels="x"), "panels: 'x' is not of type 'array'"),
    "gridPos h is a string": (
        lambda b: _first_graph(b)["gridPos"].update(h="8"),
        "/gridPos/h: '8' is not of type 'number'",
    ),
    "unknown top-level key": (lambda b: b.update(titel="cgctl"), "('titel' was unexpected)"),
    "unknown panel key": (lambda b: _first_graph(b).update(gridpos={}), "('gridpos' was unexpected)"),
    "schemaVersion missing": (lambda b: b.pop("schemaVersion"), "'schemaVersion' is a required property"),
    "unknown variable type": (
        lambda b: b["templating"]["list"][0].update(type="nonsense"),
        "templating/list/0/type: 'nonsense' is not one of",
    ),
    "interval setting on a datasource variable": (
        lambda b: b["templating"]["list"][0].update(auto_count=30),
        "('auto_count' was unexpected)",
    ),
}


@pytest.mark.parametrize("corruption", list(_CORRUPTIONS))
def test_grafanas_json_schema_rejects_a_corrupted_dashboard(
    committed: dict[str, Any], grafana_schema: Any, corruption: str
) -> None:
    # The schema means something (it is not empty or open): each corruption fails, for the right reason.
    corrupt, expected = _CORRUPTIONS[corruption]
    board = copy.deepcopy(committed)
    corrupt(board)
    errors = _schema_errors(grafana_schema, board)
    assert any(expected in error for error in errors), errors


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
