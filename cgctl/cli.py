"""The ``cgctl`` command line.

Exit codes (CONVENTIONS.md): 0 success; 1 the operation failed (and was rolled back — the message says
whether the rollback completed); 2 usage, validation or plan error (nothing was written).
``cgctl diff``: 0 in sync, 1 changes pending, 2 error — like ``kubectl diff``.

Heavy modules (yaml, the D-Bus client, prometheus_client) are imported inside the commands that
need them, so ``cgctl freeze`` starts fast.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__, oneshot

if TYPE_CHECKING:
    from drivers.api import Driver, DriverError, GroupPath

    from .engine import Prepared
    from .policy import Policy

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DEFAULT_ROOT = "cgctl"


class UsageError(Exception):
    """A problem with what the user asked for: exit 2, nothing written."""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _err(message: str, *details: str) -> None:
    print(f"cgctl: {message}", file=sys.stderr)
    for line in details:
        print(f"  {line}", file=sys.stderr)


def _ms(timings: dict[str, float]) -> dict[str, float]:
    """Phase timings for --output json, in milliseconds."""
    return {phase: round(seconds * 1000, 2) for phase, seconds in timings.items()}


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _parse_group(text: str) -> GroupPath:
    from .names import InvalidNameError, parse_group_path

    try:
        return parse_group_path(text)
    except InvalidNameError as exc:
        raise UsageError(f"GROUP {text!r}: {exc}") from None


class InvalidPolicy(Exception):
    """The policy file failed validation: exit 2 with every FILE:LINE:COL message."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(f"{len(lines)} error(s)")
        self.lines = lines


def _load_policy(path: str) -> Policy:
    from .policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        raise InvalidPolicy([str(issue) for issue in exc.errors]) from None


def _driver_for(name: str, root: str) -> tuple[Driver, str]:
    """The driver a command uses. Under oneshot.run, a driver that needs an event loop restarts the
    command under asyncio (this is called before the command has changed anything)."""
    from drivers.api import DriverOptions

    from .registry import UnknownDriverError, choose_driver

    try:
        cls, why = choose_driver(name)
    except UnknownDriverError as exc:
        raise UsageError(str(exc)) from None
    if oneshot.inline() and cls.needs_event_loop:
        raise oneshot.LoopRequired(cls.name)
    return cls(DriverOptions(root=root, inline=oneshot.inline())), why


def _policy_driver(policy: Policy, override: str | None) -> tuple[Driver, str]:
    return _driver_for(override or policy.driver, policy.root)


def _print_plan(prepared: Prepared, *, header: bool = True) -> None:
    plan = prepared.plan
    driver = prepared.driver
    lines: list[str] = []
    if header:
        caps = prepared.capabilities
        lines.append(f"# driver {driver.name} ({caps.mode}), root {prepared.policy.root}")
    lines.extend(op.describe(driver) for op in plan.ops)
    lines.extend(f"# {note}" for note in plan.notes)
    if not plan.ops:
        lines.append("# in sync: nothing to do")
    for issue in plan.warnings:
        print(f"warning: {issue}", file=sys.stderr)
    sys.stdout.write("".join(f"{line}\n" for line in lines))  # one write: a plan can have 10,000 lines
    sys.stdout.flush()


def _report_plan_errors(prepared: Prepared) -> bool:
    errors = prepared.plan.errors
    if not errors:
        return False
    _err(f"the policy cannot be applied on this host ({len(errors)} error(s)); nothing was written")
    for issue in errors:
        print(f"  {issue}", file=sys.stderr)
    return True


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------


def _via_agent(args: argparse.Namespace, request: dict[str, Any]) -> int | None:
    """When an agent runs, writes go through its control socket so the host has one writer.
    Returns the exit code, or None when no agent listens (the CLI then works directly)."""
    if getattr(args, "no_agent", False):
        return None
    from .agent_args import DEFAULT_SOCKET

    path = os.environ.get("CGCTL_AGENT_SOCKET", DEFAULT_SOCKET)
    if not os.path.exists(path):
        return None
    from .control_client import AgentError, AgentUnavailable, call_agent

    try:
        response = call_agent(path, request)
    except AgentUnavailable:
        return None
    except AgentError as exc:
        _err(str(exc), "nothing was done directly: with an agent running it is the only writer (--no-agent)")
        return EXIT_FAILED
    except PermissionError:
        _err(f"an agent runs ({path}) but this user may not use its socket; ask root or the socket group")
        return EXIT_USAGE
    sys.stdout.write(str(response.get("stdout", "")))
    if response.get("stderr"):
        print(str(response["stderr"]).rstrip("\n"), file=sys.stderr)
    return int(response.get("exit", EXIT_FAILED))


async def _cmd_apply(args: argparse.Namespace) -> int:
    from drivers.api import DriverError

    routed = _via_agent(
        args,
        {"op": "apply", "policy": os.path.abspath(args.file), "dry_run": args.dry_run, "prune": args.prune},
    )
    if routed is not None:
        return routed

    from .engine import failure_report, prepare, run_apply
    from .lock import writer_lock
    from .plan import summarize

    loading = time.perf_counter()
    policy = _load_policy(args.file)
    load_seconds = time.perf_counter() - loading
    driver, _ = _policy_driver(policy, args.driver)
    try:
        with writer_lock():
            prepared = await prepare(policy, driver, prune=args.prune)
            if _report_plan_errors(prepared):
                return EXIT_USAGE
            if args.output != "json":
                _print_plan(prepared)
            if args.dry_run or prepared.plan.in_sync:
                if args.output == "json":
                    timings = {"load": load_seconds, **prepared.timings}
                    _print_json({"plan": prepared.plan.to_json(), "result": None, "timings": _ms(timings)})
                return EXIT_OK
            result = await run_apply(prepared, freeze_timeout=args.freeze_timeout)
    except DriverError as exc:
        _err(f"reading the current state failed: {exc}", "nothing was written")
        return EXIT_FAILED
    finally:
        await driver.close()
    if args.output == "json":
        timings = {"load": load_seconds, **prepared.timings, "apply": result.seconds}
        _print_json({"plan": prepared.plan.to_json(), "result": result.to_json(), "timings": _ms(timings)})
    for note in result.notes:
        print(f"# {note}")
    if result.ok:
        if args.output != "json":
            print(f"applied: {summarize(result.done)} in {result.seconds * 1000:.0f} ms")
        return EXIT_OK
    headline, details = failure_report(result, driver)
    _err(headline, *details)
    return EXIT_FAILED


async def _cmd_diff(args: argparse.Namespace) -> int:
    from drivers.api import DriverError

    from .engine import prepare

    policy = _load_policy(args.file)
    driver, _ = _policy_driver(policy, args.driver)
    try:
        prepared = await prepare(policy, driver, prune=args.prune)
    except DriverError as exc:
        _err(f"reading the current state failed: {exc}")
        return EXIT_USAGE
    finally:
        await driver.close()
    if _report_plan_errors(prepared):
        return EXIT_USAGE
    if args.output == "json":
        _print_json(prepared.plan.to_json())
    else:
        _print_plan(prepared)
    return EXIT_OK if prepared.plan.in_sync else EXIT_FAILED


def _root_and_driver(args: argparse.Namespace) -> tuple[str, str]:
    """freeze/thaw/show/exec/move: root and driver from --policy, else --root/--driver."""
    if args.policy:
        policy = _load_policy(args.policy)
        return args.root or policy.root, args.driver or policy.driver
    return args.root or DEFAULT_ROOT, args.driver or "auto"


async def _cmd_freeze(args: argparse.Namespace, *, freeze: bool) -> int:
    from drivers.api import DriverError

    from .lock import writer_lock

    path = _parse_group(args.group)
    routed = _via_agent(
        args, {"op": "freeze" if freeze else "thaw", "group": args.group, "timeout": args.timeout}
    )
    if routed is not None:
        return routed
    root, driver_name = _root_and_driver(args)
    driver, _ = _driver_for(driver_name, root)
    try:
        with writer_lock():
            observed = await driver.observe([path], {path: ()})
            if not observed[path].exists:
                raise _missing_group(args.group, root)
            if freeze:
                await driver.freeze(path, args.timeout)
            else:
                await driver.thaw(path, args.timeout)
    except DriverError as exc:
        _err(f"{'freeze' if freeze else 'thaw'} of {args.group} failed: {exc}")
        return EXIT_FAILED
    finally:
        await driver.close()
    print(f"{args.group}: {'frozen' if freeze else 'thawed'}")
    return EXIT_OK


def _missing_group(group: str, root: str) -> UsageError:
    return UsageError(f"group {group!r} does not exist under root {root!r}")


def _no_such_group(exc: DriverError, group: str, root: str) -> None:
    """A move into a group that is not there fails to resolve its directory: say so as freeze does
    (a usage error, exit 2) rather than with the path the kernel could not find."""
    if exc.errno == errno.ENOENT:
        raise _missing_group(group, root) from None


async def _cmd_move(args: argparse.Namespace) -> int:
    from drivers.api import DriverError

    path = _parse_group(args.group)
    root, driver_name = _root_and_driver(args)
    driver, _ = _driver_for(driver_name, root)
    try:
        await driver.move(path, args.pids)
    except DriverError as exc:
        _no_such_group(exc, args.group, root)
        _err(f"move into {args.group} failed: {exc}")
        return EXIT_FAILED
    finally:
        await driver.close()
    return EXIT_OK


def _cmd_exec(args: argparse.Namespace) -> int:
    from drivers.api import DriverError

    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("exec needs a command after --")
    path = _parse_group(args.group)

    async def join() -> None:
        root, driver_name = _root_and_driver(args)
        driver, _ = _driver_for(driver_name, root)
        try:
            # The process joins the group *before* it executes the command (anchors §3 pitfall 19),
            # so the command's first instruction is already accounted and limited.
            await driver.move(path, [os.getpid()])
        except DriverError as exc:
            _no_such_group(exc, args.group, root)
            raise
        finally:
            await driver.close()

    try:
        oneshot.run(join)
    except DriverError as exc:
        _err(f"joining {args.group} failed: {exc}")
        return EXIT_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        _err(f"cannot execute {command[0]}: {exc.strerror}")
        return 127


async def _cmd_show(args: argparse.Namespace) -> int:
    from .show import collect_show, render_tree

    policy = _load_policy(args.policy) if args.policy else None
    root = args.root or (policy.root if policy else DEFAULT_ROOT)
    driver_name = args.driver or (policy.driver if policy else "auto")
    driver, _ = _driver_for(driver_name, root)
    only = _parse_group(args.group) if args.group else None
    try:
        rows = await collect_show(driver, policy, only)
    finally:
        await driver.close()
    if args.output == "json":
        _print_json({"root": root, "driver": driver.name, "groups": rows})
    else:
        print(render_tree(root, rows))
    return EXIT_OK


async def _cmd_check(args: argparse.Namespace) -> int:
    from .check import host_report, render_report

    policy = _load_policy(args.file) if args.file else None
    report = await host_report(policy, args.driver)
    if args.output == "json":
        _print_json(report)
    else:
        print(render_report(report))
    return EXIT_USAGE if report.get("policy", {}).get("errors") else EXIT_OK


def _cmd_agent(args: argparse.Namespace) -> int:
    from .agent import run_agent

    return run_agent(args)


# --------------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------------


def _add_target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", metavar="FILE", help="take root and driver from this policy")
    p.add_argument("--root", help=f"managed root (default: the policy's, else {DEFAULT_ROOT!r})")
    p.add_argument("--driver", help="cgroupfs, systemd or auto (default: the policy's, else auto)")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized to the terminal without ``shutil``: argparse builds one for every
    add_argument, and ``shutil`` drags in bz2, lzma and zlib (2–3 ms of every command's start)."""

    def __init__(self, prog: str) -> None:
        columns = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 0
        if columns <= 0:  # as shutil.get_terminal_size: $COLUMNS, else the terminal, else 80
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                columns = 80
        super().__init__(prog, width=max(columns - 2, 40))


class _ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)  # subcommands' parsers are of this class too


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="cgctl",
        description="Declarative cgroup resource control: plan, apply with rollback, freeze, export.",
    )
    parser.add_argument("--version", action="version", version=f"cgctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("apply", help="make the cgroup tree match a policy (plan first, roll back on failure)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument(
        "--prune", action="store_true", help="also remove empty groups cgctl created that the policy dropped"
    )
    p.add_argument("--driver", help="override the policy's driver")
    p.add_argument("--freeze-timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--output", choices=["text", "json"], default="text")
    p.add_argument("--no-agent", action="store_true", help="work directly even when an agent runs")

    p = sub.add_parser("diff", help="show what apply would change (0 in sync, 1 changes pending, 2 error)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--prune", action="store_true")
    p.add_argument("--driver", help="override the policy's driver")
    p.add_argument("--output", choices=["text", "json"], default="text")

    for name, what in (("freeze", "stop"), ("thaw", "resume")):
        p = sub.add_parser(name, help=f"{what} every process in a group; returns once the kernel confirms")
        p.add_argument("group", metavar="GROUP", help="policy path under the root, e.g. web/worker")
        p.add_argument("--timeout", type=float, default=10.0, metavar="S")
        p.add_argument("--no-agent", action="store_true", help="work directly even when an agent runs")
        _add_target_options(p)

    p = sub.add_parser("show", help="a tree of groups: limits next to live usage")
    p.add_argument("group", metavar="GROUP", nargs="?")
    _add_target_options(p)
    p.add_argument("--output", choices=["text", "json"], default="text")

    p = sub.add_parser("exec", help="run a command inside a group (it joins before it executes)")
    p.add_argument("group", metavar="GROUP")
    p.add_argument("argv", nargs="*", metavar="CMD", help="the command, after --")
    _add_target_options(p)

    p = sub.add_parser("move", help="move running processes into a group")
    p.add_argument("group", metavar="GROUP")
    p.add_argument("pids", nargs="+", type=int, metavar="PID")
    _add_target_options(p)

    p = sub.add_parser("check", help="describe this host's cgroup setup (and whether it can honour a policy)")
    p.add_argument("file", metavar="FILE", nargs="?")
    p.add_argument("--driver", default=None, help="check for this driver instead of the policy's/auto")
    p.add_argument("--output", choices=["text", "json"], default="text")

    p = sub.add_parser("agent", help="run the reconcile + /metrics daemon")
    from .agent_args import add_agent_arguments

    add_agent_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # `cgctl exec GROUP [options] -- CMD ARGS...`: everything after the first "--" is the command,
    # options included (argparse's own "--" handling does not reach through subcommands).
    command_words: list[str] = []
    if "--" in words and "exec" in words[: words.index("--")]:
        split = words.index("--")
        words, command_words = words[:split], words[split + 1 :]
    args = parser.parse_args(words)
    if command_words:
        args.argv = [*args.argv, *command_words]
    if args.command == "agent":
        gc.enable()  # a daemon runs for months: cycles must be collected (cgctl/main.py turned it off)
    else:
        # A command-line tool piped into `head` should end quietly, and `exec` must hand its command
        # the default SIGPIPE (Python ignores it, and an ignored signal survives execve).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        # A one-shot command allocates ~100 objects per group and makes no garbage cycles worth
        # collecting before it exits; the cyclic collector would rescan the growing heap again and again
        # (up to 150 ms of a 1000-group apply). Reference counting still frees everything. The entry
        # point (cgctl/main.py) already turned it off before the imports; this covers other callers.
        gc.disable()
    try:
        command: str = args.command
        if command == "exec":
            return _cmd_exec(args)
        if command == "agent":
            return _cmd_agent(args)
        if command == "check":  # probes every driver, systemd's over D-Bus: always under asyncio
            import asyncio

            return asyncio.run(_cmd_check(args))
        handlers: dict[str, Any] = {
            "apply": _cmd_apply,
            "diff": _cmd_diff,
            "freeze": lambda a: _cmd_freeze(a, freeze=True),
            "thaw": lambda a: _cmd_freeze(a, freeze=False),
            "show": _cmd_show,
            "move": _cmd_move,
        }
        result: int = oneshot.run(lambda: handlers[command](args))
        return result
    except InvalidPolicy as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        _err(f"invalid policy ({len(exc.lines)} error(s)); nothing was written")
        return EXIT_USAGE
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
