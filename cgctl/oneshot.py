"""Running a one-shot command (``cgctl apply``, ``freeze``…) without an event loop when it needs none.

The driver API is async because the agent serves scrapes and control requests while it applies. A
one-shot command has nobody to stay responsive for, and with the cgroupfs driver nothing in it ever
suspends: the driver then runs its blocking calls on the caller's thread (``DriverOptions.inline``).
Such a coroutine finishes on its first ``send(None)``, so it needs no loop — and ``import asyncio``
alone costs 25–50 ms here, a sixth of a 1000-group re-apply and a third of ``cgctl freeze``.

A driver that does suspend (systemd: D-Bus round trips) says so (``Driver.needs_event_loop``). The CLI
asks :func:`inline` before it creates a driver and raises :class:`LoopRequired` if the command must run
under asyncio; that happens before any side effect, and :func:`run` then starts the command again
under ``asyncio.run``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_inline = False


class LoopRequired(Exception):
    """Raised by a command, before it has changed anything, when it needs a real event loop."""


class SuspendedError(RuntimeError):
    """A coroutine run inline tried to wait for something: a bug (the driver said it needed no loop)."""


def inline() -> bool:
    """Whether the current command runs without an event loop (drivers must not suspend)."""
    return _inline


def run(command: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``command()`` to completion: inline first, under ``asyncio.run`` if it raises LoopRequired."""
    global _inline
    coro = command()
    _inline = True
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    except LoopRequired:
        pass
    else:
        coro.close()
        raise SuspendedError(f"{command!r} suspended while running without an event loop")
    finally:
        _inline = False
    import asyncio

    return asyncio.run(command())
