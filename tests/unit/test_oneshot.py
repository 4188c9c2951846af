"""cgctl/oneshot.py: one-shot commands run without an event loop unless their driver needs one."""

from __future__ import annotations

import asyncio

import pytest

from cgctl import oneshot


async def _inner(value: int) -> int:
    return value * 2


def test_a_command_that_never_suspends_runs_inline_and_returns_its_value() -> None:
    seen: list[bool] = []

    async def command() -> int:
        seen.append(oneshot.inline())
        return await _inner(21)

    assert oneshot.run(command) == 42
    assert seen == [True]
    assert oneshot.inline() is False  # reset afterwards


def test_loop_required_restarts_the_command_under_asyncio() -> None:
    runs: list[tuple[bool, bool]] = []

    async def command() -> str:
        runs.append((oneshot.inline(), _loop_running()))
        if oneshot.inline():
            raise oneshot.LoopRequired("systemd")
        await asyncio.sleep(0)  # really suspends: only possible under the loop
        return "done"

    assert oneshot.run(command) == "done"
    assert runs == [(True, False), (False, True)]


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_a_coroutine_that_suspends_inline_is_a_bug_not_a_hang() -> None:
    class Suspend:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield None

    async def command() -> None:
        await Suspend()

    with pytest.raises(oneshot.SuspendedError):
        oneshot.run(command)
    assert oneshot.inline() is False


def test_errors_of_the_command_pass_through_unchanged() -> None:
    async def command() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        oneshot.run(command)
