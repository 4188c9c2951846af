"""observe → plan → apply, shared by the CLI and the agent.

This is the only place that joins the policy, the driver, the remembered state and the planner, so the
CLI and the agent cannot drift apart in what "apply" means.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from drivers.api import Capabilities, Driver, GroupPath, ObservedGroup, SettingKey, split_key
from drivers.records import record

from .apply import DEFAULT_FREEZE_TIMEOUT, ApplyResult, execute
from .plan import Describer, Op, Plan, PlanInput, groups_to_type, keys_to_observe, make_plan, memory_lowered
from .policy import Policy
from .state import State


@record
class Prepared:
    policy: Policy
    driver: Driver
    capabilities: Capabilities
    observed: dict[GroupPath, ObservedGroup]
    state: State
    plan: Plan
    timings: dict[str, float]  # seconds per phase, for --output json and benchmarks


def _where(policy: Policy) -> Callable[[GroupPath, SettingKey | None], str]:
    def where(path: GroupPath, key: SettingKey | None) -> str:
        spec = policy.groups.get(path)
        if spec is None:
            return ""
        ref = spec.origins.get(key, spec.origin) if key is not None else spec.origin
        return f"{ref}: {policy.field_name(path, key)}"

    return where


async def prepare(policy: Policy, driver: Driver, *, prune: bool = False) -> Prepared:
    started = time.perf_counter()
    capabilities = await driver.probe()
    state = State.load(driver.name, policy.root)
    keys = keys_to_observe(policy.groups, state.last_applied)
    paths = {(), *policy.groups, *state.created}
    probed = time.perf_counter()
    # The planner looks at frozen state only where the policy sets `frozen`, and at populated only
    # when pruning: other groups' flags need not be read.
    flags_of = None if prune else [path for path, spec in policy.groups.items() if spec.frozen is not None]
    observed = await driver.observe(sorted(paths), keys, state=flags_of, usage=())
    observed_at = time.perf_counter()
    plan_input = PlanInput(
        desired=policy.groups,
        observed=observed,
        capabilities=capabilities,
        last_applied=state.last_applied,
        owned=frozenset(state.created),
        prune=prune,
        on_unsupported=policy.on_unsupported,
        where=_where(policy),
        effective=driver.effective_value,
    )
    plan = make_plan(plan_input)
    # What only matters where the plan writes is read then, for those groups alone, and planned again:
    # the memory usage where a limit goes down (the plan warns when below usage), and on v2 the
    # cgroup.type where a group may be threaded (only threaded controllers work there).
    lowered = memory_lowered(plan, observed)
    typed = groups_to_type(plan, observed) if capabilities.needs_subtree_control else []
    if lowered or typed:
        again_paths = list(dict.fromkeys([*lowered, *typed]))
        again = await driver.observe(
            again_paths, {path: () for path in again_paths}, state=(), usage=lowered, types=typed
        )
        for path in lowered:
            observed[path].memory_current = again[path].memory_current
        for path in typed:
            observed[path].cgroup_type = again[path].cgroup_type
        plan = make_plan(plan_input)
    timings = {
        "probe": probed - started,
        "observe": observed_at - probed,
        "plan": time.perf_counter() - observed_at,
    }
    return Prepared(policy, driver, capabilities, observed, state, plan, timings)


def applied_settings(prepared: Prepared) -> Mapping[GroupPath, frozenset[SettingKey]]:
    """The settings this apply is responsible for from now on (unsupported ones left out)."""
    unsupported = prepared.capabilities.unsupported
    out: dict[GroupPath, frozenset[SettingKey]] = {}
    for path, spec in prepared.policy.groups.items():
        out[path] = frozenset(key for key in spec.resources if split_key(key)[0] not in unsupported)
    return out


async def run_apply(
    prepared: Prepared,
    *,
    freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT,
    on_step: Callable[[Op], None] | None = None,
) -> ApplyResult:
    """Execute a prepared plan and record the outcome in the state file (also after a failure, so the
    groups a partial rollback left behind stay owned by cgctl)."""
    result = await execute(prepared.plan, prepared.driver, freeze_timeout=freeze_timeout, on_step=on_step)
    state = prepared.state
    if result.ok:
        state.record_apply(applied_settings(prepared), result.created, result.removed)
        state.save()
    elif result.created:
        state.record_created(result.created)
        state.save()
    return result


def failure_report(result: ApplyResult, driver: Describer) -> tuple[str, list[str]]:
    """What a failed apply says, the same from the CLI and through the agent: the headline, then the
    step, the file, the value, the kernel's words, and whether the rollback put the tree back."""
    assert result.failed is not None and result.error is not None
    error = result.error
    details = [f"step: {result.failed.describe(driver)}"]
    if error.target:
        details.append(f"file: {error.target}")
    if error.value is not None:
        details.append(f"value: {error.value}")
    if error.cause:
        details.append(f"kernel said: {error.cause}")
    if result.rollback_complete:
        done = len(result.rolled_back)
        details.append(f"rolled back {done} finished step(s): the tree is as it was before")
    else:
        details.append("ROLLBACK INCOMPLETE — these undo steps failed, the tree is partly changed:")
        details.extend(f"  {e}" for e in result.rollback_errors)
    return f"apply failed: {error.message}", details
