"""The planner is a pure function: these tests pin its ordering and its idempotence rules."""

from __future__ import annotations

from dataclasses import dataclass, field

from cgctl.plan import OpKind, PlanInput, Severity, groups_to_type, keys_to_observe, make_plan, memory_lowered
from drivers.api import (
    Capabilities,
    CgroupMode,
    CpuList,
    CpuMax,
    GroupPath,
    Knob,
    ObservedGroup,
    SettingKey,
    Value,
    setting_key,
)

V2 = Capabilities(
    driver="test",
    mode=CgroupMode.V2,
    needs_subtree_control=True,
    controllers=frozenset({"cpu", "memory", "io", "pids", "cpuset"}),
    online_cpus=CpuList((0, 1)),
    online_mems=CpuList((0,)),
)
V1 = Capabilities(
    driver="test",
    mode=CgroupMode.HYBRID,
    unsupported={Knob.MEMORY_LOW: "memory.low does not exist on cgroup v1"},
    controllers=frozenset({"cpu", "memory", "pids", "cpuset"}),
)


@dataclass
class Group:
    resources: dict[SettingKey, Value] = field(default_factory=dict)
    frozen: bool | None = None


def observed_as(desired: dict[GroupPath, Group], **extra: ObservedGroup) -> dict[GroupPath, ObservedGroup]:
    """The tree exactly as the policy wants it (what a converged host looks like)."""
    out = {
        (): ObservedGroup(exists=True, subtree_control=frozenset({"cpu", "memory", "io", "pids", "cpuset"}))
    }
    for path, g in desired.items():
        out[path] = ObservedGroup(
            exists=True,
            values=dict(g.resources),
            subtree_control=frozenset({"cpu", "memory", "io", "pids", "cpuset"}),
            self_frozen=bool(g.frozen),
            frozen=bool(g.frozen),
        )
    return out


def kinds(plan):  # type: ignore[no-untyped-def]
    return [(op.kind, op.path, op.key) for op in plan.ops]


def test_new_tree_is_created_parents_first_with_controllers_enabled_top_down() -> None:
    desired = {
        ("web",): Group({"cpu.weight": 200}),
        ("web", "worker"): Group({"memory.max": 512 << 20, "pids.max": 10}),
    }
    plan = make_plan(PlanInput(desired=desired, observed={}, capabilities=V2))
    assert kinds(plan) == [
        (OpKind.CREATE, (), None),
        (OpKind.ENABLE, (), None),
        (OpKind.CREATE, ("web",), None),
        (OpKind.SET, ("web",), "cpu.weight"),
        (OpKind.ENABLE, ("web",), None),
        (OpKind.CREATE, ("web", "worker"), None),
        (OpKind.SET, ("web", "worker"), "memory.max"),
        (OpKind.SET, ("web", "worker"), "pids.max"),
    ]
    # Only the controllers some descendant needs, never "all available".
    assert plan.ops[1].controllers == {"cpu", "memory", "pids"}
    assert plan.ops[4].controllers == {"memory", "pids"}
    assert not plan.issues


def test_converged_tree_plans_nothing() -> None:
    desired = {("web",): Group({"cpu.weight": 200, "memory.max": None}, frozen=True)}
    plan = make_plan(
        PlanInput(desired=desired, observed=observed_as(desired), capabilities=V2, last_applied={})
    )
    assert plan.ops == []
    assert plan.in_sync


def test_v1_needs_no_subtree_control_and_cpuset_comes_first() -> None:
    desired = {
        ("a",): Group(
            {"pids.max": 5, "cpu.weight": 10, "cpuset.mems": CpuList((0,)), "cpuset.cpus": CpuList((0,))}
        )
    }
    plan = make_plan(PlanInput(desired=desired, observed={}, capabilities=V1))
    assert [op.key for op in plan.ops if op.kind is OpKind.SET] == [
        "cpuset.cpus",
        "cpuset.mems",
        "cpu.weight",
        "pids.max",
    ]
    assert all(op.kind is not OpKind.ENABLE for op in plan.ops)


def test_memory_high_lowered_before_max_and_raised_after_it() -> None:
    old = {("g",): Group({"memory.high": 400, "memory.max": 500})}
    lower = {("g",): Group({"memory.high": 100, "memory.max": 200})}
    plan = make_plan(PlanInput(desired=lower, observed=observed_as(old), capabilities=V2))
    assert [op.key for op in plan.ops] == ["memory.high", "memory.max"]

    raise_ = {("g",): Group({"memory.high": 800, "memory.max": 900})}
    plan = make_plan(PlanInput(desired=raise_, observed=observed_as(old), capabilities=V2))
    assert [op.key for op in plan.ops] == ["memory.max", "memory.high"]


def test_unsupported_knob_is_a_plan_error_naming_group_and_reason() -> None:
    desired = {("web",): Group({"memory.low": 64 << 20})}
    plan = make_plan(
        PlanInput(
            desired=desired,
            observed={},
            capabilities=V1,
            where=lambda p, k: f"p.yaml:7:12: groups.web.memory.{k}",
        )
    )
    assert len(plan.errors) == 1
    text = str(plan.errors[0])
    assert "p.yaml:7:12" in text and "web memory.low" in text and "cgroup v1" in text
    assert all(op.key != "memory.low" for op in plan.ops)


def test_unsupported_knob_becomes_a_warning_when_policy_allows() -> None:
    desired = {("web",): Group({"memory.low": 64 << 20})}
    plan = make_plan(PlanInput(desired=desired, observed={}, capabilities=V1, on_unsupported="warn"))
    assert not plan.errors
    assert plan.warnings and plan.warnings[0].severity is Severity.WARNING
    assert "left out" in plan.warnings[0].message


def test_v1_cpusets_shrink_children_first_and_a_sideways_change_widens_first() -> None:
    """v1 refuses (EBUSY) a parent cpuset that would leave a child outside it: the plan keeps every
    child inside its parent at every step."""
    caps = Capabilities(driver="test", mode=CgroupMode.V1, cpuset_within_parent=True)
    cpus = "cpuset.cpus"
    old = {
        (): {},
        ("web",): CpuList((0, 1, 2, 3)),
        ("web", "a"): CpuList((0, 1, 2, 3)),
        ("web", "b"): CpuList((2, 3)),
    }
    new = {("web",): CpuList((0, 1)), ("web", "a"): CpuList((0,)), ("web", "b"): CpuList((1,))}
    observed = {(): ObservedGroup(exists=True)} | {
        path: ObservedGroup(exists=True, values={cpus: value}) for path, value in old.items() if path
    }
    desired = {path: Group({cpus: value, "pids.max": 5}) for path, value in new.items()}
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=caps))
    steps = [(op.path, op.old, op.new) for op in plan.ops if op.key == cpus]
    assert steps == [
        (("web", "b"), CpuList((2, 3)), CpuList((1, 2, 3))),  # sideways: widen within the parent first
        (("web", "a"), CpuList((0, 1, 2, 3)), CpuList((0,))),  # then shrink, children first
        (("web", "b"), CpuList((1, 2, 3)), CpuList((1,))),
        (("web",), CpuList((0, 1, 2, 3)), CpuList((0, 1))),
    ]
    # walking the steps, every child stays inside its parent
    current: dict[GroupPath, set[int]] = {p: set(v.ids) for p, v in old.items() if isinstance(v, CpuList)}
    for path, _before, after in steps:
        current[path] = set(after.ids)
        assert current[("web", "a")] <= current[("web",)] and current[("web", "b")] <= current[("web",)]
    # without the nesting rule (v2, systemd): one write per group, parents-first
    v2 = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert [op.path for op in v2.ops if op.key == cpus] == [("web",), ("web", "a"), ("web", "b")]


def test_impossible_cpuset_is_an_error() -> None:
    desired = {("web",): Group({"cpuset.cpus": CpuList((0, 7))})}
    plan = make_plan(PlanInput(desired=desired, observed={}, capabilities=V2))
    assert len(plan.errors) == 1 and "7" in plan.errors[0].message and "not online" in plan.errors[0].message


def test_dropped_knob_is_reset_to_kernel_default_and_unnamed_knobs_left_alone() -> None:
    before = {("web",): Group({"cpu.weight": 300, "pids.max": 50, "memory.max": 1 << 30})}
    now = {("web",): Group({"cpu.weight": 300})}
    observed = observed_as(before)
    plan = make_plan(
        PlanInput(
            desired=now,
            observed=observed,
            capabilities=V2,
            # cgctl set cpu.weight and pids.max last time; memory.max was set by someone else.
            last_applied={("web",): frozenset({"cpu.weight", "pids.max"})},
        )
    )
    assert [(op.kind, op.key, op.old, op.new) for op in plan.ops] == [(OpKind.RESET, "pids.max", 50, None)]


def test_lowering_memory_max_below_usage_warns_before_applying() -> None:
    desired = {("g",): Group({"memory.max": 10 << 20})}
    observed = observed_as({("g",): Group({"memory.max": None})})
    observed[("g",)].memory_current = 50 << 20
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert any("below current usage" in w.message for w in plan.warnings)


def test_memory_usage_is_needed_only_where_an_existing_limit_goes_down() -> None:
    desired = {
        ("down",): Group({"memory.max": 10 << 20}),  # from 20M: usage decides whether it reclaims
        ("from-max",): Group({"memory.max": 10 << 20}),  # from no limit at all: likewise
        ("up",): Group({"memory.max": 30 << 20}),  # raising never reclaims
        ("same",): Group({"memory.max": 20 << 20}),  # no write at all
        ("lifted",): Group({"memory.max": None}),
        ("new",): Group({"memory.max": 10 << 20}),  # created by this apply: empty
    }
    observed = observed_as(
        {
            ("down",): Group({"memory.max": 20 << 20}),
            ("from-max",): Group({"memory.max": None}),
            ("up",): Group({"memory.max": 20 << 20}),
            ("same",): Group({"memory.max": 20 << 20}),
            ("lifted",): Group({"memory.max": 20 << 20}),
        }
    )
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert memory_lowered(plan, observed) == [("down",), ("from-max",)]


def test_v1_cpuset_resets_under_a_shrinking_parent_come_after_it() -> None:
    """A v1 reset copies the parent's list when written: under a parent that shrinks it would copy the
    old, wider list and the parent's shrink would then fail (EBUSY). The child narrows first (only if
    it holds CPUs outside the parent's new list), the parent shrinks, and the resets follow."""
    caps = Capabilities(driver="test", mode=CgroupMode.V1, cpuset_within_parent=True)
    cpus = "cpuset.cpus"
    observed = {
        (): ObservedGroup(exists=True),
        ("p",): ObservedGroup(exists=True, values={cpus: CpuList((0, 1))}),
        ("p", "out"): ObservedGroup(exists=True, values={cpus: CpuList((1,))}),
        ("p", "in"): ObservedGroup(exists=True, values={cpus: CpuList((0,))}),
    }
    desired = {("p",): Group({cpus: CpuList((0,))}), ("p", "out"): Group({}), ("p", "in"): Group({})}
    last = {("p", "out"): frozenset({cpus}), ("p", "in"): frozenset({cpus})}
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=caps, last_applied=last))
    assert [(op.kind, op.path, op.old, op.new) for op in plan.ops] == [
        (OpKind.SET, ("p", "out"), CpuList((1,)), CpuList((0,))),
        (OpKind.SET, ("p",), CpuList((0, 1)), CpuList((0,))),
        (OpKind.RESET, ("p", "in"), CpuList((0,)), CpuList()),
        (OpKind.RESET, ("p", "out"), CpuList((0,)), CpuList()),
    ]
    # without the nesting rule the resets stay where they were, parents-first
    v2 = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2, last_applied=last))
    assert [op.path for op in v2.ops if op.key == cpus] == [("p",), ("p", "in"), ("p", "out")]


V1_SWAP = Capabilities(
    driver="test",
    mode=CgroupMode.HYBRID,
    swap_needs_memory_limit=True,
    controllers=frozenset({"memory"}),
)


def test_on_v1_a_swap_limit_without_a_memory_limit_is_a_plan_error() -> None:
    swap, memory = "memory.swap.max", "memory.max"
    desired = {
        ("new-swap-only",): Group({swap: 0}),  # a new group has no memory limit
        ("explicit-max",): Group({memory: None, swap: 64 << 20}),
        ("both",): Group({memory: 256 << 20, swap: 0}),  # fine
        ("kept-limit",): Group({swap: 0}),  # memory.max set outside the policy stays: fine
        ("unlimited",): Group({swap: 0}),  # observed without a memory limit
        ("reset",): Group({swap: 0}),  # memory.max dropped from the policy goes back to max
        ("no-swap-limit",): Group({swap: None}),  # fine
    }
    observed = observed_as(
        {
            ("kept-limit",): Group({memory: 128 << 20, swap: None}),
            ("unlimited",): Group({memory: None, swap: None}),
            ("reset",): Group({memory: 128 << 20, swap: 0}),
        }
    )
    plan = make_plan(
        PlanInput(
            desired=desired,
            observed=observed,
            capabilities=V1_SWAP,
            last_applied={("reset",): frozenset({memory, swap})},
        )
    )
    assert sorted(issue.group for issue in plan.errors) == [
        ("explicit-max",),
        ("new-swap-only",),
        ("reset",),
        ("unlimited",),
    ]
    assert all(issue.key == swap and "needs a memory.max" in issue.message for issue in plan.errors)
    v2 = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))  # v2 has memory.swap.max
    assert not v2.errors


def test_the_memory_limit_beside_a_swap_limit_is_observed() -> None:
    keys = keys_to_observe({("g",): Group({"memory.swap.max": 0})}, {})
    assert keys[("g",)] == frozenset({"memory.swap.max", "memory.max"})


def test_freeze_comes_last_and_thaw_only_when_self_frozen() -> None:
    desired = {("a",): Group({"pids.max": 3}, frozen=True), ("b",): Group({}, frozen=False)}
    observed = observed_as({("b",): Group({}, frozen=True)})
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert [op.kind for op in plan.ops][-2:] == [OpKind.THAW, OpKind.FREEZE]
    assert plan.ops[-1].path == ("a",)


def test_effective_value_makes_rounded_values_idempotent() -> None:
    desired = {("g",): Group({"cpu.weight": 33})}
    observed = observed_as({("g",): Group({"cpu.weight": 32})})
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert len(plan.ops) == 1
    plan = make_plan(
        PlanInput(desired=desired, observed=observed, capabilities=V2, effective=lambda k, v: 32)
    )
    assert plan.ops == []


def test_prune_removes_only_owned_empty_groups_children_first() -> None:
    desired = {("keep",): Group({})}
    observed = observed_as(desired)
    for path in [("old",), ("old", "child"), ("busy",), ("foreign",)]:
        observed[path] = ObservedGroup(exists=True)
    observed[("busy",)].populated = True
    plan = make_plan(
        PlanInput(
            desired=desired,
            observed=observed,
            capabilities=V2,
            owned=frozenset({("keep",), ("old",), ("old", "child"), ("busy",)}),
            prune=True,
        )
    )
    assert [(op.kind, op.path) for op in plan.ops] == [
        (OpKind.REMOVE, ("old", "child")),
        (OpKind.REMOVE, ("old",)),
    ]
    assert any("busy" in note for note in plan.notes)


def test_io_max_is_planned_per_device() -> None:
    from drivers.api import IoMax

    key = setting_key(Knob.IO_MAX, "254:0")
    desired = {("g",): Group({key: IoMax(rbps=1 << 20)})}
    plan = make_plan(PlanInput(desired=desired, observed={}, capabilities=V2))
    sets = [op for op in plan.ops if op.kind is OpKind.SET]
    assert sets[0].key == "io.max[254:0]"
    assert plan.ops[1].kind is OpKind.ENABLE and "io" in plan.ops[1].controllers


def test_cpu_max_diff_shows_old_and_new() -> None:
    desired = {("g",): Group({"cpu.max": CpuMax(150_000, 100_000)})}
    observed = observed_as({("g",): Group({"cpu.max": CpuMax(None, 100_000)})})
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert plan.ops[0].describe() == "set    g cpu.max: max 100000 -> 150000 100000"


# -- v2 threaded mode --------------------------------------------------------------------------------


def test_in_a_threaded_group_only_threaded_controllers_are_planned_and_the_rest_is_an_error() -> None:
    desired = {
        ("app",): Group({"memory.max": 1 << 30}),
        ("app", "t"): Group({"cpu.weight": 50, "pids.max": 9, "memory.max": 64 << 20}),
    }
    observed = observed_as({("app",): Group({"memory.max": 1 << 30}), ("app", "t"): Group({})})
    observed[("app",)].cgroup_type = "domain threaded"  # the thread root: memory still works there
    observed[("app", "t")].cgroup_type = "threaded"
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert kinds(plan) == [(OpKind.SET, ("app", "t"), "cpu.weight"), (OpKind.SET, ("app", "t"), "pids.max")]
    [error] = plan.errors
    assert error.group == ("app", "t") and error.key == "memory.max"
    assert (
        "cgroup.type is 'threaded'" in error.message
        and "memory is not a threaded controller" in error.message
    )
    assert not plan.warnings  # a threaded group can hold processes: nothing to warn about


def test_groups_created_in_a_threaded_subtree_are_made_threaded_and_take_only_threaded_knobs() -> None:
    desired = {
        ("t",): Group({"cpu.weight": 50}),
        ("t", "new"): Group({"io.weight": 100, "pids.max": 5}),
        ("t", "new", "deeper"): Group({"memory.max": 1 << 20, "cpu.weight": 10}),
    }
    observed = observed_as({("t",): Group({"cpu.weight": 50})})
    observed[("t",)].cgroup_type = "threaded"
    observed[("t",)].subtree_control = frozenset()
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert [(e.group, e.key) for e in plan.errors] == [
        (("t", "new"), "io.weight"),
        (("t", "new", "deeper"), "memory.max"),
    ]
    assert plan.errors[0].message == (
        "cannot be honoured here: it is created in a threaded subtree, and io is not a threaded controller "
        "(in a threaded subtree only cpu, cpuset and pids work)"
    )
    # The kernel creates them "domain invalid" (no processes allowed): cgctl makes each threaded right
    # after creating it, before its limits and before its own children.
    assert kinds(plan) == [
        (OpKind.ENABLE, ("t",), None),
        (OpKind.CREATE, ("t", "new"), None),
        (OpKind.THREADED, ("t", "new"), None),
        (OpKind.SET, ("t", "new"), "pids.max"),
        (OpKind.ENABLE, ("t", "new"), None),
        (OpKind.CREATE, ("t", "new", "deeper"), None),
        (OpKind.THREADED, ("t", "new", "deeper"), None),
        (OpKind.SET, ("t", "new", "deeper"), "cpu.weight"),
    ]
    assert plan.ops[0].controllers == {"cpu", "pids"} and plan.ops[4].controllers == {"cpu"}
    assert plan.ops[2].describe() == "thread t/new cgroup.type: domain invalid -> threaded"
    assert not plan.warnings


def test_a_domain_invalid_group_is_warned_about_and_its_new_children_can_take_nothing() -> None:
    desired = {
        ("bad",): Group({"pids.max": 5}),
        ("bad", "kid"): Group({"pids.max": 3}),
    }
    observed = observed_as({("bad",): Group({"pids.max": 5})})
    observed[("bad",)].cgroup_type = "domain invalid"
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert [(w.group, w.message[:33]) for w in plan.warnings] == [
        (("bad",), "its cgroup.type is 'domain invali"),
        (("bad", "kid"), "it would be created under a 'doma"),
    ]
    [error] = plan.errors
    assert error.group == ("bad", "kid") and "parent's cgroup.type is 'domain invalid'" in error.message
    assert OpKind.THREADED not in [op.kind for op in plan.ops]


def test_threaded_errors_become_warnings_when_the_policy_allows() -> None:
    desired = {("t",): Group({"memory.max": 1 << 20, "cpu.weight": 20})}
    observed = observed_as({("t",): Group({})})
    observed[("t",)].cgroup_type = "threaded"
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2, on_unsupported="warn"))
    assert not plan.errors and "left out" in plan.warnings[0].message
    assert kinds(plan) == [(OpKind.SET, ("t",), "cpu.weight")]


def test_a_domain_knob_cgctl_set_before_the_group_became_threaded_is_not_reset() -> None:
    desired = {("t",): Group({"cpu.weight": 20})}
    observed = observed_as({("t",): Group({"cpu.weight": 20})})  # memory.max's file is gone
    observed[("t",)].cgroup_type = "threaded"
    last = {("t",): frozenset({"cpu.weight", "memory.max", "pids.max"})}
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2, last_applied=last))
    assert [(op.kind, op.key) for op in plan.ops] == [(OpKind.RESET, "pids.max")]


def test_cgroup_types_are_read_only_where_the_plan_writes_or_creates_children() -> None:
    desired = {
        ("same",): Group({"cpu.weight": 50}),
        ("changed",): Group({"cpu.weight": 60}),
        ("changed", "new"): Group({"pids.max": 3}),
        ("new",): Group({"pids.max": 4}),
    }
    observed = observed_as({("same",): Group({"cpu.weight": 50}), ("changed",): Group({"cpu.weight": 50})})
    plan = make_plan(PlanInput(desired=desired, observed=observed, capabilities=V2))
    assert groups_to_type(plan, observed) == [("changed",), ()]
    converged = make_plan(PlanInput(desired=desired, observed=observed_as(desired), capabilities=V2))
    assert groups_to_type(converged, observed_as(desired)) == []
