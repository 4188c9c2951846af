"""The agent's command-line options (kept apart from the agent so ``cgctl --help`` stays light)."""

from __future__ import annotations

import argparse

DEFAULT_LISTEN = "127.0.0.1:9746"
DEFAULT_INTERVAL = 30.0
DEFAULT_SOCKET = "/run/cgctl/agent.sock"


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, metavar="FILE", help="the policy to keep converged")
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"/metrics and /healthz address (default {DEFAULT_LISTEN}; '' disables)",
    )
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, metavar="S", help="reconcile interval")
    p.add_argument(
        "--mode",
        choices=["enforce", "report"],
        default="enforce",
        help="enforce: correct drift; report: only log and count it",
    )
    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH", help="control socket ('' disables)")
    p.add_argument("--socket-group", default=None, metavar="GROUP", help="also allow this group")
    p.add_argument("--driver", default=None, help="override the policy's driver")
    p.add_argument(
        "--export-subtree",
        action="append",
        default=[],
        metavar="PATH",
        help="also export usage of cgroups under PATH (read-only; repeatable), e.g. /system.slice",
    )
    p.add_argument("--export-include", action="append", default=[], metavar="GLOB", help="only these cgroups")
    p.add_argument(
        "--export-exclude", action="append", default=[], metavar="GLOB", help="skip these subtrees"
    )
    p.add_argument("--export-max-depth", type=int, default=2, metavar="N", help="levels below each subtree")
