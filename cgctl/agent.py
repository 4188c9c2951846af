"""``cgctl agent``: one asyncio process that keeps the tree converged and publishes usage.

Start: load the policy → reconcile once → ``READY=1`` → then, concurrently: the reconcile loop (every
``--interval``, on a policy-file change, on SIGHUP), the ``/metrics`` + ``/healthz`` HTTP endpoint, the
control socket the CLI uses (one writer per host), and the watchdog ping from the event loop itself (a
stuck loop stops the pings and systemd restarts the agent). SIGTERM finishes the step in flight, stops
serving and exits 0; nothing is lost because the kernel's tree and the policy are the truth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import gc
import logging
import os
import signal
import sys
from typing import Any

from drivers.api import DriverError, DriverOptions

from .control import ControlServer
from .reconcile import Outcome, Reconciler
from .registry import UnknownDriverError, make_driver
from .sdnotify import Notifier

log = logging.getLogger("cgctl.agent")

POLICY_POLL_SECONDS = 2.0


def _setup_logging() -> None:
    # Under systemd (JOURNAL_STREAM set) the journal adds its own timestamps.
    fmt = (
        "%(levelname)s %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(message)s"
    )
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)


def _parse_listen(text: str) -> tuple[str, int] | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return (host.strip("[]") or "127.0.0.1", int(port))


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.notifier = Notifier()
        self.stop_event = asyncio.Event()
        self.wake_event = asyncio.Event()
        self.wake_reason = "interval"
        self.reconciler: Reconciler | None = None
        self.cgroup_mode = ""
        self.metrics: Any = None  # exporters.AgentMetrics, created in run()
        self._servers: list[Any] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> int:
        args = self.args
        from .policy import PolicyError, load_policy

        try:
            policy = load_policy(args.policy)
        except PolicyError as exc:
            for issue in exc.errors:
                log.error("event=policy_invalid %s", issue)
            return 2
        except OSError as exc:
            log.error("event=policy_unreadable file=%s error=%r", args.policy, exc.strerror)
            return 2
        try:
            driver, why = make_driver(args.driver or policy.driver, DriverOptions(root=policy.root))
        except UnknownDriverError as exc:
            log.error("event=driver_unknown error=%r", str(exc))
            return 2
        log.info("event=start policy=%s driver=%s why=%r mode=%s", args.policy, driver.name, why, args.mode)
        reconciler = Reconciler(args.policy, driver, enforce=args.mode == "enforce")
        self.reconciler = reconciler
        reconciler.load()
        try:
            capabilities = await driver.probe()
        except DriverError as exc:
            log.error("event=probe_failed error=%r", str(exc))
            return 1
        self.cgroup_mode = capabilities.mode.value
        self.metrics = _make_metrics(driver.name, capabilities.mode.value)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self._wake, "sighup")

        self._record(await reconciler.reconcile("startup"))
        try:
            await self._start_servers()
        except OSError as exc:
            log.error("event=listen_failed error=%r", str(exc))
            await driver.close()
            return 1
        # Everything allocated so far (modules, the policy, the driver) lives for the whole run: move it
        # out of the collector's sight, so a full collection during a 5000-group scrape does not walk it
        # (measured: the longest loop stall fell from 42.6 ms to 7.1 ms; bench/RESULTS-scrape.md).
        gc.freeze()
        self.notifier.notify(READY=1, STATUS=self._status())
        log.info("event=ready")

        tasks = [
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._watch_policy(), name="policy-watch"),
        ]
        if self.notifier.watchdog_interval:
            tasks.append(
                asyncio.create_task(self._watchdog(self.notifier.watchdog_interval), name="watchdog")
            )
        await self.stop_event.wait()
        log.info("event=stopping")
        self.notifier.notify(STOPPING=1, STATUS="stopping")
        # Let a reconcile in flight finish its step: it holds the reconciler's lock.
        async with reconciler.lock:
            for task in tasks:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers:
            await server.close()
        await driver.close()
        self.notifier.close()
        log.info("event=stopped")
        return 0

    def _wake(self, reason: str) -> None:
        self.wake_reason = reason
        self.wake_event.set()

    # -- loops ----------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        assert self.reconciler is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake_event.wait(), timeout=self.args.interval)
            reason = self.wake_reason if self.wake_event.is_set() else "interval"
            self.wake_event.clear()
            self.wake_reason = "interval"
            if reason in ("sighup", "policy-changed"):
                self.reconciler.load()
            self._record(await self.reconciler.reconcile(reason))
            self.notifier.notify(STATUS=self._status())

    async def _watch_policy(self) -> None:
        assert self.reconciler is not None
        while True:
            await asyncio.sleep(POLICY_POLL_SECONDS)
            if self.reconciler.policy_file_changed():
                self._wake("policy-changed")

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.notify(WATCHDOG=1)
            await asyncio.sleep(interval)

    # -- servers --------------------------------------------------------------------------------

    async def _start_servers(self) -> None:
        args = self.args
        listen = _parse_listen(args.listen)
        if listen is not None:
            from .metrics_wiring import start_metrics_server

            self._servers.append(await start_metrics_server(self, listen))
            log.info("event=listening address=%s:%d", *listen)
        if args.socket:
            control = ControlServer(args.socket, self._control, group=args.socket_group)
            await control.start()
            self._servers.append(control)
            log.info("event=control_socket path=%s", args.socket)

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        from .agent_control import handle_request

        return await handle_request(self, request)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.record_outcome(outcome)

    def _status(self) -> str:
        assert self.reconciler is not None
        last = self.reconciler.last_outcome
        if self.reconciler.policy_error:
            return f"policy rejected, keeping last good: {self.reconciler.policy_error[:200]}"
        if last is None:
            return "starting"
        return (
            f"{last.label}: {last.planned} change(s), {len(last.drift)} drift, {last.seconds * 1000:.0f} ms"
        )

    def healthy(self) -> tuple[bool, str]:
        assert self.reconciler is not None
        last = self.reconciler.last_outcome
        if last is None:
            return False, "no reconcile yet"
        if last.label == "error":
            return False, f"last reconcile failed: {last.error or (last.result and last.result.error)}"
        return True, self._status()


def _make_metrics(driver: str, mode: str) -> Any:
    from .metrics_wiring import make_agent_metrics

    return make_agent_metrics(driver, mode)


def run_agent(args: argparse.Namespace) -> int:
    _setup_logging()
    # `kill -USR1 <agent>` writes every thread's stack to stderr (the journal under systemd): what a
    # stuck agent is doing, without a debugger.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return asyncio.run(Agent(args).run())
