"""The one way the cgroupfs driver touches the filesystem.

Every file and directory access of the driver goes through :class:`Tree` (one per mounted hierarchy)
and the :class:`GroupDir` handles it hands out. The rules, after runc's ``cgroups/file.go``:

* a hierarchy's mount directory is opened once and must be a cgroup filesystem (``fstatfs`` magic);
* a group is reached from that descriptor with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)``, so ``..``, absolute paths, symlinks and other mounts cannot
  take it anywhere else — and where the kernel lacks openat2 (< 5.6), a component-by-component walk with
  ``O_NOFOLLOW | O_DIRECTORY`` checking the device of each step does the same;
* names are checked before any system call: no empty name, ``.``, ``..``, ``/`` or NUL;
* files are opened relative to the group's descriptor with ``O_NOFOLLOW``, read and written with
  ``os.read``/``os.write`` in bytes (no text-mode file objects: 2–3× slower on cgroupfs); in a
  directory this process has just created, a file is opened by its path from the mount with the same
  ``openat2`` rules instead, so that writing a new group's limits needs no directory descriptor;
* every ``OSError`` becomes a :class:`drivers.api.DriverError` that names the file, the value and the
  kernel's error.

Everything here blocks; callers batch their work into one ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator

from drivers.api import DriverError, GroupBusyError, GroupPath, UnsafePathError

CGROUP2_SUPER_MAGIC = 0x63677270
CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP_MAGICS = frozenset({CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC})

_SYS_OPENAT2 = 437  # same number on every architecture (added after the syscall table unification)
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
DIR_CACHE_SIZE = 32  # per tree: 7 v1 trees stay far below the usual 1024 open files
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# openat2 refuses an escape with one of these; they mean "unsafe", not "missing".
_ESCAPE_ERRNOS = frozenset({errno_mod.EXDEV, errno_mod.ELOOP, errno_mod.ENOTDIR})


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_fstatfs = _libc.fstatfs
_fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
_fstatfs.restype = ctypes.c_int
_openat2_available: bool | None = None  # unknown until the first call


def fs_magic(fd: int) -> int:
    """``statfs.f_type`` of an open descriptor (the first field, a ``long``, on every Linux ABI)."""
    buf = ctypes.create_string_buffer(256)  # larger than struct statfs on any architecture
    if _fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_ulong.from_buffer(buf).value


def check_name(name: str) -> None:
    """Refuse anything that is not a single, plain directory entry name."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePathError(f"refused path component {name!r}: not a plain name", value=name)


_SYSNO_OPENAT2 = ctypes.c_long(_SYS_OPENAT2)
_OPEN_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
_open_how: dict[int, object] = {}  # flags → a reference to its (read-only) open_how, made once


def _openat2(dir_fd: int, rel: str, flags: int) -> int:
    how = _open_how.get(flags)
    if how is None:
        how = _open_how[flags] = ctypes.byref(_OpenHow(flags, 0, _RESOLVE))
    # ctypes passes the int as a C int and the bytes as a char *; the other arguments are made once
    # (building them per call was a fifth of the call's cost, thousands of calls per apply). The path is
    # encoded as os.fsencode does, without its Python-level call; restype c_long gives a Python int.
    fd: int = _syscall(_SYSNO_OPENAT2, dir_fd, rel.encode("utf-8", "surrogateescape"), how, _OPEN_HOW_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _walk(dir_fd: int, names: tuple[str, ...], root_dev: int) -> int:
    """The openat2 fallback: one component at a time, never following a link, never leaving the mount."""
    fd = os.dup(dir_fd)
    try:
        for name in names:
            nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if os.fstat(fd).st_dev != root_dev:
                raise OSError(errno_mod.EXDEV, os.strerror(errno_mod.EXDEV))
        return fd
    except BaseException:
        os.close(fd)
        raise


def error(
    op: str, target: str, exc: OSError, value: str | None = None, group: GroupPath | None = None
) -> DriverError:
    """Turn an OSError into the driver error that names what failed."""
    cls: type[DriverError] = DriverError
    if op == "rmdir" and exc.errno == errno_mod.EBUSY:
        cls = GroupBusyError
    elif op == "resolve" and exc.errno in _ESCAPE_ERRNOS:
        cls = UnsafePathError
    cause = f"{errno_mod.errorcode.get(exc.errno or 0, '?')}: {exc.strerror or os.strerror(exc.errno or 0)}"
    return cls(f"{op} {target} failed", group=group, target=target, value=value, errno=exc.errno, cause=cause)


def resolve_beneath(
    dir_fd: int, parts: tuple[str, ...], root_dev: int, display: str, group: GroupPath
) -> int:
    """A directory descriptor for ``parts`` strictly beneath ``dir_fd``: no ``..``, no symlink (magic or
    not), no other mount. openat2 where the kernel has it, the checked walk otherwise."""
    global _openat2_available
    for name in parts:
        check_name(name)
    if not parts:
        return os.dup(dir_fd)
    try:
        if _openat2_available is not False:
            try:
                fd = _openat2(dir_fd, "/".join(parts), _DIR_FLAGS)
                _openat2_available = True
                return fd
            except OSError as exc:
                if exc.errno != errno_mod.ENOSYS:
                    raise
                _openat2_available = False
        return _walk(dir_fd, parts, root_dev)
    except OSError as exc:
        raise error("resolve", display, exc, group=group) from None


class GroupDir:
    """A cgroup directory. Files are opened relative to it, by plain name, never following links.

    Usually the directory is open (``fd``). One this process has just created (:meth:`Tree.created`)
    is handed out by :meth:`Tree.cached` unopened, until something needs its descriptor: its files are
    opened with ``openat2`` from the mount by their relative path (``base_fd`` and ``rel``), under the
    same rules as the directory itself. Writing a new group's few limits then takes no directory open
    and close (2 of 6 syscalls per group and hierarchy on v1)."""

    __slots__ = ("base_fd", "borrowed", "display", "fd", "group", "rel")

    def __init__(
        self,
        fd: int,
        display: str,
        group: GroupPath,
        borrowed: bool = False,
        *,
        base_fd: int = -1,
        rel: str = "",
    ) -> None:
        self.fd = fd
        self.display = display  # the absolute path people see in messages
        self.group = group
        self.borrowed = borrowed  # owned by a Tree's cache: close() leaves it open
        self.base_fd = base_fd  # without fd: the mount's descriptor, and the path from it
        self.rel = rel

    def _dir_fd(self) -> int:
        """The directory's descriptor, opened now if it was not yet."""
        if self.fd < 0 and self.rel:
            try:
                self.fd = _openat2(self.base_fd, self.rel, _DIR_FLAGS)
            except OSError as exc:
                raise error("resolve", self.display, exc, group=self.group) from None
        return self.fd

    def _open_file(self, name: str, flags: int) -> int:
        """Open a file of this directory (``name`` checked by the caller); OSError as the kernel says."""
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        if self.fd < 0 and self.rel:
            return _openat2(self.base_fd, f"{self.rel}/{name}", flags)
        return os.open(name, flags, dir_fd=self.fd)

    def close(self) -> None:
        if self.fd >= 0 and not self.borrowed:
            os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        """Really close (the cache's eviction)."""
        self.borrowed = False
        self.close()

    def __enter__(self) -> GroupDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path_of(self, name: str) -> str:
        return f"{self.display}/{name}"

    def open(self, name: str, flags: int) -> int:
        check_name(name)
        try:
            return self._open_file(name, flags)
        except OSError as exc:
            raise self._open_error(name, exc) from None

    def _open_error(self, name: str, exc: OSError) -> DriverError:
        # Opened by path, a link or mount anywhere on the way is refused as resolving the directory is.
        op = "resolve" if self.fd < 0 and self.rel and exc.errno in _ESCAPE_ERRNOS else "open"
        return error(op, self.path_of(name), exc, group=self.group)

    def has(self, name: str) -> bool:
        check_name(name)
        try:
            st = os.stat(name, dir_fd=self._dir_fd(), follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise error("stat", self.path_of(name), exc, group=self.group) from None
        return stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)

    def read(self, name: str) -> str:
        """The whole file as text (cgroup files are small; one read usually suffices)."""
        fd = self.open(name, os.O_RDONLY)
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "replace")
        except OSError as exc:
            raise error("read", self.path_of(name), exc, group=self.group) from None
        finally:
            os.close(fd)

    def read_optional(self, name: str) -> str | None:
        """Like :meth:`read`, but a missing file (or a group vanishing mid-read: ENODEV) gives None."""
        check_name(name)
        try:
            fd = self._open_file(name, os.O_RDONLY)
        except OSError as exc:
            if exc.errno in (errno_mod.ENOENT, errno_mod.ENODEV):
                return None
            raise self._open_error(name, exc) from None
        try:
            data = os.read(fd, 65536)
            if len(data) == 65536:
                rest = [data]
                while chunk := os.read(fd, 65536):
                    rest.append(chunk)
                data = b"".join(rest)
            return data.decode("utf-8", "replace")
        except OSError as exc:
            if exc.errno == errno_mod.ENODEV:
                return None
            raise error("read", self.path_of(name), exc, group=self.group) from None
        finally:
            os.close(fd)

    def write(self, name: str, value: str) -> None:
        """One write(2) of ``value``: the kernel parses each write as one command."""
        fd = self.open(name, os.O_WRONLY)
        try:
            self.write_fd(fd, name, value)
        finally:
            os.close(fd)

    def write_fd(self, fd: int, name: str, value: str) -> None:
        data = value.encode()
        try:
            os.write(fd, data if data else b"\n")  # an empty write never reaches the kernel's parser
        except OSError as exc:
            raise error("write", self.path_of(name), exc, value=value, group=self.group) from None

    def mkdir(self, name: str, child: GroupPath) -> None:
        check_name(name)
        try:
            os.mkdir(name, 0o755, dir_fd=self._dir_fd())
        except OSError as exc:
            raise error("mkdir", self.path_of(name), exc, group=child) from None

    def rmdir(self, name: str, child: GroupPath) -> None:
        check_name(name)
        try:
            os.rmdir(name, dir_fd=self._dir_fd())
        except OSError as exc:
            raise error("rmdir", self.path_of(name), exc, group=child) from None

    def subdirs(self) -> list[str]:
        """Child group names (cgroupfs directories are the child groups)."""
        fd = os.dup(self._dir_fd())
        try:
            with os.scandir(fd) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            raise error("list", self.display, exc, group=self.group) from None
        finally:
            os.close(fd)

    def nlink(self) -> int:
        return os.fstat(self._dir_fd()).st_nlink

    def child(self, name: str) -> GroupDir:
        """Open a child group's directory (a plain name, never a link)."""
        check_name(name)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._dir_fd())
        except OSError as exc:
            raise error("open", self.path_of(name), exc, group=(*self.group, name)) from None
        return GroupDir(fd, self.path_of(name), (*self.group, name))

    def getxattr(self, name: str) -> bytes | None:
        try:
            return os.getxattr(self._dir_fd(), name)
        except OSError:
            return None  # not set, or the filesystem has no xattr support: both mean "no mark"

    def setxattr(self, name: str, value: bytes) -> bool:
        try:
            os.setxattr(self._dir_fd(), name, value)
        except OSError as exc:
            if exc.errno in (errno_mod.ENOTSUP, errno_mod.EOPNOTSUPP, errno_mod.EPERM):
                return False
            raise error("setxattr", self.display, exc, value=name, group=self.group) from None
        return True


class Tree:
    """One mounted cgroup hierarchy, opened once; groups are resolved strictly beneath it."""

    def __init__(self, mountpoint: str, base: tuple[str, ...] = ()) -> None:
        """``base`` is the managed root's path relative to the mount (``("cgctl",)``); group paths are
        relative to it."""
        for name in base:
            check_name(name)
        self.mountpoint = mountpoint.rstrip("/") or "/"
        self.base = base
        try:
            fd = os.open(self.mountpoint, _DIR_FLAGS)
        except OSError as exc:
            raise error("open", self.mountpoint, exc) from None
        try:
            magic = fs_magic(fd)
            if magic not in CGROUP_MAGICS:
                raise UnsafePathError(
                    f"{self.mountpoint} is not a cgroup filesystem (statfs magic {magic:#x})",
                    target=self.mountpoint,
                )
            self.dev = os.fstat(fd).st_dev
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.magic = magic
        # Directories kept open for writes (see cached()); only used under the ops' write lock.
        self._cache: OrderedDict[tuple[str, ...], GroupDir] = OrderedDict()
        # Directories this process made (see created()): their files are opened by path.
        self._fresh: set[tuple[str, ...]] = set()

    def close(self) -> None:
        self.clear_cache()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def cached(self, parts: tuple[str, ...], group: GroupPath) -> GroupDir:
        """A kept-open directory for a run of writes (an apply sets several knobs per group and creates
        many children under one parent: re-resolving each time cost more than the writes). Closing the
        returned handle is a no-op. Callers hold their write lock, so no entry is evicted in use; a
        handle gone stale (its directory removed behind cgctl's back) fails with ENOENT and the caller
        clears the cache and retries once."""
        gd = self._cache.get(parts)
        if gd is not None:
            self._cache.move_to_end(parts)
            return gd
        if parts in self._fresh and _openat2_available:
            gd = self._by_path(parts, group)
        else:
            gd = self.open_rel(parts, group)
        gd.borrowed = True
        self._cache[parts] = gd
        if len(self._cache) > DIR_CACHE_SIZE:
            self._cache.popitem(last=False)[1].release()
        return gd

    def created(self, parts: tuple[str, ...]) -> None:
        """Note a directory this process has just made. Until it is forgotten (or the cache cleared),
        :meth:`cached` hands it out unopened: files below it are opened by path from the mount. Only
        for new directories: an existing one is opened first, so that a missing one is found there."""
        self._fresh.add(parts)

    def forget(self, parts: tuple[str, ...]) -> None:
        """Drop cached handles of a removed directory and everything below it."""
        for key in [k for k in self._cache if k[: len(parts)] == parts]:
            self._cache.pop(key).release()
        # Only the directory itself: one with children cannot be removed, so theirs stay true. (A scan
        # of every directory made in this run, per removal, would make a rollback quadratic.)
        self._fresh.discard(parts)

    def clear_cache(self) -> None:
        while self._cache:
            self._cache.popitem()[1].release()
        self._fresh.clear()

    def rel(self, group: GroupPath) -> tuple[str, ...]:
        return self.base + tuple(group)

    def display(self, group: GroupPath) -> str:
        return self._display(self.rel(group))

    def _display(self, parts: tuple[str, ...]) -> str:
        return "/".join((self.mountpoint.rstrip("/"), *parts)) if parts else self.mountpoint

    def open_rel(self, parts: tuple[str, ...], group: GroupPath) -> GroupDir:
        """Open a directory given by mount-relative components (used for the managed root's ancestors)."""
        display = self._display(parts)
        return GroupDir(resolve_beneath(self.fd, parts, self.dev, display, group), display, group)

    def open(self, group: GroupPath) -> GroupDir:
        return self.open_rel(self.rel(group), group)

    def for_reading(self, group: GroupPath) -> GroupDir | None:
        """A handle for reading the group's files that opens nothing itself: each file is opened by its
        path from the mount (openat2, the same rules), and a missing directory reads as missing files.
        Where the kernel lacks openat2, the directory is opened now (None if it is not there)."""
        if _openat2_available:
            return self._by_path(self.rel(group), group)
        return self.try_open(group)

    def _by_path(self, parts: tuple[str, ...], group: GroupPath) -> GroupDir:
        """An unopened handle whose files are opened by path from the mount (openat2 only)."""
        return GroupDir(-1, self._display(parts), group, base_fd=self.fd, rel="/".join(parts))

    def try_open(self, group: GroupPath) -> GroupDir | None:
        """The group's directory, or None if it does not exist."""
        try:
            return self.open(group)
        except DriverError as exc:
            if exc.errno in (errno_mod.ENOENT, errno_mod.ENODEV):
                return None
            raise

    def exists(self, group: GroupPath) -> bool:
        gd = self.try_open(group)
        if gd is None:
            return False
        gd.close()
        return True

    @contextlib.contextmanager
    def parent_of(self, group: GroupPath) -> Iterator[tuple[GroupDir, str]]:
        """The parent directory of a group (the managed root's parent for ``()``) and the group's name."""
        parts = self.rel(group)
        if not parts:
            raise UnsafePathError("the mount root itself is not a group cgctl manages", group=group)
        parent = self.open_rel(parts[:-1], group[:-1] if group else group)
        try:
            yield parent, parts[-1]
        finally:
            parent.close()
