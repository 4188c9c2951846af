"""The cgroupfs driver: cgctl writes the cgroup filesystem itself (v2, v1 or hybrid).

The async methods are thin: each runs one blocking call of the version's ops object (``ops_v2.V2Ops`` or
``ops_v1.V1Ops``) in ``asyncio.to_thread``, so an observe of a thousand groups is one thread hop, not
one per file. The exceptions are the writes that cannot block (mkdir, cpu/pids/io knobs, memory limits
above current usage): they run inline, because the hop would cost five times the write (see
``_quick``). With ``DriverOptions.inline`` (a one-shot CLI command, no event loop: cgctl/oneshot.py)
every call runs on the caller's thread and nothing suspends, so asyncio is not even imported. The layout
is read from ``/proc/self/mountinfo`` on first use.
"""

from __future__ import annotations

import _thread  # threading.Lock and RLock are these; the threading module costs ~1 ms of every start
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import ClassVar, ParamSpec, TypeVar

from drivers.api import (
    Capabilities,
    CgroupMode,
    Driver,
    DriverOptions,
    GroupPath,
    GroupUsage,
    Knob,
    ObservedGroup,
    SettingKey,
    UnsupportedError,
    Value,
    format_value,
    split_key,
)
from drivers.cgroupfs import convert, mountinfo, v1
from drivers.cgroupfs.common import read_values
from drivers.cgroupfs.ops_v1 import V1Ops
from drivers.cgroupfs.ops_v1 import populated as populated_v1
from drivers.cgroupfs.ops_v2 import V2Ops

INLINE_SLICE = 0.002  # longest stretch of inline writes before the event loop gets a turn

P = ParamSpec("P")
T = TypeVar("T")


class CgroupfsDriver(Driver):
    name: ClassVar[str] = "cgroupfs"
    needs_event_loop: ClassVar[bool] = False

    def __init__(self, options: DriverOptions) -> None:
        super().__init__(options)
        self._ops: V1Ops | V2Ops | None = None
        self._lock = _thread.allocate_lock()
        # seconds from the freeze/thaw write to the kernel's confirmation, for benchmarks and logs
        self.last_confirmation_seconds: float | None = None
        self._last_yield = time.monotonic()
        # Groups this driver created since its last observe: empty, so no memory limit written to them
        # can reclaim (their writes run inline without reading the usage first).
        self._fresh: set[GroupPath] = set()
        self._described: dict[tuple[SettingKey, type, Value], str] = {}

    @classmethod
    def usable(cls) -> tuple[bool, str]:
        layout = mountinfo.read_layout()
        if layout.mode is None:
            return False, "no cgroup filesystem is mounted under /sys/fs/cgroup"
        if not os.access("/sys/fs/cgroup", os.W_OK) and not any(
            os.access(h.mountpoint, os.W_OK) for h in layout.hierarchies
        ):
            return False, "the cgroup filesystem is not writable by this user"
        return True, f"cgroup {layout.mode.value} at /sys/fs/cgroup"

    # -- plumbing --------------------------------------------------------------------------------

    def _get_ops(self) -> V1Ops | V2Ops:
        ops = self._ops
        if ops is not None:  # the hot path (once per write): no lock needed to read a set attribute
            return ops
        with self._lock:
            if self._ops is None:
                layout = mountinfo.read_layout(self.options.mountpoint)
                if layout.mode is None:
                    raise UnsupportedError(f"no cgroup filesystem is mounted under {self.options.mountpoint}")
                if layout.mode is CgroupMode.V2:
                    self._ops = V2Ops(layout, self.options.root)
                else:
                    self._ops = V1Ops(layout, self.options.root)
            return self._ops

    @property
    def ops(self) -> V1Ops | V2Ops:
        """The blocking operations (for callers already off the event loop, e.g. benchmarks)."""
        return self._get_ops()

    async def close(self) -> None:
        with self._lock:
            if self._ops is not None:
                self._ops.close()
                self._ops = None

    async def _blocking(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a call that may block: in a worker thread, or right here when there is no loop."""
        if self.options.inline:
            return call(*args, **kwargs)
        import asyncio

        return await asyncio.to_thread(call, *args, **kwargs)

    # -- Driver ----------------------------------------------------------------------------------

    async def probe(self) -> Capabilities:
        return await self._blocking(lambda: self._get_ops().probe(self.name))

    def effective_value(self, key: SettingKey, value: Value) -> Value:
        return self._get_ops().effective(key, value)

    def describe_value(self, key: SettingKey, value: Value) -> str:
        """v2 syntax; on v1 a weight also shows the cpu.shares it is written as (the plan line names the
        cpu.shares file, so the converted value must be visible next to it)."""
        # Memoized: a plan shows a handful of distinct values thousands of times (a plan line costs
        # more than the write it describes otherwise). The type is in the key: True and 1 are equal.
        memo_key = (key, value.__class__, value)
        text = self._described.get(memo_key)
        if text is None:
            text = format_value(value)
            ops = self._get_ops()
            if isinstance(ops, V1Ops) and split_key(key)[0] is Knob.CPU_WEIGHT and isinstance(value, int):
                text = f"{text} (shares {convert.weight_to_shares(value)})"
            self._described[memo_key] = text
        return text

    def target_of(self, path: GroupPath, key: SettingKey) -> str:
        ops = self._get_ops()
        knob = split_key(key)[0]
        if isinstance(ops, V1Ops) and knob in v1.TABLE:
            spec = v1.TABLE[knob]
            tree = ops.tree_for.get(spec.controller)
            if tree is not None:
                base = tree.display(path)
                if len(spec.files) == 1:
                    return f"{base}/{spec.files[0]}"
                return " + ".join([f"{base}/{file}" for file in spec.files])
            return f"{ops.display(path)} ({knob.value}: hierarchy not mounted)"
        return f"{ops.display(path)}/{key.split('[', 1)[0]}"

    async def observe(
        self,
        paths: Iterable[GroupPath],
        keys: Mapping[GroupPath, Collection[SettingKey]],
        *,
        state: Collection[GroupPath] | None = None,
        usage: Collection[GroupPath] | None = None,
        types: Collection[GroupPath] = (),
    ) -> dict[GroupPath, ObservedGroup]:
        wanted = list(paths)
        self._fresh.clear()
        with_state = None if state is None else frozenset(state)
        with_usage = None if usage is None else frozenset(usage)
        with_types = frozenset(types)
        return await self._blocking(
            lambda: self._get_ops().observe(wanted, keys, with_state, with_usage, with_types)
        )

    async def _quick(self, call: Callable[[], None]) -> None:
        """Run a write the kernel finishes in microseconds on the loop's own thread (with a loop: inline
        mode calls the ops directly).

        A thread hop costs 75–130 µs here, five times a cgroupfs mkdir or write (15–20 µs), and an apply
        is one call per group and knob: 1000 groups × 5 hops would add ~0.5 s. These calls cannot
        block (no reclaim, no waiting, no retries), and the loop is handed back every 2 ms so a scrape
        or a control request never waits behind a long apply.
        """
        now = time.monotonic()
        if now - self._last_yield >= INLINE_SLICE:
            self._last_yield = now
            import asyncio

            await asyncio.sleep(0)
        call()

    async def create(self, path: GroupPath) -> None:
        ops = self._get_ops()
        if self.options.inline:
            ops.create(path)
        else:
            await self._quick(lambda: ops.create(path))
        self._fresh.add(path)

    async def remove(self, path: GroupPath) -> None:
        # rmdir may retry with sleeps while exiting tasks leave: off the loop
        await self._blocking(lambda: self._get_ops().remove(path))

    async def set(self, path: GroupPath, key: SettingKey, value: Value) -> None:
        ops = self._get_ops()
        if self.options.inline:  # nothing else to keep responsive: every write runs right here
            ops.set(path, key, value)
        elif path in self._fresh or ops.write_is_quick(path, key, value):
            await self._quick(lambda: ops.set(path, key, value))
        else:  # may reclaim memory or rebuild scheduling domains: off the loop
            await self._blocking(ops.set, path, key, value)

    async def enable_controllers(self, path: GroupPath, controllers: Collection[str]) -> None:
        ops = await self._blocking(self._get_ops)
        if not isinstance(ops, V2Ops):
            await super().enable_controllers(path, controllers)
            return
        await self._blocking(ops.enable, path, frozenset(controllers))

    async def make_threaded(self, path: GroupPath) -> None:
        ops = self._get_ops()
        if not isinstance(ops, V2Ops):
            await super().make_threaded(path)
            return
        await self._blocking(ops.make_threaded, path)

    async def disable_controllers(self, path: GroupPath, controllers: Collection[str]) -> None:
        ops = await self._blocking(self._get_ops)
        if not isinstance(ops, V2Ops):
            await super().disable_controllers(path, controllers)
            return
        await self._blocking(ops.disable, path, frozenset(controllers))

    async def freeze(self, path: GroupPath, timeout: float) -> None:
        self.last_confirmation_seconds = await self._blocking(
            lambda: self._get_ops().set_frozen(path, True, timeout)
        )

    async def thaw(self, path: GroupPath, timeout: float) -> None:
        self.last_confirmation_seconds = await self._blocking(
            lambda: self._get_ops().set_frozen(path, False, timeout)
        )

    async def move(self, path: GroupPath, pids: Sequence[int]) -> None:
        pid_list = list(pids)
        await self._blocking(lambda: self._get_ops().move(path, pid_list))

    async def stats(self, paths: Iterable[GroupPath]) -> dict[GroupPath, GroupUsage]:
        wanted = list(paths)
        return await self._blocking(self._stats, wanted)

    def _stats(self, paths: list[GroupPath]) -> dict[GroupPath, GroupUsage]:
        """Usage from ``usage.py`` (the exporter's readers); on v1 the limits come from this driver's own
        table so they match what ``observe`` reports (one set of v1 conversions)."""
        from drivers.cgroupfs import usage  # the exporter's readers: only `cgctl show` needs them

        ops = self._get_ops()
        cgroups = {"/" + "/".join((*ops.parts, *path)): path for path in paths}
        out: dict[GroupPath, GroupUsage] = {}
        if isinstance(ops, V2Ops):
            assert ops.layout.unified is not None
            for cgroup, group_usage in usage.read_v2(ops.layout.unified, cgroups, limits=True).items():
                out[cgroups[cgroup]] = group_usage
            return out
        hierarchies = {c: t.mountpoint for c, t in ops.tree_for.items()}
        found = usage.read_v1(hierarchies, cgroups, limits=False, unified=ops.layout.unified)
        keys = [k.value for k in v1.TABLE if k not in v1.UNSUPPORTED and k.value != "io.max"]
        for cgroup, group_usage in found.items():
            path = cgroups[cgroup]
            primary = ops.primary.try_open(path)
            if primary is not None:
                with primary:  # v1 has no cgroup.events: populated = tasks here or below
                    group_usage.populated = populated_v1(primary)
            for tree in ops.trees:
                gd = tree.try_open(path)
                if gd is None:
                    continue
                with gd:
                    mine = [k for k in keys if ops.tree_for.get(v1.TABLE[split_key(k)[0]].controller) is tree]
                    group_usage.limits.update(read_values(gd, mine, v1.TABLE))
            out[path] = group_usage
        return out
