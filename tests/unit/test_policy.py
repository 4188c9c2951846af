"""The policy language: YAML → validated, normalized desired state, with exact FILE:LINE:COL errors."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cgctl.devices import DeviceError
from cgctl.policy import (
    MAX_DEPTH,
    GroupSpec,
    Policy,
    PolicyError,
    PolicyIssue,
    SourceRef,
    load_policy,
    parse_policy_text,
)
from drivers.api import CpuList, CpuMax, IoMax, Knob, setting_key

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]

FAKE_DISKS = {"/dev/vda": "254:0", "/dev/vda1": "254:0", "/dev/vda2": "254:0", "254:0": "254:0", "8:0": "8:0"}


def fake_resolver(spec: str) -> str:
    try:
        return FAKE_DISKS[spec]
    except KeyError:
        raise DeviceError(f"{spec}: no such device") from None


def load(text: str, filename: str = "p.yaml") -> Policy:
    return parse_policy_text(textwrap.dedent(text), filename, resolve_device=fake_resolver)


def errors(text: str, filename: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        load(text, filename)
    assert info.value.errors, "a PolicyError must carry its issues"
    return [str(issue) for issue in info.value.errors]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# -- top level ---------------------------------------------------------------------------------------


def test_minimal_policy_gets_the_defaults() -> None:
    policy = load("version: 1\n")
    assert policy.version == 1
    assert policy.driver == "auto"
    assert policy.root == "cgctl"
    assert policy.on_unsupported == "error"
    assert policy.groups == {}
    assert policy.files == ("p.yaml",)
    assert policy.warnings == []


def test_top_level_settings_are_read() -> None:
    policy = load("version: 1\ndriver: cgroupfs\nroot: apps/cgctl\non_unsupported: warn\n")
    assert (policy.driver, policy.root, policy.on_unsupported) == ("cgroupfs", "apps/cgctl", "warn")


def test_version_is_required() -> None:
    assert errors("root: x\n") == ["p.yaml:1:1: version: missing required key (write version: 1)"]


def test_other_versions_are_refused() -> None:
    assert errors("version: 2\n") == [
        "p.yaml:1:10: version: unsupported version 2: this cgctl reads version 1"
    ]
    assert errors("version: '1'\n") == ["p.yaml:1:10: version: must be 1 (got '1')"]


def test_driver_must_be_known() -> None:
    assert errors("version: 1\ndriver: docker\n") == [
        "p.yaml:2:9: driver: must be one of auto, cgroupfs, systemd (got 'docker')"
    ]


def test_on_unsupported_must_be_error_or_warn() -> None:
    assert errors("version: 1\non_unsupported: ignore\n") == [
        "p.yaml:2:17: on_unsupported: must be one of error, warn (got 'ignore')"
    ]


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("/sys/fs/cgroup/x", "must be a relative path like cgctl or apps/cgctl, not '/sys/fs/cgroup/x'"),
        ("a/", "must be a relative path like cgctl or apps/cgctl, not 'a/'"),
        ("a//b", "must be a relative path like cgctl or apps/cgctl, not 'a//b'"),
        ("a/../b", "bad group name '..': '..' is not a group name"),
        ("..", "bad group name '..': '..' is not a group name"),
        (
            "cgroup.procs",
            "bad group name 'cgroup.procs': 'cgroup.procs' is a name the kernel uses for its own files",
        ),
        (
            "cpu.x",
            "bad group name 'cpu.x': names starting with 'cpu.' collide with the kernel's cpu"
            " interface files",
        ),
        ("my root", "bad group name 'my root': only letters, digits, '_', '-' and '.' are allowed"),
    ],
)
def test_root_must_be_a_relative_path_of_safe_names(root: str, message: str) -> None:
    assert errors(f"version: 1\nroot: '{root}'\n") == [f"p.yaml:2:7: root: {message}"]


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    assert errors("version: 1\ngrups: {}\n") == ["p.yaml:2:1: grups: unknown key (did you mean 'groups'?)"]


def test_empty_and_comment_only_files_are_errors() -> None:
    assert errors("") == ["p.yaml:1:1: the policy file is empty"]
    assert errors("# nothing here\n\n") == ["p.yaml:1:1: the policy file is empty"]


def test_top_level_must_be_a_mapping() -> None:
    assert errors("- version: 1\n") == ["p.yaml:1:1: the policy must be a mapping (key: value)"]
    assert errors("just text\n") == ["p.yaml:1:1: the policy must be a mapping (key: value)"]


def test_yaml_syntax_error_has_its_position() -> None:
    assert errors("version: 1\ngroups:\n  web: {cpu: [}\n") == [
        "p.yaml:3:15: invalid YAML: while parsing a flow node did not find expected node content"
    ]


def test_several_documents_are_refused() -> None:
    (message,) = errors("version: 1\n---\nversion: 1\n")
    assert message.startswith("p.yaml:2:1: invalid YAML: ")
    assert "expected a single document" in message


def test_duplicate_keys_are_errors_naming_both_places() -> None:
    text = """\
        version: 1
        groups:
          web:
            memory: {max: 1G}
          web:
            memory: {max: 2G}
        """
    assert errors(text) == ["p.yaml:5:3: groups.web: duplicate key 'web' (first written at p.yaml:3:3)"]
    assert errors("version: 1\ngroups:\n  a: {frozen: yes}\n  a: {}\n") == [
        "p.yaml:3:15: groups.a.frozen: must be true or false (got 'yes')",
        "p.yaml:4:3: groups.a: duplicate key 'a' (first written at p.yaml:3:3)",
    ]
    assert errors("version: 1\nversion: 1\n") == [
        "p.yaml:2:1: version: duplicate key 'version' (first written at p.yaml:1:1)"
    ]


def test_unsafe_and_exotic_yaml_is_refused() -> None:
    assert errors("version: 1\nroot: !!python/object:os.system x\n") == [
        "p.yaml:2:7: root: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'"
    ]
    assert errors("version: 1\ngroups:\n  a: &x {pids: {max: 5}}\n  b:\n    <<: *x\n") == [
        "p.yaml:5:5: groups.b: YAML merge keys (<<) are not supported"
    ]


def test_a_refused_value_is_reported_once_and_problems_under_unknown_keys_too() -> None:
    # A value with a refused tag counts as written but is not read: nothing more is said about it.
    assert errors("version: 1\ngroups:\n  a:\n    cpu: !weird {weight: 0}\n    bogus: !weird x\n") == [
        "p.yaml:4:10: groups.a.cpu: unsupported YAML tag '!weird'",
        "p.yaml:5:12: groups.a.bogus: unsupported YAML tag '!weird'",
    ]
    # What is written under an unknown key is still read for YAML problems.
    assert errors("version: 1\nextra: {a: 1, a: 2, b: !weird x}\n") == [
        "p.yaml:2:1: extra: unknown key (expected one of: version, driver, root, on_unsupported, include,"
        " groups)",
        "p.yaml:2:15: extra.a: duplicate key 'a' (first written at p.yaml:2:9)",
        "p.yaml:2:24: extra.b: unsupported YAML tag '!weird'",
    ]
    # A list or mapping where a value belongs is shown as written.
    assert errors("version: 1\ngroups:\n  a: {pids: {max: [1, 2]}}\n") == [
        "p.yaml:3:19: groups.a.pids.max: must be a whole number of at least 1 or max (got [1, 2])"
    ]


def test_checks_within_a_group_run_wherever_its_section_is_valid() -> None:
    """One run reports a bad device even when another group has a bad value; a section with a bad value
    is not combined (no cpu.max from a bad period, no device lookups for a bad io.max list)."""
    assert errors(
        "version: 1\ngroups:\n  a: {io: {max: [{device: /dev/sdz}]}}\n  b: {pids: {max: 0}}\n"
        "  c: {cpu: {max: 5%, period: 2s}}\n  d: {io: {max: [{device: /dev/sdz}, {device: 8:0, rbps: x}]}}\n"
    ) == [
        "p.yaml:3:27: groups.a.io.max[0].device: /dev/sdz: no such device",
        "p.yaml:4:19: groups.b.pids.max: must be a whole number of at least 1 or max (got 0)",
        "p.yaml:5:30: groups.c.cpu.period: must be between 1ms and 1s (got 2s)",
        "p.yaml:6:58: groups.d.io.max[1].rbps: must be a size like 512M or max (got 'x')",
    ]


def test_alias_bombs_are_stopped() -> None:
    lines = ["version: 1", "x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 8)]
    (message,) = errors("\n".join(lines) + "\n")
    assert message.endswith(
        "the document is too large or nested too deeply (over 2000000 nodes or 100 levels,"
        " e.g. through aliases)"
    )


def test_recursive_aliases_are_stopped() -> None:
    (message,) = errors("version: 1\ngroups: &g\n  a:\n    groups: *g\n")
    assert message.startswith("p.yaml:")
    assert message.endswith(
        "the document is too large or nested too deeply (over 2000000 nodes or 100 levels,"
        " e.g. through aliases)"
    )


def test_aliases_can_share_settings() -> None:
    policy = load("version: 1\ngroups:\n  a:\n    cpu: &std {weight: 50, max: 1}\n  b:\n    cpu: *std\n")
    assert (
        policy.groups[("a",)].resources
        == policy.groups[("b",)].resources
        == {
            "cpu.weight": 50,
            "cpu.max": CpuMax(100_000, 100_000),
        }
    )


# -- groups and settings -----------------------------------------------------------------------------

FULL = """\
version: 1
root: cgctl-test
groups:
  web:
    cpu:
      weight: 200
      max: 1.5
      period: 100ms
      cpus: "0-1"
      mems: 0
    memory:
      min: 0
      low: 64M
      high: 400M
      max: 512M
      swap_max: 0
      oom_group: true
    io:
      weight: 100
      max:
        - device: /dev/vda
          rbps: 50M
          wbps: 20M
          riops: 1000
          wiops: 500
    pids:
      max: 256
    frozen: false
    groups:
      worker:
        cpu: {weight: 50}
  batch:
"""


def test_full_group_normalizes_to_driver_values() -> None:
    policy = load(FULL)
    web = policy.groups[("web",)]
    assert web.resources == {
        "cpu.weight": 200,
        "cpu.max": CpuMax(150_000, 100_000),
        "cpuset.cpus": CpuList((0, 1)),
        "cpuset.mems": CpuList((0,)),
        "memory.min": 0,
        "memory.low": 64 * MIB,
        "memory.high": 400 * MIB,
        "memory.max": 512 * MIB,
        "memory.swap.max": 0,
        "memory.oom.group": True,
        "io.weight": 100,
        setting_key(Knob.IO_MAX, "254:0"): IoMax(rbps=50 * MIB, wbps=20 * MIB, riops=1000, wiops=500),
        "pids.max": 256,
    }
    assert web.frozen is False
    assert web.origin == SourceRef("p.yaml", 4, 3)
    assert policy.groups[("web", "worker")].resources == {"cpu.weight": 50}
    assert policy.groups[("batch",)] == GroupSpec(("batch",), {}, None, SourceRef("p.yaml", 32, 3), {})


def test_origins_point_at_each_value() -> None:
    web = load(FULL).groups[("web",)]
    assert str(web.origins["cpu.max"]) == "p.yaml:7:12"
    assert str(web.origins["memory.swap.max"]) == "p.yaml:16:17"
    assert str(web.origins["io.max[254:0]"]) == "p.yaml:21:11"
    assert str(web.origins["frozen"]) == "p.yaml:28:13"
    assert set(web.origins) == set(web.resources) | {"frozen"}


def test_groups_are_sorted_parents_first() -> None:
    policy = load(
        """\
        version: 1
        groups:
          zeta: {groups: {a: {}}}
          alpha:
            groups:
              b: {groups: {c: {}}}
              a:
        """
    )
    assert list(policy.groups) == [
        ("alpha",),
        ("alpha", "a"),
        ("alpha", "b"),
        ("alpha", "b", "c"),
        ("zeta",),
        ("zeta", "a"),
    ]


def test_field_name_spells_the_policy_path() -> None:
    policy = load(FULL)
    assert policy.field_name(("web", "worker"), "memory.max") == "groups.web.groups.worker.memory.max"
    assert policy.field_name(("web",), "memory.swap.max") == "groups.web.memory.swap_max"
    assert policy.field_name(("web",), "memory.oom.group") == "groups.web.memory.oom_group"
    assert policy.field_name(("web",), "cpuset.cpus") == "groups.web.cpu.cpus"
    assert policy.field_name(("web",), "io.max[254:0]") == "groups.web.io.max[254:0]"
    assert policy.field_name(("web",), "frozen") == "groups.web.frozen"
    assert policy.field_name(("web",)) == "groups.web"
    assert policy.origin_of(("web",), "memory.max") == SourceRef("p.yaml", 15, 12)
    assert policy.origin_of(("web",)) == SourceRef("p.yaml", 4, 3)
    assert policy.origin_of(("nope",)) is None


def test_only_named_settings_are_present_and_max_is_none() -> None:
    policy = load("version: 1\ngroups:\n  a:\n    memory: {max: max}\n    pids: {max: max}\n    cpu: {}\n")
    assert policy.groups[("a",)].resources == {"memory.max": None, "pids.max": None}


def test_frozen_true_and_unsaid() -> None:
    policy = load("version: 1\ngroups:\n  a: {frozen: true}\n  b: {}\n")
    assert policy.groups[("a",)].frozen is True
    assert policy.groups[("b",)].frozen is None


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        ("{max: 1.5}", CpuMax(150_000, 100_000)),
        ("{max: 150%}", CpuMax(150_000, 100_000)),
        ("{max: 50%, period: 50ms}", CpuMax(25_000, 50_000)),
        ("{max: 20ms}", CpuMax(20_000, 100_000)),
        ("{max: max}", CpuMax(None, 100_000)),
        ("{max: max, period: 1s}", CpuMax(None, 1_000_000)),
        ("{period: 10ms}", CpuMax(None, 10_000)),
        ("{max: 2, period: 250000}", CpuMax(500_000, 250_000)),
    ],
)
def test_cpu_max_combines_quota_and_period(cpu: str, expected: CpuMax) -> None:
    policy = load(f"version: 1\ngroups:\n  a:\n    cpu: {cpu}\n")
    assert policy.groups[("a",)].resources == {"cpu.max": expected}


def test_cpu_max_below_the_kernel_minimum_is_reported_at_max() -> None:
    assert errors("version: 1\ngroups:\n  a:\n    cpu:\n      period: 10ms\n      max: 5%\n") == [
        "p.yaml:6:12: groups.a.cpu.max: gives a quota of 500us per 10ms period;"
        " the kernel's minimum quota is 1ms"
    ]


def test_period_out_of_range_is_reported_at_period() -> None:
    assert errors("version: 1\ngroups:\n  a:\n    cpu: {max: 1, period: 2s}\n") == [
        "p.yaml:4:27: groups.a.cpu.period: must be between 1ms and 1s (got 2s)"
    ]


# -- bad values, unknown keys, error collection ------------------------------------------------------


def test_unknown_key_in_a_group_suggests_a_close_match() -> None:
    assert errors("version: 1\ngroups:\n  web:\n    memroy: {max: 1G}\n") == [
        "p.yaml:4:5: groups.web.memroy: unknown key (did you mean 'memory'?)"
    ]
    assert errors("version: 1\ngroups:\n  web:\n    memory: {swapmax: 0}\n") == [
        "p.yaml:4:14: groups.web.memory.swapmax: unknown key (did you mean 'swap_max'?)"
    ]
    assert errors(
        "version: 1\ngroups:\n  web:\n    io:\n      max:\n        - {device: 8:0, rbsp: 1M}\n"
    ) == ["p.yaml:6:25: groups.web.io.max[0].rbsp: unknown key (did you mean 'rbps'?)"]


def test_unknown_key_that_looks_like_a_child_group_explains_groups() -> None:
    assert errors("version: 1\ngroups:\n  web:\n    worker: {cpu: {weight: 5}}\n") == [
        "p.yaml:4:5: groups.web.worker: unknown key (expected one of: cpu, memory, io, pids, frozen, groups);"
        " a child group goes under groups: (worker → groups: {worker: ...})"
    ]


def test_bad_values_are_reported_at_the_value() -> None:
    assert errors("version: 1\ngroups:\n  web:\n    memory:\n      max: 12X\n") == [
        "p.yaml:5:12: groups.web.memory.max: must be a size like 512M or max:"
        " unknown unit 'X' (use K, M, G, T, P or Ki, Mi, Gi, Ti, Pi; all 1024-based)"
    ]


def test_every_error_is_collected_and_sorted() -> None:
    text = """\
        version: 1
        driver: podman
        groups:
          web:
            cpu: {weight: 0, max: lots}
            memory: {high: 1g}
            pids: {max: 0}
            frozen: yes
          cgroup.x: {}
          batch: [1, 2]
        """
    assert errors(text) == [
        "p.yaml:2:9: driver: must be one of auto, cgroupfs, systemd (got 'podman')",
        "p.yaml:5:19: groups.web.cpu.weight: must be a whole number from 1 to 10000 (got 0)",
        "p.yaml:5:27: groups.web.cpu.max: must be a number of CPUs like 1.5, a percentage like 150%, a quota"
        " like 50ms, or max (got 'lots')",
        "p.yaml:6:20: groups.web.memory.high: must be a size like 512M or max:"
        " units are upper-case: did you mean 1G?",
        "p.yaml:7:17: groups.web.pids.max: must be a whole number of at least 1 or max (got 0)",
        "p.yaml:8:13: groups.web.frozen: must be true or false (got 'yes')",
        "p.yaml:9:3: groups.cgroup.x: bad group name 'cgroup.x':"
        " names starting with 'cgroup.' collide with the kernel's cgroup interface files",
        "p.yaml:10:10: groups.batch: must be a mapping (key: value)",
    ]


def test_policy_error_message_lists_every_issue() -> None:
    with pytest.raises(PolicyError) as info:
        load("version: 1\ngroups:\n  a: {pids: {max: -1}, cpu: {weight: x}}\n")
    assert str(info.value) == (
        "p.yaml:3:19: groups.a.pids.max: must be a whole number of at least 1 or max (got -1)\n"
        "p.yaml:3:38: groups.a.cpu.weight: must be a whole number from 1 to 10000 (got 'x')"
    )
    issue = info.value.errors[0]
    assert (issue.file, issue.line, issue.col, issue.field) == ("p.yaml", 3, 19, "groups.a.pids.max")
    assert str(PolicyIssue("f.yaml", 1, 2, "", "whole file")) == "f.yaml:1:2: whole file"


def test_a_key_without_a_value_is_an_error() -> None:
    assert errors("version: 1\ngroups:\n  a:\n    memory:\n      max:\n") == [
        "p.yaml:5:11: groups.a.memory.max: has no value (leave the key out, or write a value)"
    ]


def test_null_sections_and_groups_are_empty() -> None:
    policy = load("version: 1\ngroups:\n  a:\n    cpu:\n    memory:\n    groups:\n  b:\n")
    assert policy.groups[("a",)].resources == {}
    assert set(policy.groups) == {("a",), ("b",)}


def test_yaml_1_1_guesses_do_not_leak_in() -> None:
    # "yes" stays a string (a group name here), 0x10 is not a weight, 8:0 is a device and not 480.
    policy = load("version: 1\ngroups:\n  yes: {}\n  on: {}\n  1: {}\n  a:\n    io: {max: [{device: 8:0}]}\n")
    assert set(policy.groups) == {("yes",), ("on",), ("1",), ("a",)}
    assert policy.groups[("a",)].resources == {"io.max[8:0]": IoMax()}
    assert errors("version: 1\ngroups:\n  a: {cpu: {weight: 0x10}}\n") == [
        "p.yaml:3:21: groups.a.cpu.weight: must be a whole number from 1 to 10000 (got '0x10')"
    ]


@pytest.mark.parametrize(
    ("written", "typed"),
    [
        ("1_000", 1000),
        ("+5", 5),
        ("'5'", 5),
        ("max", None),
    ],
)
def test_plain_numbers_are_decimal_only(written: str, typed: int | None) -> None:
    policy = load(f"version: 1\ngroups:\n  a: {{pids: {{max: {written}}}}}\n")
    assert policy.groups[("a",)].resources == {"pids.max": typed}


@pytest.mark.parametrize("written", ["0x10", "0o7", "1:30", "1e3", ".inf", "2001-01-01", "on", "~"])
def test_yaml_1_1_numbers_booleans_and_dates_are_not_counts(written: str) -> None:
    (message,) = errors(f"version: 1\ngroups:\n  a: {{pids: {{max: {written}}}}}\n")
    if written == "~":
        assert message == "p.yaml:3:19: groups.a.pids.max: has no value (leave the key out, or write a value)"
    else:
        assert message == (
            f"p.yaml:3:19: groups.a.pids.max: must be a whole number of at least 1 or max (got '{written}')"
        )


# -- group names and depth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (".", "'.' is not a group name"),
        ("..", "'..' is not a group name"),
        ("tasks", "'tasks' is a name the kernel uses for its own files"),
        ("notify_on_release", "'notify_on_release' is a name the kernel uses for its own files"),
        ("release_agent", "'release_agent' is a name the kernel uses for its own files"),
        ("cgroup.procs", "'cgroup.procs' is a name the kernel uses for its own files"),
        ("cgroup.anything", "names starting with 'cgroup.' collide with the kernel's cgroup interface files"),
        ("memory.max", "names starting with 'memory.' collide with the kernel's memory interface files"),
        ("cpu.x", "names starting with 'cpu.' collide with the kernel's cpu interface files"),
        (
            "net_cls.classid",
            "names starting with 'net_cls.' collide with the kernel's net_cls interface files",
        ),
        (
            "perf_event.x",
            "names starting with 'perf_event.' collide with the kernel's perf_event interface files",
        ),
        ("io.pressure", "names starting with 'io.' collide with the kernel's io interface files"),
        ("a/b", "only letters, digits, '_', '-' and '.' are allowed"),
        ("a b", "only letters, digits, '_', '-' and '.' are allowed"),
        ("caf\u00e9", "only letters, digits, '_', '-' and '.' are allowed"),
        ("x" * 256, "longer than 255 bytes"),
    ],
)
def test_bad_group_names_are_refused_at_the_key(name: str, message: str) -> None:
    shown = repr(name) if len(name) <= 40 else repr(name[:40] + "…")
    assert errors(f"version: 1\ngroups:\n  web:\n    groups:\n      '{name}': {{}}\n") == [
        f"p.yaml:5:7: groups.web.groups.{name}: bad group name {shown}: {message}"
    ]


@pytest.mark.parametrize("name", ["cpu", "memory", "cpuweb", "web.v2", "a-b_c", "x" * 255, "1", "io-heavy"])
def test_good_group_names_are_accepted(name: str) -> None:
    assert (name,) in load(f"version: 1\ngroups:\n  '{name}': {{}}\n").groups


def _nested(depth: int) -> str:
    lines = ["version: 1"]
    for level in range(depth):
        lines.append("    " * level + "groups:")
        lines.append("    " * level + f"  g{level}:")
    return "\n".join(lines) + "\n"


def test_depth_is_bounded() -> None:
    assert len(load(_nested(MAX_DEPTH)).groups) == MAX_DEPTH
    (message,) = errors(_nested(MAX_DEPTH + 1))
    line = 2 * (MAX_DEPTH + 1) + 1
    assert message.startswith(f"p.yaml:{line}:{4 * MAX_DEPTH + 3}: groups.g0.groups.g1.")
    assert message.endswith(f"groups.g16: groups nest deeper than {MAX_DEPTH} levels below the root")


# -- io.max ------------------------------------------------------------------------------------------


def test_io_max_fields_not_given_are_max() -> None:
    policy = load("version: 1\ngroups:\n  a:\n    io:\n      max:\n        - {device: /dev/vda, wiops: 10}\n")
    assert policy.groups[("a",)].resources == {"io.max[254:0]": IoMax(wiops=10)}


def test_io_max_unknown_device_is_reported_at_the_device() -> None:
    assert errors(
        "version: 1\ngroups:\n  a:\n    io:\n      max:\n        - device: /dev/sdz\n          rbps: 1M\n"
    ) == ["p.yaml:6:19: groups.a.io.max[0].device: /dev/sdz: no such device"]


def test_io_max_same_disk_twice_is_an_error_naming_both() -> None:
    text = """\
        version: 1
        groups:
          a:
            io:
              max:
                - {device: /dev/vda1, rbps: 1M}
                - {device: /dev/vda2, wbps: 1M}
                - {device: /dev/vda1, riops: 5}
        """
    assert errors(text) == [
        "p.yaml:7:20: groups.a.io.max[1].device: device 254:0 is already limited at p.yaml:6:20"
        " (/dev/vda1 and /dev/vda2 are both 254:0); write one entry per disk",
        "p.yaml:8:20: groups.a.io.max[2].device: device 254:0 is already limited at p.yaml:6:20",
    ]


def test_the_same_disk_in_different_groups_is_fine() -> None:
    policy = load(
        "version: 1\ngroups:\n  a: {io: {max: [{device: 8:0, rbps: 1M}]}}\n"
        "  b: {io: {max: [{device: 8:0}]}}\n"
    )
    assert policy.groups[("a",)].resources == {"io.max[8:0]": IoMax(rbps=MIB)}


def test_io_max_shape_errors() -> None:
    assert errors("version: 1\ngroups:\n  a: {io: {max: {device: 8:0}}}\n") == [
        "p.yaml:3:17: groups.a.io.max: must be a list of devices, each like {device: /dev/vda, rbps: 50M}"
    ]
    assert errors("version: 1\ngroups:\n  a:\n    io:\n      max:\n        - rbps: 1M\n") == [
        "p.yaml:6:11: groups.a.io.max[0].device: missing required key"
    ]
    assert errors("version: 1\ngroups:\n  a: {io: {max: [{device: 8:0, riops: 1.5, wbps: 5Q}]}}\n") == [
        "p.yaml:3:39: groups.a.io.max[0].riops: must be a whole number of at least 1 or max (got 1.5)",
        "p.yaml:3:50: groups.a.io.max[0].wbps: must be a size like 512M or max:"
        " unknown unit 'Q' (use K, M, G, T, P or Ki, Mi, Gi, Ti, Pi; all 1024-based)",
    ]


def test_default_resolver_checks_this_host() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_text("version: 1\ngroups:\n  a: {io: {max: [{device: '4095:4095'}]}}\n", "p.yaml")
    assert [str(e) for e in info.value.errors] == [
        "p.yaml:3:27: groups.a.io.max[0].device: 4095:4095: no such block device on this host"
    ]


# -- warnings for odd but legal combinations ---------------------------------------------------------


def test_memory_limits_out_of_order_are_warnings() -> None:
    policy = load("version: 1\ngroups:\n  a:\n    memory: {low: 1G, high: 512M, max: 256M}\n")
    assert [str(w) for w in policy.warnings] == [
        "p.yaml:4:19: groups.a.memory.low: 1G is above memory.high (512M):"
        " the extra protection cannot be used",
        "p.yaml:4:29: groups.a.memory.high: 512M is above memory.max (256M), so it never takes effect",
    ]
    assert policy.groups[("a",)].resources["memory.max"] == 256 * MIB  # still loaded as written


def test_memory_min_above_low_is_a_warning() -> None:
    policy = load("version: 1\ngroups:\n  a:\n    memory: {min: 2G, low: 1G}\n")
    assert [str(w) for w in policy.warnings] == [
        "p.yaml:4:19: groups.a.memory.min: 2G is above memory.low (1G), so memory.low adds nothing"
    ]


def test_memory_limits_in_order_and_max_values_do_not_warn() -> None:
    policy = load("version: 1\ngroups:\n  a:\n    memory: {min: 0, low: 256M, high: max, max: 512M}\n")
    assert policy.warnings == []


def test_child_cpuset_outside_the_parent_is_a_warning() -> None:
    text = (
        "version: 1\ngroups:\n  a:\n    cpu: {cpus: '0-1', mems: 0}\n"
        "    groups:\n      b: {cpu: {cpus: '1-2', mems: 0}}\n"
    )
    assert [str(w) for w in load(text).warnings] == [
        "p.yaml:6:23: groups.a.groups.b.cpu.cpus: 1-2 is not within the parent's 0-1:"
        " cgroup v1 refuses it and v2 uses only the overlap"
    ]


# -- includes ----------------------------------------------------------------------------------------


def test_include_a_file_a_list_and_a_directory(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.yaml",
        """\
        version: 1
        root: teams
        include: [extra.yaml, policy.d]
        groups:
          base: {}
        """,
    )
    write(tmp_path / "extra.yaml", "groups:\n  extra: {pids: {max: 5}}\n")
    write(tmp_path / "policy.d/20-b.yml", "version: 1\nroot: teams\ngroups:\n  b: {}\n")
    write(tmp_path / "policy.d/10-a.yaml", "groups:\n  a: {}\n")
    write(tmp_path / "policy.d/README", "not a policy")
    write(tmp_path / "policy.d/.hidden.yaml", "garbage: [")
    policy = load_policy(main, resolve_device=fake_resolver)
    assert policy.files == (
        str(main),
        str(tmp_path / "extra.yaml"),
        str(tmp_path / "policy.d/10-a.yaml"),
        str(tmp_path / "policy.d/20-b.yml"),
    )
    assert list(policy.groups) == [("a",), ("b",), ("base",), ("extra",)]
    assert policy.groups[("extra",)].origin == SourceRef(str(tmp_path / "extra.yaml"), 2, 3)
    assert policy.root == "teams"


def test_single_include_string_and_nested_includes_are_relative_to_their_file(tmp_path: Path) -> None:
    main = write(tmp_path / "main.yaml", "version: 1\ninclude: sub/one.yaml\n")
    write(tmp_path / "sub/one.yaml", "include: two.yaml\ngroups:\n  one: {}\n")
    write(tmp_path / "sub/two.yaml", "groups:\n  two: {}\n")
    policy = load_policy(main, resolve_device=fake_resolver)
    assert set(policy.groups) == {("one",), ("two",)}


def test_an_empty_include_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "policy.d").mkdir()
    main = write(tmp_path / "main.yaml", "version: 1\ninclude: policy.d\n")
    assert load_policy(main, resolve_device=fake_resolver).files == (str(main),)


def test_missing_include_is_an_error_at_the_include(tmp_path: Path) -> None:
    main = write(tmp_path / "main.yaml", "version: 1\ninclude:\n  - nope.yaml\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    assert [str(e) for e in info.value.errors] == [
        f"{main}:3:5: include[0]: {tmp_path / 'nope.yaml'}: no such file or directory"
    ]


def test_include_cycles_are_detected(tmp_path: Path) -> None:
    main = write(tmp_path / "a.yaml", "version: 1\ninclude: b.yaml\n")
    write(tmp_path / "b.yaml", "include: [a.yaml]\ngroups:\n  b: {}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path / 'b.yaml'}:1:11: include[0]: include cycle: a.yaml → b.yaml → a.yaml"
    ]


def test_self_include_is_a_cycle(tmp_path: Path) -> None:
    main = write(tmp_path / "a.yaml", "version: 1\ninclude: .\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    assert [str(e) for e in info.value.errors] == [f"{main}:2:10: include: include cycle: a.yaml → a.yaml"]


def test_a_file_reached_twice_is_reported(tmp_path: Path) -> None:
    main = write(tmp_path / "a.yaml", "version: 1\ninclude: [c.yaml, c.yaml]\n")
    write(tmp_path / "c.yaml", "groups:\n  c: {}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    assert [str(e) for e in info.value.errors] == [
        f"{main}:2:19: include[1]: {tmp_path / 'c.yaml'} is already part of the policy"
        f" (included at {main}:2:11)"
    ]


def test_a_group_defined_in_two_files_names_both_places(tmp_path: Path) -> None:
    main = write(tmp_path / "a.yaml", "version: 1\ninclude: b.yaml\ngroups:\n  web:\n    pids: {max: 5}\n")
    write(tmp_path / "b.yaml", "# team b\ngroups:\n  other: {}\n  web:\n    groups: {worker: {}}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path / 'b.yaml'}:4:3: groups.web: group web is defined twice: at {main}:4:3 and"
        f" {tmp_path / 'b.yaml'}:4:3"
    ]


def test_included_files_must_agree_on_shared_settings(tmp_path: Path) -> None:
    main = write(tmp_path / "a.yaml", "version: 1\nroot: one\ninclude: b.yaml\n")
    write(tmp_path / "b.yaml", "root: two\ndriver: systemd\ngroups: {}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    b = tmp_path / "b.yaml"
    assert [str(e) for e in info.value.errors] == [
        f"{b}:1:7: root: 'two' differs from 'one' (set in {main}:2:7);"
        " an included file must agree with the main policy",
        f"{b}:2:9: driver: 'systemd' differs from 'auto' (the default of {main}); an included file must agree"
        " with the main policy",
    ]


def test_an_invalid_main_file_does_not_make_included_settings_disagree(tmp_path: Path) -> None:
    main = write(tmp_path / "a.yaml", "version: 1\nroot: teams\ndriver: bogus\ninclude: b.yaml\n")
    write(tmp_path / "b.yaml", "root: teams\ngroups: {}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    assert [str(e) for e in info.value.errors] == [
        f"{main}:3:9: driver: must be one of auto, cgroupfs, systemd (got 'bogus')"
    ]


def test_errors_in_several_files_are_all_reported(tmp_path: Path) -> None:
    main = write(tmp_path / "a.yaml", "version: 1\ndrvier: auto\ninclude: b.yaml\n")
    write(tmp_path / "b.yaml", "groups:\n  x: {pids: {max: none}}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    assert [str(e) for e in info.value.errors] == [
        f"{main}:2:1: drvier: unknown key (did you mean 'driver'?)",
        f"{tmp_path / 'b.yaml'}:2:19: groups.x.pids.max:"
        " must be a whole number of at least 1 or max (got 'none')",
    ]


def test_unreadable_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    assert [str(e) for e in info.value.errors] == [
        f"{missing}:1:1: cannot read {missing}: No such file or directory"
    ]


# -- examples, performance, import cost --------------------------------------------------------------


def test_main_example_is_safe_on_any_host() -> None:
    policy = load_policy(REPO / "examples/policy.yaml", resolve_device=fake_resolver)
    assert policy.root == "cgctl-example"
    assert policy.warnings == []
    assert len(policy.groups) >= 3
    v1_safe = {"cpu.weight", "cpu.max", "memory.max", "pids.max"}
    for spec in policy.groups.values():
        assert set(spec.resources) <= v1_safe, spec.path


def test_every_example_loads() -> None:
    full = load_policy(REPO / "examples/full-v2.yaml", resolve_device=fake_resolver)
    knobs = {key.split("[")[0] for spec in full.groups.values() for key in spec.resources}
    assert knobs == {knob.value for knob in Knob}, "full-v2.yaml shows every knob"
    teams = load_policy(REPO / "examples/policy.d.yaml", resolve_device=fake_resolver)
    assert len(teams.files) == 3
    assert teams.warnings == [] and full.warnings == []


def test_a_thousand_groups_load_fast(tmp_path: Path) -> None:
    lines = ["version: 1", "groups:"]
    for i in range(1000):
        lines += [
            f"  g{i:04d}:",
            "    cpu: {weight: 200, max: 1.5}",
            "    memory: {max: 512M, high: 400M}",
            "    pids: {max: 256}",
        ]
    path = write(tmp_path / "big.yaml", "\n".join(lines) + "\n")
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        policy = load_policy(path)
        best = min(best, time.perf_counter() - start)
    assert len(policy.groups) == 1000
    assert policy.groups[("g0999",)].resources["memory.max"] == 512 * MIB
    assert best < 0.5, f"1000 groups took {best:.3f}s"


def test_loading_leaves_the_garbage_collector_as_it_was() -> None:
    assert gc.isenabled()
    load("version: 1\n")
    assert gc.isenabled()
    errors("version: 2\n")
    assert gc.isenabled()
    gc.disable()
    try:
        load("version: 1\n")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_importing_the_policy_types_stays_light() -> None:
    code = (
        "import sys, cgctl.policy; from cgctl.policy import Policy, GroupSpec, PolicyError; "
        "print(sorted(m for m in ('yaml', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
