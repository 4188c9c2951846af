"""What the agent does for a request on its control socket (``cgctl apply/freeze/thaw`` while it runs).

The agent is the host's one writer, so these run under the reconciler's lock, in order with the
reconcile loop. ``apply`` is only accepted for the agent's own policy file: applying another file would
be reverted by the next reconcile, so the agent says so instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from drivers.api import DriverError

from .names import InvalidNameError, parse_group_path

if TYPE_CHECKING:
    from .agent import Agent


def _reply(code: int, stdout: str = "", stderr: str = "") -> dict[str, Any]:
    return {"ok": code == 0, "exit": code, "stdout": stdout, "stderr": stderr}


async def handle_request(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "apply":
        return await _apply(agent, request)
    if op in ("freeze", "thaw"):
        return await _freeze(agent, request, freeze=op == "freeze")
    if op == "status":
        ok, text = agent.healthy()
        return _reply(0 if ok else 1, text + "\n")
    return _reply(2, stderr=f"unknown request {op!r}")


async def _apply(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    from .engine import failure_report, prepare, run_apply
    from .plan import summarize

    reconciler = agent.reconciler
    assert reconciler is not None
    wanted = os.path.realpath(str(request.get("policy", "")))
    mine = os.path.realpath(reconciler.policy_path)
    if wanted != mine:
        return _reply(
            2,
            stderr=(
                f"the running agent manages {mine}; applying {wanted} would be reverted by its next "
                "reconcile. Edit the agent's policy (it reloads on change or SIGHUP) or stop the agent."
            ),
        )
    async with reconciler.lock:
        if not reconciler.load():
            return _reply(2, stderr=f"invalid policy, nothing written: {reconciler.policy_error}")
        assert reconciler.policy is not None
        try:
            prepared = await prepare(reconciler.policy, reconciler.driver, prune=bool(request.get("prune")))
        except DriverError as exc:
            return _reply(1, stderr=f"reading the current state failed: {exc}")
        plan = prepared.plan
        if plan.errors:
            return _reply(2, stderr="\n".join(str(e) for e in plan.errors))
        lines = [op.describe(reconciler.driver) for op in plan.ops] + [f"# {n}" for n in plan.notes]
        warnings = "\n".join(f"warning: {w}" for w in plan.warnings)
        if request.get("dry_run") or not plan.ops:
            lines.append("# in sync: nothing to do" if not plan.ops else "# dry run: nothing written")
            return _reply(0, "\n".join(lines) + "\n", warnings)
        result = await run_apply(prepared)
    if result.ok:
        lines.append(f"applied through the agent: {summarize(result.done)}")
        return _reply(0, "\n".join(lines) + "\n", warnings)
    headline, details = failure_report(result, reconciler.driver)
    report = [f"cgctl: {headline}", *(f"  {line}" for line in details)]  # as the CLI prints it
    return _reply(1, "\n".join(lines) + "\n", "\n".join([warnings, *report] if warnings else report))


async def _freeze(agent: Agent, request: dict[str, Any], *, freeze: bool) -> dict[str, Any]:
    reconciler = agent.reconciler
    assert reconciler is not None
    try:
        path = parse_group_path(str(request.get("group", "")))
    except InvalidNameError as exc:
        return _reply(2, stderr=f"GROUP: {exc}")
    timeout = float(request.get("timeout", 10.0))
    driver = reconciler.driver
    async with reconciler.lock:
        observed = await driver.observe([path], {path: ()})
        if not observed[path].exists:
            return _reply(2, stderr=f"group {'/'.join(path)!r} does not exist")
        try:
            if freeze:
                await driver.freeze(path, timeout)
            else:
                await driver.thaw(path, timeout)
        except DriverError as exc:
            return _reply(1, stderr=f"{'freeze' if freeze else 'thaw'} failed: {exc}")
    return _reply(0, f"{'/'.join(path)}: {'frozen' if freeze else 'thawed'} (through the agent)\n")
