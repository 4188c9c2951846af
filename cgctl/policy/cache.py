"""Validated policies kept between runs, so an unchanged policy is not parsed and validated again.

A re-apply or ``cgctl diff`` of an unchanged 1000-group policy spent ~60 ms (a third of the command)
importing PyYAML and parsing and validating text it had validated before. The cache keeps the result
with everything the result depends on, and uses it only when all of it is unchanged:

* the text of every file read (the main file and every included one), compared in full (a hash would
  need hashlib, whose OpenSSL import alone cost 5 ms of every start);
* the policy files listed in every included directory;
* what every ``io.max`` device resolved to (resolved again and compared: device numbers can change);
* this cgctl: its version and the size and mtime of the modules that parse and validate.

One entry per main policy path (and working directory, for a relative one), in
``/var/cache/cgctl/policy`` (``CGCTL_CACHE_DIR`` overrides). Entries are pickles, so one is read only
from a directory and a file owned by the current user and writable by nobody else. Only valid policies
are stored. Anything unexpected (a missing, foreign, corrupt or stale entry, an unwritable directory)
means a normal parse, never an error.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import stat
import zlib
from collections.abc import Callable

from cgctl import __version__
from cgctl.policy.files import policy_files_in, read_text
from cgctl.policy.types import Policy
from drivers.records import field, record

DEFAULT_CACHE_DIR = "/var/cache/cgctl"
_FORMAT = 2
# The modules whose code decides what a policy text means (a change in any invalidates every entry).
_SEMANTICS = (
    "cgctl/policy/loader.py",
    "cgctl/policy/files.py",
    "cgctl/policy/schema.py",
    "cgctl/policy/source.py",
    "cgctl/policy/types.py",
    "cgctl/policy/names.py",
    "cgctl/names.py",
    "cgctl/units.py",
    "cgctl/devices.py",
    "drivers/api.py",
)
_TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@record
class Inputs:
    """What one load read: file → its text, directory → its policy files, device → MAJ:MIN."""

    files: dict[str, str] = field(default_factory=dict)
    directories: dict[str, list[str]] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)


def cache_dir() -> str:
    return os.path.join(os.environ.get("CGCTL_CACHE_DIR", DEFAULT_CACHE_DIR), "policy")


def _key(file: str) -> str:
    # A relative path is kept with its working directory: the entry records the paths of the files it
    # read as the loader saw them (relative ones too), and its messages name them that way.
    return file if os.path.isabs(file) else f"{os.getcwd()}\0{file}"


def _entry_path(key: str) -> str:
    # Two keys may share a name: the entry holds its key, so that only costs a parse.
    name = f"{zlib.crc32(key.encode('utf-8', 'surrogateescape')):08x}"
    return os.path.join(cache_dir(), f"{name}.pickle")


def _fingerprint() -> tuple[object, ...]:
    marks: list[object] = [_FORMAT, __version__]
    for relative in _SEMANTICS:
        try:
            st = os.stat(os.path.join(_TOP, relative))
        except OSError:
            marks.append((relative, None))
            continue
        marks.append((relative, st.st_size, st.st_mtime_ns))
    return tuple(marks)


def _private(st: os.stat_result) -> bool:
    """Owned by us and writable by nobody else: nobody else can have planted the pickle."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def lookup(file: str, resolve_device: Callable[[str], str]) -> Policy | None:
    """The cached policy for ``file`` if nothing it depends on has changed, else None.
    ``resolve_device`` is the one the loader would use."""
    try:
        if not _private(os.stat(cache_dir())):
            return None
        key = _key(file)
        fd = os.open(_entry_path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            if not _private(os.fstat(handle.fileno())):
                return None
            entry = pickle.loads(handle.read())
        if (
            not isinstance(entry, dict)
            or entry.get("key") != key
            or entry.get("fingerprint") != _fingerprint()
        ):
            return None
        inputs, policy = entry["inputs"], entry["policy"]
        if not isinstance(inputs, Inputs) or not isinstance(policy, Policy):
            return None
        for name, known in inputs.files.items():
            if read_text(name) != known:
                return None
        for directory, names in inputs.directories.items():
            if policy_files_in(directory) != names:
                return None
        for spec, resolved in inputs.devices.items():
            if resolve_device(spec) != resolved:
                return None
    except Exception:  # anything wrong with an entry (a cache must never become an error): parse anew
        return None
    return policy


def store(file: str, policy: Policy, inputs: Inputs) -> None:
    """Keep ``policy`` for the next load of ``file`` (best effort: a cache that cannot be written is
    simply not used)."""
    directory = cache_dir()
    tmp = ""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not _private(os.stat(directory)):
            return
        key = _key(file)
        data = pickle.dumps(
            {"key": key, "fingerprint": _fingerprint(), "inputs": inputs, "policy": policy},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        entry = _entry_path(key)
        tmp = f"{entry}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, entry)  # no fsync: a torn entry fails to unpickle and is parsed anew
        tmp = ""
    except OSError:
        pass
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
