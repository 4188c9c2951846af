"""The executor's bookkeeping (order of undo steps, what is undone, what is reported), checked with an
in-memory recording driver. This proves pure logic only; the same rollback against the real kernel is
in tests/host/test_apply_host.py and tests/v2/test_apply_v2.py."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import pytest

from cgctl.apply import execute
from cgctl.plan import Op, OpKind, Plan
from drivers.api import (
    Capabilities,
    CgroupMode,
    Driver,
    DriverError,
    DriverOptions,
    GroupBusyError,
    GroupPath,
    GroupUsage,
    ObservedGroup,
    SettingKey,
    Value,
)


class RecordingDriver(Driver):
    """Keeps a dict of groups → values and logs every call; fails where told to."""

    name = "recording"

    def __init__(self, fail_on: tuple[str, GroupPath, str | None] | None = None) -> None:
        super().__init__(DriverOptions(root="t"))
        self.groups: dict[GroupPath, dict[SettingKey, Value]] = {(): {}}
        self.calls: list[str] = []
        self.fail_on = fail_on
        self.busy: set[GroupPath] = set()

    def _maybe_fail(self, what: str, path: GroupPath, key: str | None = None) -> None:
        self.calls.append(f"{what} {'/'.join(path)} {key or ''}".strip())
        if self.fail_on == (what, path, key):
            raise DriverError(
                "injected", group=path, target=f"/x/{key}", value="v", errno=22, cause="Invalid argument"
            )

    async def probe(self) -> Capabilities:
        return Capabilities(driver="recording", mode=CgroupMode.V2)

    async def observe(
        self,
        paths: Iterable[GroupPath],
        keys: Mapping[GroupPath, Collection[SettingKey]],
        *,
        state: Collection[GroupPath] | None = None,
        usage: Collection[GroupPath] | None = None,
        types: Collection[GroupPath] = (),
    ) -> dict[GroupPath, ObservedGroup]:
        return {p: ObservedGroup(exists=p in self.groups, values=dict(self.groups.get(p, {}))) for p in paths}

    async def create(self, path: GroupPath) -> None:
        self._maybe_fail("create", path)
        self.groups[path] = {}

    async def remove(self, path: GroupPath) -> None:
        self._maybe_fail("remove", path)
        if path in self.busy:
            raise GroupBusyError("group holds processes", group=path)
        del self.groups[path]

    async def set(self, path: GroupPath, key: SettingKey, value: Value) -> None:
        self._maybe_fail("set", path, key)
        self.groups[path][key] = value

    async def enable_controllers(self, path: GroupPath, controllers: Collection[str]) -> None:
        self._maybe_fail("enable", path)

    async def disable_controllers(self, path: GroupPath, controllers: Collection[str]) -> None:
        self._maybe_fail("disable", path)

    async def make_threaded(self, path: GroupPath) -> None:
        self._maybe_fail("thread", path)

    async def freeze(self, path: GroupPath, timeout: float) -> None:
        self._maybe_fail("freeze", path)

    async def thaw(self, path: GroupPath, timeout: float) -> None:
        self._maybe_fail("thaw", path)

    async def move(self, path: GroupPath, pids: Sequence[int]) -> None:
        raise NotImplementedError

    async def stats(self, paths: Iterable[GroupPath]) -> dict[GroupPath, GroupUsage]:
        return {}


def plan_of(*ops: Op) -> Plan:
    return Plan(ops=list(ops))


async def test_failure_undoes_finished_steps_in_reverse_and_restores_old_values() -> None:
    driver = RecordingDriver(fail_on=("set", ("b",), "pids.max"))
    driver.groups[("a",)] = {"cpu.weight": 100}
    plan = plan_of(
        Op(OpKind.SET, ("a",), "cpu.weight", 100, 500),
        Op(OpKind.ENABLE, (), controllers=frozenset({"pids"})),
        Op(OpKind.CREATE, ("b",)),
        Op(OpKind.SET, ("b",), "memory.max", None, 1 << 20),
        Op(OpKind.SET, ("b",), "pids.max", None, 5),
    )
    result = await execute(plan, driver)
    assert not result.ok
    assert result.failed is plan.ops[4]
    assert result.error is not None and result.error.cause == "Invalid argument"
    assert result.rollback_complete
    # Undo in reverse: the created group is removed (its files are not restored one by one first),
    # controllers disabled, the old value put back.
    assert driver.calls[5:] == ["remove b", "disable", "set a cpu.weight"]
    assert driver.groups == {(): {}, ("a",): {"cpu.weight": 100}}
    assert result.created == []


async def test_failed_undo_is_reported_and_the_created_group_stays_owned() -> None:
    driver = RecordingDriver(fail_on=("set", ("b",), "pids.max"))
    plan = plan_of(Op(OpKind.CREATE, ("b",)), Op(OpKind.SET, ("b",), "pids.max", None, 5))
    driver.busy.add(("b",))  # the undo's rmdir will find it populated
    result = await execute(plan, driver)
    assert not result.ok and not result.rollback_complete
    assert result.rollback_errors[0].startswith("undo of 'create b' failed")
    assert result.created == [("b",)]


async def test_freeze_failure_rolls_back_limits() -> None:
    driver = RecordingDriver(fail_on=("freeze", ("a",), None))
    driver.groups[("a",)] = {"pids.max": None}
    plan = plan_of(
        Op(OpKind.SET, ("a",), "pids.max", None, 9), Op(OpKind.FREEZE, ("a",), old=False, new=True)
    )
    result = await execute(plan, driver)
    assert not result.ok and result.rollback_complete
    assert driver.groups[("a",)] == {"pids.max": None}


async def test_prune_of_a_group_that_became_busy_is_kept_not_failed() -> None:
    driver = RecordingDriver()
    driver.groups[("old",)] = {}
    driver.busy.add(("old",))
    result = await execute(plan_of(Op(OpKind.REMOVE, ("old",))), driver)
    assert result.ok and result.removed == [] and "kept old" in result.notes[0]


@pytest.mark.parametrize("n", [0, 3])
async def test_success_reports_every_step(n: int) -> None:
    driver = RecordingDriver()
    ops = [Op(OpKind.CREATE, (f"g{i}",)) for i in range(n)]
    result = await execute(plan_of(*ops), driver)
    assert result.ok and len(result.done) == n and len(result.created) == n


async def test_a_group_made_threaded_by_this_apply_is_undone_by_removing_it() -> None:
    driver = RecordingDriver(fail_on=("set", ("t", "w"), "pids.max"))
    driver.groups[("t",)] = {}
    plan = plan_of(
        Op(OpKind.CREATE, ("t", "w")),
        Op(OpKind.THREADED, ("t", "w")),
        Op(OpKind.SET, ("t", "w"), "pids.max", None, 5),
    )
    result = await execute(plan, driver)
    assert not result.ok and result.failed is plan.ops[2] and result.rollback_complete
    assert driver.calls == ["create t/w", "thread t/w", "set t/w pids.max", "remove t/w"]
