"""Run one command as root in a throw-away VM with a pure cgroup v2 hierarchy (optionally under systemd).

Usage: ``tests/vm/run [--systemd] [--mem MB] [--timeout S] [--verbose] -- COMMAND [ARG...]``

The guest is Debian's own kernel booted by qemu from an extracted ``vmlinux`` (PVH entry: about twice
as fast under software emulation as the compressed bzImage) and a small busybox initramfs. Its ``/init``
mounts the host's ``/`` read-only over 9p under a tmpfs overlay, the project directory read-write at
the same path, and then either runs the command (plain mode: cgroup2 with ``nsdelegate`` on
``/sys/fs/cgroup``, the command in the root cgroup) or hands over to systemd as PID 1 (``--systemd``:
the command runs as a delegated oneshot service after dbus is up).

Channels between host and guest are serial ports, each connected to a unix socket this process
listens on: ttyS0 is the kernel console (kept for diagnostics), ttyS1 the command's stdout, ttyS2 its
stderr, ttyS3 a control line on which the guest reports ``exit N``. Keeping them apart means the
command's output comes back byte-exact and the exit status cannot be confused with output.

Standard library only: the harness must run before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import lzma
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

# Bump whenever the initramfs layout or the guest scripts change: it is part of the cache key.
HARNESS_VERSION = "5"

EXIT_USAGE = 2  # bad arguments or a missing prerequisite (the message names the Debian package)
EXIT_TIMEOUT = 124  # wall-clock timeout: the guest was killed
EXIT_VM_FAILURE = 125  # qemu failed or the guest never reported the command's exit status

DEFAULT_MEM_MB = 2048
DEFAULT_TIMEOUT_S = 900.0
SCRATCH_DISK_BYTES = 64 * 1024 * 1024

# Modules the initramfs loads (with their dependencies, in modules.dep order) before it can mount
# anything: the Debian kernel builds virtio, 9p and overlayfs as modules.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_blk")

# Environment variables handed to the command: an allowlist, so the guest is not shaped by whatever
# the caller's shell happens to export.
ENV_ALLOW_EXACT = frozenset({"PATH", "LANG", "LC_ALL", "TZ", "PYTEST_ADDOPTS", "COLUMNS", "NO_COLOR"})
ENV_ALLOW_PREFIXES = ("CGCTL_", "LC_")

PROG = "tests/vm/run"


class HarnessError(Exception):
    """A failure of the harness itself; ``code`` is the exit status to use."""

    def __init__(self, message: str, code: int = EXIT_VM_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def missing(what: str, package: str) -> HarnessError:
    return HarnessError(f"{what}: install the Debian package {package}", EXIT_USAGE)


# --------------------------------------------------------------------------------------------------
# Prerequisites
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kernel:
    version: str
    image: Path  # the compressed bzImage from /boot
    modules: Path  # /usr/lib/modules/<version>


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.\-+~]", version)]


def find_kernel() -> Kernel:
    override = os.environ.get("CGCTL_VM_KERNEL")
    images = [Path(override)] if override else sorted(Path("/boot").glob("vmlinuz-*"))
    candidates: list[Kernel] = []
    for image in images:
        version = image.name.removeprefix("vmlinuz-")
        modules = Path("/usr/lib/modules") / version
        if image.is_file() and (modules / "modules.dep").is_file():
            candidates.append(Kernel(version, image, modules))
    if not candidates:
        raise missing("no kernel image with modules in /boot and /usr/lib/modules", "linux-image-amd64")
    return max(candidates, key=lambda k: _version_key(k.version))


def find_qemu() -> Path:
    found = shutil.which("qemu-system-x86_64")
    if not found:
        raise missing("qemu-system-x86_64 not found", "qemu-system-x86")
    return Path(found)


def _is_static_elf(path: Path) -> bool:
    """True when the ELF file has no PT_INTERP segment (it needs no dynamic loader)."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
            return False
        phoff = int.from_bytes(header[32:40], "little")
        phentsize = int.from_bytes(header[54:56], "little")
        phnum = int.from_bytes(header[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(
        int.from_bytes(table[i * phentsize : i * phentsize + 4], "little") != pt_interp for i in range(phnum)
    )


def find_busybox() -> Path:
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    raise missing("no statically linked busybox", "busybox-static")


def check_systemd_prerequisites() -> None:
    if not Path("/lib/systemd/systemd").is_file():
        raise missing("/lib/systemd/systemd not found", "systemd")
    if not shutil.which("dbus-daemon") and not Path("/usr/bin/dbus-broker").is_file():
        raise missing("no D-Bus system bus daemon", "dbus")


def kvm_usable() -> bool:
    """KVM only where it really works: a paravirtual /dev/kvm (kvm_pvm) hangs a stock kernel."""
    forced = os.environ.get("CGCTL_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or Path("/sys/module/kvm_pvm").exists():
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", cpuinfo, re.MULTILINE) is not None


def project_root() -> Path:
    """The top of the checkout this harness lives in (found by its .git, no git binary needed)."""
    here = Path(__file__).resolve().parent
    for directory in (here, *here.parents):
        if (directory / ".git").exists():
            return directory
    return here.parent.parent  # tests/vm/harness.py → the project directory


# --------------------------------------------------------------------------------------------------
# Cached artifacts: vmlinux and the base initramfs
# --------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    override = os.environ.get("CGCTL_VM_CACHE")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/var/cache/cgctl-vm")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cgctl-vm"


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage (XZ or gzip payload), or None when it cannot be found."""
    for magic, make in (
        (b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)),
        (b"\x1f\x8b\x08\x00", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    ):
        start = bzimage.find(magic)
        while start != -1:
            try:
                elf = make().decompress(bzimage[start:])
            except (lzma.LZMAError, zlib.error):
                elf = b""
            if elf.startswith(b"\x7fELF"):
                return elf
            start = bzimage.find(magic, start + 1)
    return None


class Cpio:
    """A writer for the ``newc`` cpio format the kernel unpacks into its initial rootfs."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._parts.append(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self._parts.append(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = b"".join(self._parts)
        return data + b"\0" * (-len(data) % 512)


def module_load_order(modules_dir: Path, names: Iterable[str]) -> list[Path]:
    """The .ko files to insmod, dependencies first, as ``modprobe --show-depends`` would order them."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        base = Path(target).name.split(".ko")[0]
        by_name[base.replace("-", "_")] = target
    order: list[str] = []
    for name in names:
        found = by_name.get(name.replace("-", "_"))
        if found is None:
            raise HarnessError(f"kernel module {name} not found in {modules_dir}/modules.dep")
        # modules.dep lists the full dependency closure, the module loaded last first.
        for item in [*reversed(deps[found]), found]:
            if item not in order:
                order.append(item)
    return [modules_dir / item for item in order]


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if path.name.endswith(".ko"):
        return data
    raise HarnessError(f"cannot read compressed kernel module {path} (only .ko, .ko.xz, .ko.gz)")


INIT_SCRIPT = r"""#!/bin/busybox sh
# cgctl VM init: mount the host read-only under a tmpfs overlay, then run the command or start systemd.
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
    echo "cgctl-init: $*"
    echo "fail $*" > /dev/ttyS3
    sync
    poweroff -f
}
for tty in /dev/ttyS1 /dev/ttyS2 /dev/ttyS3; do stty -F "$tty" raw -echo; done
for module in $(cat /modules/order); do insmod "/modules/$module" || fail "insmod $module"; done
. /cgctl/run.conf
echo "booting $CGCTL_MODE" > /dev/ttyS3
mkdir -p /lower /ovl /newroot
opts=trans=virtio,version=9p2000.L,msize=512000,cache=loose
mount -t 9p -o "$opts,ro" hostroot /lower || fail "mount host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /ovl
mkdir -p /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work overlay /newroot \
    || fail "mount overlay"
# Without this file the guest's systemd believes it runs in a container and ignores the command line.
rm -f /newroot/.dockerenv
for dir in proc sys dev tmp run; do mkdir -p "/newroot/$dir"; done
mount -o move /proc /newroot/proc
mount -o move /sys /newroot/sys
mount -o move /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
# The project last, so a checkout under /tmp or /run is not hidden by the guest's own tmpfs there.
mkdir -p "/newroot$CGCTL_PROJECT"
mount -t 9p -o "$opts" project "/newroot$CGCTL_PROJECT" || fail "mount project directory over 9p"
mkdir -p /newroot/run/cgctl
cp /bin/busybox /cgctl/*.sh /cgctl/run.conf /newroot/run/cgctl/
if [ "$CGCTL_MODE" = systemd ]; then
    mkdir -p /newroot/run/systemd/system
    cp /cgctl/units/* /newroot/run/systemd/system/
    exec switch_root /newroot /lib/systemd/systemd
fi
mount -t cgroup2 -o nsdelegate cgroup2 /newroot/sys/fs/cgroup || fail "mount cgroup2"
exec switch_root /newroot /run/cgctl/busybox sh /run/cgctl/stage2.sh
"""

# PID 1 after switch_root in plain mode: run the command, flush, power off.
STAGE2_SCRIPT = r"""/run/cgctl/busybox ifconfig lo 127.0.0.1 up
/run/cgctl/busybox sh /run/cgctl/command.sh
/run/cgctl/busybox sync
/run/cgctl/busybox poweroff -f
echo o > /proc/sysrq-trigger
"""

# Units of the host's boot that cost seconds under emulation and mean nothing in a test VM.
SYSTEMD_MASKED_UNITS = (
    "apparmor.service",
    "timers.target",
    "systemd-timesyncd.service",
    "systemd-binfmt.service",
    "systemd-update-utmp.service",
)

SYSTEMD_TARGET = """[Unit]
Description=cgctl test environment
Wants=basic.target dbus.socket dbus.service cgctl-test.service
AllowIsolate=yes
"""

SYSTEMD_SERVICE = """[Unit]
Description=cgctl test command
Wants=dbus.socket dbus.service
After=basic.target dbus.socket dbus.service

[Service]
Type=oneshot
Delegate=yes
ExecStart=/run/cgctl/busybox sh /run/cgctl/command.sh
StandardInput=null
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
SuccessAction=poweroff-force
FailureAction=poweroff-force
"""


def build_base_initramfs(kernel: Kernel, busybox: Path) -> bytes:
    archive = Cpio()
    for directory in ("bin", "dev", "proc", "sys", "modules", "cgctl", "cgctl/units"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)  # the kernel opens it for /init's stdio before devtmpfs
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    archive.file("cgctl/stage2.sh", STAGE2_SCRIPT.encode(), 0o755)
    archive.file("cgctl/units/cgctl-test.target", SYSTEMD_TARGET.encode())
    archive.file("cgctl/units/cgctl-test.service", SYSTEMD_SERVICE.encode())
    order = []
    for path in module_load_order(kernel.modules, INITRAMFS_MODULES):
        name = path.name.split(".ko")[0] + ".ko"
        archive.file(f"modules/{name}", read_module(path))
        order.append(name)
    archive.file("modules/order", ("\n".join(order) + "\n").encode())
    return archive.finish()


@dataclasses.dataclass(frozen=True)
class Artifacts:
    kernel: Path  # the ELF vmlinux, or the bzImage when no payload could be extracted
    initramfs: Path


def _fingerprint(paths: Sequence[Path], *extra: bytes) -> str:
    digest = hashlib.sha256(HARNESS_VERSION.encode())
    for data in extra:
        digest.update(data)
    for path in paths:
        st = path.stat()
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


STALE_INITRAMFS_S = 24 * 3600


def prepare_artifacts(kernel: Kernel, busybox: Path) -> Artifacts:
    """Build (once, under a lock: concurrent runs share the cache) and return the cached boot files.

    The vmlinux is keyed by the kernel image alone; the initramfs also by this file (the guest scripts
    live here: any edit must rebuild it) and busybox. Initramfs files unused for a day are removed.
    """
    directory = cache_root() / f"{kernel.version}-{_fingerprint([kernel.image])}"
    vmlinux, bzimage_marker = directory / "vmlinux", directory / "use-bzimage"
    initramfs = directory / f"initramfs-{_fingerprint([busybox], Path(__file__).read_bytes())}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (vmlinux.exists() or bzimage_marker.exists()):
                elf = extract_vmlinux(kernel.image.read_bytes())
                if elf is None:
                    bzimage_marker.touch()  # slower to boot, but it boots
                else:
                    _write_atomically(vmlinux, elf)
            if initramfs.exists():
                os.utime(initramfs)  # marks it in use for the pruning below
            else:
                _write_atomically(initramfs, build_base_initramfs(kernel, busybox))
            for old in directory.glob("initramfs-*"):
                if time.time() - old.stat().st_mtime > STALE_INITRAMFS_S:
                    old.unlink(missing_ok=True)
    except OSError as error:
        raise HarnessError(f"cannot build the VM cache in {directory}: {error}") from error
    return Artifacts(vmlinux if vmlinux.exists() else kernel.image, initramfs)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunRequest:
    command: list[str]
    systemd: bool
    mem_mb: int
    timeout_s: float
    verbose: bool


def guest_environment(host_env: dict[str, str], stdout_is_tty: bool, systemd: bool) -> dict[str, str]:
    env = {
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    for name, value in host_env.items():
        if name in ENV_ALLOW_EXACT or name.startswith(ENV_ALLOW_PREFIXES):
            env[name] = value
    # The guest's stdout is a serial tty either way; say "dumb" when the caller's is not a terminal so
    # tools do not colour output that goes to a file or a CI log.
    env["TERM"] = host_env.get("TERM", "xterm") if stdout_is_tty else "dumb"
    env["CGCTL_VM"] = "systemd" if systemd else "v2"  # lets a test tell where it runs
    return env


@dataclasses.dataclass(frozen=True)
class Terminal:
    """What the caller's stdout and stderr are: the command sees a tty only where the caller has one."""

    stdout_is_tty: bool
    stderr_is_tty: bool
    columns: int
    rows: int


def command_script(request: RunRequest, cwd: str, env: dict[str, str], terminal: Terminal) -> str:
    """The guest-side wrapper: enter cwd, run the command on ttyS1/ttyS2, report its status on ttyS3.

    A stream whose host side is not a terminal reaches its serial port through a fifo and ``cat``, so
    the command sees a pipe there, as it would natively in CI (no progress redraws, no colours).
    """
    bb = "/run/cgctl/busybox"
    columns, rows = terminal.columns, terminal.rows
    assignments = " ".join(shlex.quote(f"{name}={value}") for name, value in sorted(env.items()))
    argv = " ".join(shlex.quote(arg) for arg in request.command)
    lines = [
        f"{bb} stty -F /dev/ttyS1 raw -echo cols {columns} rows {rows}",
        f"{bb} stty -F /dev/ttyS2 raw -echo cols {columns} rows {rows}",
    ]
    if request.systemd:
        # Move into a leaf of the delegated cgroup (what DelegateSubgroup= does in later systemd), so
        # tests may enable controllers in the service's cgroup and create siblings of this leaf.
        lines += [
            f'cg="/sys/fs/cgroup$({bb} sed -n "s/^0:://p" /proc/self/cgroup)"',
            f'{bb} mkdir -p "$cg/payload" && echo $$ > "$cg/payload/cgroup.procs"',
            'export CGCTL_TEST_CGROUP_BASE="$cg"',
        ]
    else:
        lines.append("export CGCTL_TEST_CGROUP_BASE=/sys/fs/cgroup")
    lines += [
        f"if ! cd {shlex.quote(cwd)} 2>/dev/null; then",
        f"    echo {shlex.quote(f'{PROG}: the working directory {cwd} is not visible in the guest')}"
        " > /dev/ttyS2",
        "    echo 'exit 125' > /dev/ttyS3",
        "    exit 125",
        "fi",
    ]
    targets, relays = [], []
    for tty, name, is_tty in (
        ("ttyS1", "stdout", terminal.stdout_is_tty),
        ("ttyS2", "stderr", terminal.stderr_is_tty),
    ):
        if is_tty:
            targets.append(f"/dev/{tty}")
        else:
            fifo = f"/run/cgctl/{name}.fifo"
            lines += [f"{bb} mkfifo {fifo}", f"{bb} cat {fifo} > /dev/{tty} &", f"{name}_relay=$!"]
            targets.append(fifo)
            relays.append(f"${name}_relay")
    lines += [
        "echo running > /dev/ttyS3",
        f'{bb} env -i CGCTL_TEST_CGROUP_BASE="$CGCTL_TEST_CGROUP_BASE" {assignments} {argv}'
        f" </dev/null >{targets[0]} 2>{targets[1]}",
        "rc=$?",
    ]
    if relays:
        # A process the command left running may hold a fifo open: give the relays a bounded time.
        lines += [
            f"( {bb} sleep 3; kill {' '.join(relays)} 2>/dev/null ) &",
            f"wait {' '.join(relays)}",
        ]
    lines.append('echo "exit $rc" > /dev/ttyS3')
    if request.systemd:
        # systemd's own (forced) poweroff hangs unmounting the 9p shares; the guest is disposable, so
        # cut power directly once the status is out.
        lines += [f"{bb} sync", "echo o > /proc/sysrq-trigger", f"{bb} sleep 30"]
    lines.append("exit $rc")
    return "\n".join(lines) + "\n"


def run_initramfs(request: RunRequest, project: Path, script: str) -> bytes:
    archive = Cpio()
    archive.directory("cgctl")
    config = (
        f"CGCTL_MODE={'systemd' if request.systemd else 'v2'}\nCGCTL_PROJECT={shlex.quote(str(project))}\n"
    )
    archive.file("cgctl/run.conf", config.encode())
    archive.file("cgctl/command.sh", script.encode(), 0o755)
    return archive.finish()


class Channel:
    """A listening unix socket that qemu connects one serial port to; a thread pumps what arrives."""

    def __init__(self, path: Path, sink: BinaryIO | None) -> None:
        self.path = path
        self.sink = sink
        self.data = bytearray()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            connection, _ = self._server.accept()
        except OSError:
            return
        with connection:
            while chunk := connection.recv(65536):
                self.data += chunk
                if self.sink is not None:
                    self.sink.write(chunk)
                    self.sink.flush()

    def close(self, wait_s: float = 2.0) -> None:
        self._thread.join(wait_s)
        self._server.close()


def kernel_cmdline(systemd: bool) -> str:
    parts = [
        "console=ttyS0",
        "quiet",
        "panic=-1",
        "systemd.unified_cgroup_hierarchy=1",
        "cgroup_no_v1=all",
        # The guest is disposable: side-channel mitigations only cost boot time under emulation.
        "mitigations=off",
    ]
    if systemd:
        parts += ["systemd.unit=cgctl-test.target", "systemd.firstboot=off", "systemd.show_status=0"]
        parts += [f"systemd.mask={unit}" for unit in SYSTEMD_MASKED_UNITS]
    extra = os.environ.get(
        "CGCTL_VM_CMDLINE_EXTRA", ""
    )  # for debugging a boot, e.g. "systemd.log_level=debug"
    return " ".join([*parts, *extra.split()])


def qemu_command(
    qemu: Path,
    artifacts: Artifacts,
    initramfs: Path,
    scratch: Path,
    project: Path,
    sockets: list[Path],
    request: RunRequest,
) -> list[str]:
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm_usable() else ["-accel", "tcg,thread=multi"]
    command = [
        str(qemu), "-M", "pc", "-display", "none", "-no-reboot", "-nodefaults", "-no-user-config",
        *accel, "-smp", "2", "-m", str(request.mem_mb),
        "-kernel", str(artifacts.kernel), "-initrd", str(initramfs),
        "-append", kernel_cmdline(request.systemd),
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={project},mount_tag=project,security_model=none,multidevs=remap",
        "-drive", f"file={scratch},if=virtio,format=raw,cache=unsafe",
    ]  # fmt: skip
    for index, path in enumerate(sockets):
        command += ["-chardev", f"socket,id=ser{index},path={path}", "-serial", f"chardev:ser{index}"]
    return command


# Guest-private mounts: the files of the host under these paths are not what the guest sees there.
GUEST_PRIVATE_DIRS = (Path("/tmp"), Path("/run"), Path("/dev"), Path("/proc"), Path("/sys"))


def guest_cwd(cwd: Path, project: Path) -> str:
    """The caller's cwd when the guest sees the same files there, else / (with a warning)."""
    if (
        cwd != project
        and project not in cwd.parents
        and any(cwd == private or private in cwd.parents for private in GUEST_PRIVATE_DIRS)
    ):
        print(
            f"{PROG}: {cwd} is private to the host (the guest mounts its own); running in /", file=sys.stderr
        )
        return "/"
    return str(cwd)


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    except OSError:
        return int(os.environ.get("COLUMNS", "80") or 80), 24


def run(request: RunRequest) -> int:
    qemu = find_qemu()
    kernel = find_kernel()
    busybox = find_busybox()
    if request.systemd:
        check_systemd_prerequisites()
    project = project_root()
    artifacts = prepare_artifacts(kernel, busybox)

    terminal = Terminal(sys.stdout.isatty(), sys.stderr.isatty(), *_terminal_size())
    env = guest_environment(dict(os.environ), terminal.stdout_is_tty, request.systemd)
    script = command_script(request, guest_cwd(Path.cwd(), project), env, terminal)

    with tempfile.TemporaryDirectory(prefix="cgctl-vm-") as temporary:
        workdir = Path(temporary)
        initramfs = workdir / "initramfs"
        with initramfs.open("wb") as out, artifacts.initramfs.open("rb") as base:
            shutil.copyfileobj(base, out)  # the kernel unpacks concatenated cpio archives in order
            out.write(run_initramfs(request, project, script))
        scratch = workdir / "scratch.img"
        with scratch.open("wb") as f:
            f.truncate(SCRATCH_DISK_BYTES)

        console_sink = sys.stderr.buffer if request.verbose else None
        channels = [
            Channel(workdir / "console.sock", console_sink),
            Channel(workdir / "stdout.sock", sys.stdout.buffer),
            Channel(workdir / "stderr.sock", sys.stderr.buffer),
            Channel(workdir / "control.sock", None),
        ]
        console, control = channels[0], channels[3]
        argv = qemu_command(qemu, artifacts, initramfs, scratch, project, [c.path for c in channels], request)
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        except OSError as error:
            raise HarnessError(f"cannot start qemu: {error}") from error
        try:
            qemu_output, _ = process.communicate(timeout=request.timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            for channel in channels:
                channel.close(0.5)
            _print_console_tail(console.data)
            summary = _status_summary(control.data)
            raise HarnessError(
                f"timeout after {request.timeout_s:g} s: the guest was killed ({summary})", EXIT_TIMEOUT
            ) from None
        except (KeyboardInterrupt, SystemExit):  # a signal: say where the guest was before it goes
            _print_console_tail(console.data)
            print(f"{PROG}: interrupted ({_status_summary(control.data)})", file=sys.stderr)
            raise
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        for channel in channels:
            channel.close()
        elapsed = time.monotonic() - started
        status = _exit_status(control.data)
        if status is None:
            _print_console_tail(console.data)
            if qemu_output.strip():
                sys.stderr.write(qemu_output.decode(errors="replace"))
            raise HarnessError(
                f"the guest did not report an exit status (qemu exit {process.returncode}, "
                f"{_status_summary(control.data)})"
            )
        if request.verbose:
            print(f"{PROG}: command exited {status}; VM ran {elapsed:.1f} s", file=sys.stderr)
        return status


def _exit_status(control: bytes | bytearray) -> int | None:
    for line in control.decode(errors="replace").splitlines():
        if match := re.fullmatch(r"exit (\d+)", line.strip()):
            return int(match.group(1))
    return None


def _status_summary(control: bytes | bytearray) -> str:
    lines = [line.strip() for line in control.decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return "the kernel did not reach the initramfs"
    meaning = {"running": "the command was still running"}.get(lines[-1])
    if meaning is None and lines[-1].startswith("booting"):
        meaning = "the guest booted but did not start the command"
    return meaning or f"last guest report: {lines[-1]}"


def _print_console_tail(console: bytes | bytearray, lines: int = 30) -> None:
    text = console.decode(errors="replace").replace("\r\n", "\n").rstrip()
    if text:
        tail = "\n".join(text.splitlines()[-lines:])
        print(f"{PROG}: last lines of the guest console:\n{tail}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run COMMAND as root in a throw-away VM with a pure cgroup v2 hierarchy.",
        epilog=(
            "Exit status: the command's own, or 2 (usage error / missing prerequisite), "
            "124 (timeout, guest killed), 125 (the VM failed)."
        ),
    )
    parser.add_argument(
        "--systemd", action="store_true", help="boot systemd as PID 1; run as a delegated service"
    )
    parser.add_argument("--mem", type=int, default=DEFAULT_MEM_MB, metavar="MB", help="guest memory")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S", help="wall-clock limit"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show the guest console on stderr")
    parser.add_argument("--check", action="store_true", help="only check prerequisites and build the cache")
    argv = list(argv)
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1 :]
    else:
        options, command = argv, []
    args = parser.parse_args(options)
    if not command and not args.check:
        parser.error("no command given (usage: tests/vm/run [options] -- COMMAND [ARG...])")
    if args.mem < 256 or args.timeout <= 0:
        parser.error("--mem must be at least 256 and --timeout positive")
    return args, command


def fail(message: str, code: int) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: qemu killed, files removed

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    verbose = args.verbose or os.environ.get("CGCTL_VM_VERBOSE") == "1"
    try:
        if args.check:
            find_qemu()
            kernel = find_kernel()
            busybox = find_busybox()
            if args.systemd:
                check_systemd_prerequisites()
            prepare_artifacts(kernel, busybox)
            return 0
        return run(RunRequest(command, args.systemd, args.mem, args.timeout, verbose))
    except HarnessError as error:
        fail(str(error), error.code)
    except KeyboardInterrupt:
        fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
