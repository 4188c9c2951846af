"""Executing a plan through a driver, transactionally.

Each finished step is recorded with its inverse. On the first failure the finished steps are undone in
reverse (old values restored, groups this apply created removed, controllers it enabled disabled,
freezes thawed), and the result says which step failed, why, and whether the rollback fully succeeded
— so the operator knows the exact state of the tree either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from drivers.api import Driver, DriverError, GroupBusyError, GroupPath, format_path
from drivers.records import field, record

from .plan import Op, OpKind, Plan

DEFAULT_FREEZE_TIMEOUT = 10.0


@record
class ApplyResult:
    done: list[Op] = field(default_factory=list)
    failed: Op | None = None
    error: DriverError | None = None
    rollback_errors: list[str] = field(default_factory=list)
    rolled_back: list[Op] = field(default_factory=list)
    # Groups created by this apply that still exist at the end (ownership to record).
    created: list[GroupPath] = field(default_factory=list)
    removed: list[GroupPath] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed is None

    @property
    def rollback_complete(self) -> bool:
        return not self.rollback_errors

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "steps_done": len(self.done),
            "failed_step": self.failed.to_json() if self.failed else None,
            "error": str(self.error) if self.error else None,
            "rolled_back_steps": len(self.rolled_back),
            "rollback_complete": self.rollback_complete,
            "rollback_errors": self.rollback_errors,
            "notes": self.notes,
            "seconds": round(self.seconds, 6),
        }


async def _run(driver: Driver, op: Op, freeze_timeout: float) -> None:
    if op.kind is OpKind.CREATE:
        await driver.create(op.path)
    elif op.kind is OpKind.ENABLE:
        await driver.enable_controllers(op.path, op.controllers)
    elif op.kind in (OpKind.SET, OpKind.RESET):
        assert op.key is not None
        await driver.set(op.path, op.key, op.new)
    elif op.kind is OpKind.THREADED:
        await driver.make_threaded(op.path)
    elif op.kind is OpKind.FREEZE:
        await driver.freeze(op.path, freeze_timeout)
    elif op.kind is OpKind.THAW:
        await driver.thaw(op.path, freeze_timeout)
    elif op.kind is OpKind.REMOVE:
        await driver.remove(op.path)
    else:  # pragma: no cover - exhaustive
        raise AssertionError(op.kind)


async def _undo(driver: Driver, op: Op, created: set[GroupPath], freeze_timeout: float) -> None:
    if op.kind is OpKind.CREATE:
        await driver.remove(op.path)
    elif op.kind is OpKind.ENABLE:
        await driver.disable_controllers(op.path, op.controllers)
    elif op.kind in (OpKind.SET, OpKind.RESET):
        # A group this apply created is removed as a whole; restoring its files first is pointless.
        if op.path not in created:
            assert op.key is not None
            await driver.set(op.path, op.key, op.old)
    # THREADED: only planned for a group this apply created, which its CREATE's undo removes whole
    elif op.kind is OpKind.FREEZE:
        await driver.thaw(op.path, freeze_timeout)
    elif op.kind is OpKind.THAW:
        await driver.freeze(op.path, freeze_timeout)
    elif op.kind is OpKind.REMOVE:
        await driver.create(op.path)
        for key, value in op.snapshot:
            await driver.set(op.path, key, value)


async def execute(
    plan: Plan,
    driver: Driver,
    *,
    freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT,
    on_step: Callable[[Op], None] | None = None,
) -> ApplyResult:
    """Run the plan's operations in order; roll back on the first failure."""
    start = time.monotonic()
    result = ApplyResult()
    created: set[GroupPath] = set()
    for op in plan.ops:
        try:
            await _run(driver, op, freeze_timeout)
        except GroupBusyError as exc:
            if op.kind is OpKind.REMOVE:
                # The group gained a process or a child since we looked: keep it, like a populated one.
                result.notes.append(f"kept {format_path(op.path)}: {exc.message}")
                continue
            result.failed, result.error = op, exc
            break
        except DriverError as exc:
            result.failed, result.error = op, exc
            break
        result.done.append(op)
        if op.kind is OpKind.CREATE:
            created.add(op.path)
        elif op.kind is OpKind.REMOVE:
            result.removed.append(op.path)
        if on_step is not None:
            on_step(op)
    if result.failed is not None:
        for op in reversed(result.done):
            try:
                await _undo(driver, op, created, freeze_timeout)
            except DriverError as exc:
                result.rollback_errors.append(f"undo of '{op.describe()}' failed: {exc}")
                continue
            result.rolled_back.append(op)
            if op.kind is OpKind.CREATE:
                created.discard(op.path)
    result.created = sorted(created, key=lambda p: (len(p), p))
    result.seconds = time.monotonic() - start
    return result
