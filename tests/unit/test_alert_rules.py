"""The Prometheus alert rules: promtool accepts them, their unit tests pass, they use real metric names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from exporters.collector import EXPORTED_METRIC_NAMES

RULES_DIR = Path(__file__).resolve().parents[2] / "exporters" / "rules"
RULES = RULES_DIR / "cgctl.rules.yml"
RULES_TEST = RULES_DIR / "cgctl.rules.test.yml"

# Metric names in an expression: identifiers not followed by "(" (functions) and not label names.
_IDENT = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_NOT_METRICS = {"on", "by", "without", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return promtool


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, cwd=RULES_DIR)


def test_promtool_check_rules() -> None:
    result = _run(_promtool(), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = _run(_promtool(), "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def metric_names_in(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    without_grouping = re.sub(r"\b(on|by|without|ignoring)\s*\([^)]*\)", "", without_ranges)
    return {
        name
        for name in _IDENT.findall(without_grouping)
        if name not in _NOT_METRICS and not re.fullmatch(r"[0-9.e+-]+", name)
    }


def test_rules_only_use_metrics_the_exporter_emits() -> None:
    rules = yaml.safe_load(RULES.read_text())
    used: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= metric_names_in(rule["expr"])
    assert "cgroup_memory_working_set_bytes" in used
    assert used - EXPORTED_METRIC_NAMES == {"up"}  # Prometheus's own scrape health series


def test_every_alert_has_severity_and_summary() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in alerts}
    assert {"CgroupCPUThrottlingHigh", "CgroupOOMKill", "CgroupMemoryNearMax", "CgctlPolicyDrift"} <= names
    assert {"CgctlAgentDown", "CgctlAgentAbsent", "CgctlCollectionErrors"} <= names
    for rule in alerts:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
