"""Build cgctl's Grafana dashboard with grafana-foundation-sdk (pinned 1769699379!11.6.0).

``python -m dashboards.generate`` rewrites ``dashboards/cgctl.json``; ``--check`` exits 1 when the
committed file is stale. The JSON is what gets committed and imported into Grafana; this module is the
source it is generated from, so edit here, not there.

Queries use only metric names from :data:`exporters.collector.EXPORTED_METRIC_NAMES` (a unit test checks
it). Limits are drawn only where finite (``< +Inf``) so unlimited groups do not flatten the graphs. The
JSON also validates against Grafana 11.6's own dashboard JSON schema (``dashboards/schema/build-schema``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    Dashboard,
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
    VariableType,
)

OUTPUT = Path(__file__).resolve().parent / "cgctl.json"
UID = "cgctl-overview"

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every per-group query is narrowed by the dashboard's variables the same way.
SEL = 'instance=~"$instance", group=~"$group"'
AGENT_SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"


def _query(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(DATASOURCE)


def _timeseries(
    title: str, unit: str, queries: list[tuple[str, str]], *, description: str = "", width: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            gc.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            gc.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    for index, (expr, legend) in enumerate(queries):
        panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def _stat(title: str, expr: str, *, description: str = "", unit: str = "short") -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(6)
        .with_target(_query(expr, "", "A").instant())
        .reduce_options(gc.ReduceDataOptions().calcs(["lastNotNull"]))
    )


def _variables(builder: gd.Dashboard) -> gd.Dashboard:
    return (
        builder.with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            gd.QueryVariable("instance")
            .label("Instance")
            .datasource(DATASOURCE)
            .query("label_values(cgctl_build_info, instance)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            gd.QueryVariable("group")
            .label("Policy group")
            .datasource(DATASOURCE)
            .query('label_values(cgroup_memory_usage_bytes{instance=~"$instance"}, group)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )


def build() -> gd.Dashboard:
    """The cgctl overview dashboard."""
    board = (
        gd.Dashboard("cgctl: cgroup resources")
        .uid(UID)
        .description("Per-group usage against the limits cgctl applies, and the cgctl agent's own health.")
        .tags(["cgctl", "cgroups"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
    )
    board = _variables(board)

    board.with_row(gd.Row("CPU"))
    board.with_panel(
        _timeseries(
            "CPU usage vs limit",
            "short",
            [
                (f"rate(cgroup_cpu_usage_seconds_total{{{SEL}}}[{RATE}])", "{{cgroup}}"),
                (
                    f"(cgroup_limit_cpu_quota_seconds{{{SEL}}} < +Inf)"
                    f" / cgroup_limit_cpu_period_seconds{{{SEL}}}",
                    "{{cgroup}} limit",
                ),
            ],
            description="CPU cores used, against cpu.max quota / period (only where a quota is set).",
        )
    )
    board.with_panel(
        _timeseries(
            "CPU throttling",
            "percentunit",
            [
                (
                    f"rate(cgroup_cpu_throttled_periods_total{{{SEL}}}[{RATE}])"
                    f" / (rate(cgroup_cpu_periods_total{{{SEL}}}[{RATE}]) > 0)",
                    "{{cgroup}} periods throttled",
                ),
                (f"rate(cgroup_cpu_throttled_seconds_total{{{SEL}}}[{RATE}])", "{{cgroup}} throttled s/s"),
            ],
            description="Share of periods the group ran out of quota; throttled time per second.",
        )
    )

    board.with_row(gd.Row("Memory"))
    board.with_panel(
        _timeseries(
            "Memory usage / working set vs max and high",
            "bytes",
            [
                (f"cgroup_memory_usage_bytes{{{SEL}}}", "{{cgroup}} usage"),
                (f"cgroup_memory_working_set_bytes{{{SEL}}}", "{{cgroup}} working set"),
                (f'cgroup_limit_memory_bytes{{{SEL}, kind="max"}} < +Inf', "{{cgroup}} max"),
                (f'cgroup_limit_memory_bytes{{{SEL}, kind="high"}} < +Inf', "{{cgroup}} high"),
                (f"cgroup_memory_swap_usage_bytes{{{SEL}}}", "{{cgroup}} swap"),
            ],
        )
    )
    board.with_panel(
        _timeseries(
            "OOM kills and other memory events",
            "short",
            [(f"increase(cgroup_memory_events_total{{{SEL}}}[{RATE}]) > 0", "{{cgroup}} {{event}}")],
            description="v2 memory.events (max, high, oom, oom_kill, ...); v1 failcnt as max and oom_kill.",
        )
    )
    board.with_panel(
        _timeseries(
            "Memory breakdown",
            "bytes",
            [
                (
                    f'cgroup_memory_stat_bytes{{{SEL}, type=~"anon|file|kernel|shmem|sock"}}',
                    "{{cgroup}} {{type}}",
                )
            ],
            width=24,
        )
    )

    board.with_row(gd.Row("IO"))
    board.with_panel(
        _timeseries(
            "IO bytes",
            "Bps",
            [
                (f"rate(cgroup_io_read_bytes_total{{{SEL}}}[{RATE}])", "{{cgroup}} {{device}} read"),
                (f"rate(cgroup_io_write_bytes_total{{{SEL}}}[{RATE}])", "{{cgroup}} {{device}} write"),
            ],
        )
    )
    board.with_panel(
        _timeseries(
            "IO operations",
            "iops",
            [
                (f"rate(cgroup_io_read_operations_total{{{SEL}}}[{RATE}])", "{{cgroup}} {{device}} read"),
                (f"rate(cgroup_io_write_operations_total{{{SEL}}}[{RATE}])", "{{cgroup}} {{device}} write"),
            ],
        )
    )

    board.with_row(gd.Row("Tasks and pressure"))
    board.with_panel(
        _timeseries(
            "Tasks vs pids.max",
            "short",
            [
                (f"cgroup_pids_current{{{SEL}}}", "{{cgroup}} tasks"),
                (f"cgroup_pids_max{{{SEL}}} < +Inf", "{{cgroup}} pids.max"),
            ],
        )
    )
    board.with_panel(
        _timeseries(
            "Pressure stall (PSI)",
            "percentunit",
            [
                (
                    f"rate(cgroup_pressure_waiting_seconds_total{{{SEL}}}[{RATE}])",
                    "{{cgroup}} {{resource}} some",
                ),
                (
                    f"rate(cgroup_pressure_stalled_seconds_total{{{SEL}}}[{RATE}])",
                    "{{cgroup}} {{resource}} full",
                ),
            ],
            description="Share of time some (or all) tasks waited for CPU, memory or IO. cgroup v2 only.",
        )
    )

    board.with_row(gd.Row("Policy and agent"))
    board.with_panel(
        _stat(
            "Frozen groups",
            f"sum(cgroup_frozen{{{SEL}}}) or vector(0)",
            description="Groups frozen by themselves or an ancestor.",
        )
    )
    board.with_panel(
        _stat(
            "Drifted knobs",
            f"sum(cgctl_policy_drift{{{SEL}}}) or vector(0)",
            description="Knobs whose kernel value differs from the policy right now.",
        )
    )
    board.with_panel(
        _stat("Cgroups exported", f"sum(cgctl_scrape_cgroups{{{AGENT_SEL}}})", description="Per scrape.")
    )
    board.with_panel(
        _stat(
            "Collection errors (1h)",
            f"sum(increase(cgctl_collect_errors_total{{{AGENT_SEL}}}[1h]))",
            description="Failed usage collections in the last hour.",
        )
    )
    board.with_panel(
        _timeseries(
            "Policy drift",
            "short",
            [
                (f"cgctl_policy_drift{{{SEL}}} == 1", "{{group}} {{knob}}"),
                (
                    f"increase(cgctl_policy_drift_detected_total{{{AGENT_SEL}}}[{RATE}])",
                    "{{instance}} detections",
                ),
            ],
            description="1 while a knob differs from the policy; enforce mode restores it.",
        )
    )
    board.with_panel(
        _timeseries(
            "Agent health",
            "short",
            [
                (
                    f"sum by (instance, result) (increase(cgctl_apply_total{{{AGENT_SEL}}}[{RATE}]))",
                    "apply {{result}}",
                ),
                (
                    "histogram_quantile(0.9, sum by (instance, le) "
                    f"(rate(cgctl_collect_duration_seconds_bucket{{{AGENT_SEL}}}[{RATE}])))",
                    "{{instance}} collect p90 (s)",
                ),
                (
                    "histogram_quantile(0.9, sum by (instance, le) "
                    f"(rate(cgctl_apply_duration_seconds_bucket{{{AGENT_SEL}}}[{RATE}])))",
                    "{{instance}} apply p90 (s)",
                ),
                (
                    f"increase(cgctl_collect_errors_total{{{AGENT_SEL}}}[{RATE}])",
                    "{{instance}} collect errors",
                ),
            ],
        )
    )
    return board


def without_interval_defaults(model: Dashboard) -> Dashboard:
    """Drop the SDK's interval-variable settings from the variables that are not interval variables.

    The SDK gives every variable ``auto``, ``auto_min`` and ``auto_count`` (defaults false, "10s", 30).
    Grafana 11.6's dashboard schema has no such fields in ``VariableModel`` (they would fail the
    validation against it, ``dashboards/schema/build-schema``), and Grafana writes them only for interval
    variables, which this dashboard has none of.
    """
    for variable in model.templating.list_val or []:
        if variable.type_val != VariableType.INTERVAL:
            variable.auto = variable.auto_min = variable.auto_count = None
    return model


def render() -> str:
    """The dashboard JSON exactly as committed (stable key order, trailing newline)."""
    model = without_interval_defaults(build().build())
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m dashboards.generate", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
