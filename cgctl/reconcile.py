"""One reconcile pass of the agent: observe → plan → (in enforce mode) apply, with drift accounting.

Drift is a difference between the kernel and a policy that has not changed since the last pass: someone
ran ``cgset``, a deploy script wrote ``memory.max``, a group disappeared. Differences right after the
policy itself changed are an ordinary apply, not drift. A policy file that stops validating is rejected
and the last good policy kept: the agent never applies half a policy and never dies of bad input.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from drivers.api import Driver, DriverError, format_path, format_value
from drivers.records import field, record

from .apply import ApplyResult
from .engine import Prepared, prepare, run_apply
from .lock import LockBusyError, writer_lock
from .plan import OpKind
from .policy import Policy, PolicyError, load_policy

log = logging.getLogger("cgctl.agent")


@record(frozen=True)
class Drift:
    group: str
    knob: str
    observed: str
    desired: str


@record
class Outcome:
    reason: str
    drift: list[Drift] = field(default_factory=list)
    planned: int = 0
    result: ApplyResult | None = None
    error: str | None = None  # a plan error or a driver failure while observing
    seconds: float = 0.0

    @property
    def label(self) -> str:
        """cgctl_apply_total{result=...}: ok | error | noop (nothing to change) | skipped (report mode)."""
        if self.error is not None or (self.result is not None and not self.result.ok):
            return "error"
        if self.result is None:
            return "noop" if self.planned == 0 else "skipped"
        return "ok"


class Reconciler:
    def __init__(self, policy_path: str, driver: Driver, *, enforce: bool) -> None:
        self.policy_path = policy_path
        self.driver = driver
        self.enforce = enforce
        self.policy: Policy | None = None
        self.policy_mtime: float | None = None
        self.policy_error: str | None = None
        self._policy_changed = True
        self.lock = asyncio.Lock()
        self.last_outcome: Outcome | None = None

    def policy_file_changed(self) -> bool:
        try:
            return os.stat(self.policy_path).st_mtime != self.policy_mtime
        except OSError:
            return self.policy_mtime is not None

    def load(self) -> bool:
        """(Re)load the policy. On error keep the last good one and return False."""
        try:
            mtime = os.stat(self.policy_path).st_mtime
            policy = load_policy(self.policy_path)
        except PolicyError as exc:
            self.policy_mtime = os.stat(self.policy_path).st_mtime
            self.policy_error = "; ".join(str(e) for e in exc.errors)
            log.error(
                "event=policy_rejected file=%s errors=%r kept=last_good", self.policy_path, self.policy_error
            )
            return False
        except OSError as exc:
            self.policy_error = f"{self.policy_path}: {exc.strerror}"
            log.error(
                "event=policy_unreadable file=%s error=%r kept=last_good", self.policy_path, exc.strerror
            )
            return False
        if self.policy is not None and policy.root != self.policy.root:
            self.policy_error = (
                f"root changed from {self.policy.root!r} to {policy.root!r}: restart the agent"
            )
            log.error("event=policy_rejected file=%s error=%r", self.policy_path, self.policy_error)
            self.policy_mtime = mtime
            return False
        self.policy, self.policy_mtime, self.policy_error = policy, mtime, None
        self._policy_changed = True
        log.info("event=policy_loaded file=%s groups=%d", self.policy_path, len(policy.groups))
        return True

    async def reconcile(self, reason: str) -> Outcome:
        async with self.lock:
            outcome = await self._reconcile(reason)
            self.last_outcome = outcome
            return outcome

    async def _reconcile(self, reason: str) -> Outcome:
        start = time.monotonic()
        outcome = Outcome(reason)
        policy = self.policy
        if policy is None:
            outcome.error = self.policy_error or "no policy loaded"
            return outcome
        try:
            prepared = await prepare(policy, self.driver)
        except DriverError as exc:
            outcome.error = f"observing failed: {exc}"
            log.error("event=observe_failed error=%r", str(exc))
            return outcome
        plan = prepared.plan
        if plan.errors:
            outcome.error = "; ".join(str(e) for e in plan.errors)
            log.error("event=plan_rejected errors=%r", outcome.error)
            return outcome
        outcome.planned = len(plan.ops)
        if not self._policy_changed:
            outcome.drift = _drift_of(prepared)
            for d in outcome.drift:
                log.warning(
                    "event=drift group=%s knob=%s observed=%s desired=%s action=%s",
                    d.group,
                    d.knob,
                    d.observed,
                    d.desired,
                    "correct" if self.enforce else "report",
                )
        if plan.ops and self.enforce:
            outcome.result = await self._apply(prepared)
            if outcome.result is not None and outcome.result.ok:
                self._policy_changed = False
        elif not plan.ops:
            self._policy_changed = False
        outcome.seconds = time.monotonic() - start
        log.info(
            "event=reconciled reason=%s planned=%d drift=%d result=%s seconds=%.3f",
            reason,
            outcome.planned,
            len(outcome.drift),
            outcome.label,
            outcome.seconds,
        )
        return outcome

    async def _apply(self, prepared: Prepared) -> ApplyResult | None:
        try:
            with writer_lock(timeout=0):
                result = await run_apply(prepared)
        except LockBusyError as exc:
            # Someone runs cgctl directly against this root: try again next pass rather than fight.
            log.warning("event=apply_deferred reason=%r", str(exc))
            return None
        if not result.ok:
            log.error(
                "event=apply_failed step=%r error=%r rollback_complete=%s",
                result.failed.describe() if result.failed else "",
                str(result.error),
                result.rollback_complete,
            )
        return result


def _drift_of(prepared: Prepared) -> list[Drift]:
    out: list[Drift] = []
    for op in prepared.plan.ops:
        group = format_path(op.path)
        if op.kind in (OpKind.SET, OpKind.RESET) and op.key is not None:
            out.append(Drift(group, op.key, format_value(op.old), format_value(op.new)))
        elif op.kind is OpKind.CREATE:
            out.append(Drift(group, "exists", "missing", "present"))
        elif op.kind in (OpKind.FREEZE, OpKind.THAW):
            out.append(Drift(group, "frozen", format_value(op.old), format_value(op.new)))
        elif op.kind is OpKind.ENABLE:
            out.append(Drift(group, "subtree_control", "", "+" + " +".join(sorted(op.controllers))))
        elif op.kind is OpKind.THREADED:
            out.append(Drift(group, "cgroup.type", "domain invalid", "threaded"))
    return out
