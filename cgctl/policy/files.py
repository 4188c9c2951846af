"""How policy files are found and read: shared by the loader and the policy cache, so that the cache's
"unchanged" means exactly what the loader would read."""

from __future__ import annotations

import os

POLICY_SUFFIXES = (".yaml", ".yml")


def read_text(file: str) -> str:
    """A policy file's text (UTF-8; OSError or UnicodeDecodeError when it cannot be read)."""
    with open(file, encoding="utf-8") as handle:
        return handle.read()


def policy_files_in(directory: str) -> list[str]:
    """The policy files an ``include:`` of a directory loads, in load order: ``*.yaml``/``*.yml``
    regular files in name order, hidden ones skipped. OSError when the directory cannot be listed."""
    return [
        os.path.join(directory, name)
        for name in sorted(os.listdir(directory))
        if name.endswith(POLICY_SUFFIXES)
        and not name.startswith(".")
        and os.path.isfile(os.path.join(directory, name))
    ]
