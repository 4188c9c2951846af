"""Group paths ↔ systemd unit names.

A slice's name encodes its place in the tree: ``a-b-c.slice`` lives in ``a-b.slice``, which lives in
``a.slice``. So the managed root ``cgctl`` is ``cgctl.slice`` and the group ``('web', 'worker')`` is
``cgctl-web-worker.slice``. A ``-`` inside a group name would add a level, so every component is escaped
with systemd's unit-name escaping (``systemd-escape``; ``unit_name_escape()`` in systemd's
``src/basic/unit-name.c``): ``[A-Za-z0-9:_.]`` stay, every other byte of the UTF-8 name becomes
``\\xNN`` (lower-case hex), and a leading ``.`` is escaped too. The mapping is therefore reversible.

systemd calls its unit ↔ cgroup-path mapping "not public API", so the cgroup directory of a unit is always
asked for over D-Bus (``ControlGroup``), never derived from these names.
"""

from __future__ import annotations

import secrets

from drivers.api import GroupPath

SLICE_SUFFIX = ".slice"
SCOPE_SUFFIX = ".scope"
# systemd's UNIT_NAME_MAX is 256 including the trailing NUL.
UNIT_NAME_MAX = 255

_PLAIN = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:_.")


class UnitNameError(ValueError):
    """A name cannot be turned into (or read back from) a valid unit name."""


def escape(component: str) -> str:
    """One path component → its unit-name form (what ``systemd-escape`` prints without a suffix)."""
    if not component:
        raise UnitNameError("an empty name cannot be a unit name component")
    if "/" in component:
        raise UnitNameError(f"{component!r}: a group name cannot contain '/'")
    out: list[str] = []
    for index, byte in enumerate(component.encode("utf-8")):
        # A leading '.' would make a hidden file name for the unit; systemd escapes it.
        if byte in _PLAIN and not (index == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unescape(text: str) -> str:
    """The inverse of :func:`escape` for one component; raises UnitNameError on malformed escapes."""
    raw = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            if text[i + 1 : i + 2] != "x" or len(text) < i + 4:
                raise UnitNameError(f"{text!r}: bad escape at offset {i}")
            try:
                raw.append(int(text[i + 2 : i + 4], 16))
            except ValueError:
                raise UnitNameError(f"{text!r}: bad escape at offset {i}") from None
            i += 4
        elif char == "-":
            raise UnitNameError(f"{text!r}: '-' separates slice levels and cannot be inside a name")
        else:
            raw += char.encode("utf-8")
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnitNameError(f"{text!r}: escapes do not form UTF-8") from None


def root_components(root: str) -> tuple[str, ...]:
    """The policy's ``root:`` (``cgctl``, ``a/b``) → its path components."""
    parts = tuple(part for part in root.strip("/").split("/") if part)
    if not parts:
        raise UnitNameError(f"root {root!r}: the managed root must name at least one slice level")
    for part in parts:
        if part in (".", ".."):
            raise UnitNameError(f"root {root!r}: '.' and '..' are not slice names")
    return parts


def _prefix(root: str) -> str:
    return "-".join(escape(part) for part in root_components(root))


def slice_name(root: str, path: GroupPath) -> str:
    """``('web', 'worker')`` under root ``cgctl`` → ``cgctl-web-worker.slice``; ``()`` → ``cgctl.slice``."""
    name = "-".join([_prefix(root), *(escape(part) for part in path)]) + SLICE_SUFFIX
    if len(name) > UNIT_NAME_MAX:
        raise UnitNameError(f"{name!r}: longer than systemd's {UNIT_NAME_MAX}-character unit name limit")
    return name


def path_of_slice(root: str, unit: str) -> GroupPath:
    """The inverse of :func:`slice_name`; raises UnitNameError for a unit outside the managed root."""
    if not unit.endswith(SLICE_SUFFIX):
        raise UnitNameError(f"{unit!r} is not a slice")
    stem = unit[: -len(SLICE_SUFFIX)]
    prefix = _prefix(root)
    if stem == prefix:
        return ()
    if not stem.startswith(prefix + "-"):
        raise UnitNameError(f"{unit!r} is not under the managed root {prefix}{SLICE_SUFFIX}")
    return tuple(unescape(part) for part in stem[len(prefix) + 1 :].split("-"))


def parent_slice(unit: str) -> str | None:
    """The slice a slice lives in by systemd's naming rule (``a-b.slice`` → ``a.slice``; top → None,
    meaning systemd's root slice ``-.slice``)."""
    stem = unit[: -len(SLICE_SUFFIX)]
    if "-" not in stem:
        return None
    return stem.rsplit("-", 1)[0] + SLICE_SUFFIX


def scope_name(root: str, path: GroupPath, token: str | None = None) -> str:
    """A fresh transient scope name for processes placed into the group: ``cgctl-web-<random>.scope``.
    (For scopes ``-`` has no meaning; the name only says where the scope was made for.)"""
    token = token or secrets.token_hex(6)
    stem = slice_name(root, path)[: -len(SLICE_SUFFIX)]
    name = f"{stem}-{token}{SCOPE_SUFFIX}"
    if len(name) > UNIT_NAME_MAX:
        # Cutting the descriptive part could split an escape; the token alone keeps the name unique.
        name = f"cgctl-{token}{SCOPE_SUFFIX}"
    return name
