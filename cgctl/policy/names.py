"""Name checks for the policy file: group keys and ``root:``, with the rules of :mod:`cgctl.names`.

The rules themselves (allowed characters, the kernel's reserved names and controller prefixes, length,
depth) live in :mod:`cgctl.names`, shared with the CLI's GROUP arguments; this module only words them
for policy messages.
"""

from __future__ import annotations

from cgctl.names import MAX_DEPTH, name_problem

__all__ = ["MAX_DEPTH", "check_name", "check_root"]


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 40 else repr(name[:40] + "…")


def check_name(name: str) -> str:
    """``name`` if it may be a group name; raises ValueError("bad group name 'x': why")."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"bad group name {_shown(name)}: {problem}")
    return name


def check_root(text: str) -> str:
    """The policy's ``root:``: one or more group names joined by ``/``, relative, never ``..``."""
    if not text or text.startswith("/") or text.endswith("/") or "//" in text:
        raise ValueError(f"must be a relative path like cgctl or apps/cgctl, not {text!r}")
    for part in text.split("/"):
        check_name(part)
    return text
