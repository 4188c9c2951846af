"""The policy language: YAML file → validated, normalized desired state.

Importing this package is cheap (no yaml): the types and the name rules load eagerly, the loader
(PyYAML) only when a text must be parsed. :func:`load_policy` first asks the validated-policy cache
(:mod:`cgctl.policy.cache`): an unchanged policy is not parsed again.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cgctl.policy.names import MAX_DEPTH, check_name, check_root
from cgctl.policy.types import (
    POLICY_FIELDS,
    GroupSpec,
    Policy,
    PolicyError,
    PolicyIssue,
    SourceRef,
    field_name,
)

__all__ = [
    "MAX_DEPTH",
    "POLICY_FIELDS",
    "GroupSpec",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "SourceRef",
    "check_name",
    "check_root",
    "field_name",
    "load_policy",
    "parse_policy_text",
]


def load_policy(
    path: str | os.PathLike[str], *, resolve_device: Callable[[str], str] | None = None
) -> Policy:
    """Load and validate a policy file and its includes; raises :class:`PolicyError` listing every
    problem. ``resolve_device`` maps an io.max ``device:`` to the whole disk's ``MAJ:MIN``
    (default: :func:`cgctl.devices.resolve_device` on this host); it raises ValueError for unknown ones."""
    from cgctl.policy import cache

    file = os.fspath(path)
    if resolve_device is None:  # the host's devices: what the cache checks entries against
        from cgctl.devices import resolve_device as host_resolver

        cached = cache.lookup(file, host_resolver)
        if cached is not None:
            return cached
    from cgctl.policy import loader  # PyYAML and the schema: only when the text must be parsed

    policy, inputs = loader.load_policy_and_inputs(file, resolve_device=resolve_device)
    if resolve_device is None:
        cache.store(file, policy, inputs)
    return policy


def parse_policy_text(
    text: str, filename: str, *, resolve_device: Callable[[str], str] | None = None
) -> Policy:
    """Like :func:`load_policy` for text in memory; ``include:`` paths resolve against ``filename``."""
    from cgctl.policy import loader

    return loader.parse_policy_text(text, filename, resolve_device=resolve_device)
