"""End-to-end cases for ``cgctl agent`` on the real kernel, shared by the host suite and the v2 suite.

The agent runs as a real subprocess: readiness is read from a real NOTIFY_SOCKET datagram socket,
metrics over real HTTP, control requests over its real Unix socket, signals are real signals.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import kernel
from tests.cgctl_cli import run_cgctl

REPO = Path(__file__).resolve().parent.parent

POLICY = """version: 1
driver: cgroupfs
root: {root}
groups:
  web:
    cpu: {{weight: 200}}
    pids: {{max: {pids}}}
  batch:
    memory: {{max: 128M}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningAgent:
    root: str
    tmp: Path
    proc: subprocess.Popen[str]
    port: int
    notify: socket.socket
    policy: Path
    control: Path
    messages: list[str] = field(default_factory=list)

    def wait_notify(self, key: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if key in message:
                    return message
            self.notify.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except TimeoutError:
                break
        raise AssertionError(f"no {key} from the agent; got {self.messages}; stderr: {self.stderr()}")

    def drain_notify(self) -> None:
        """Take every datagram waiting on the notify socket (it holds only ~10: a message sent to a full
        queue is dropped by the agent, which must never block on it)."""
        self.notify.setblocking(False)
        try:
            while True:
                self.messages.append(self.notify.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.notify.setblocking(True)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def metrics(self) -> str:
        status, _, body = self.get("/metrics")
        assert status == 200
        return body.decode()

    def cgctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        # generous timeout: the v2 suite runs under software emulation
        return run_cgctl(self.tmp, *args, agent_socket=self.control, timeout=180)


def write_policy(path: Path, root: str, pids: int | str = 50) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(POLICY.format(root=root, pids=pids))
    os.replace(tmp, path)  # an atomic replace, as editors and config management do


@pytest.fixture
def extra_agent_args() -> list[str]:
    """Extra command-line arguments for the agent (a test overrides this with parametrize)."""
    return []


@pytest.fixture
def agent(tmp_path: Path, extra_agent_args: list[str]) -> Iterator[RunningAgent]:
    root = f"cgctl-test-{uuid.uuid4().hex[:10]}"
    policy = tmp_path / "policy.yaml"
    write_policy(policy, root)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    port = free_port()
    # The socket's directory must be reachable by other users, so a non-root peer's refusal is
    # decided by the agent (SO_PEERCRED) and not by directory permissions.
    control_dir = Path(tempfile.mkdtemp(prefix="cgctl-test-", dir="/run"))
    control_dir.chmod(0o755)
    control = control_dir / "agent.sock"
    env = dict(
        os.environ,
        NOTIFY_SOCKET=str(tmp_path / "notify"),
        WATCHDOG_USEC="2000000",
        CGCTL_STATE_DIR=str(tmp_path / "state"),
        CGCTL_RUN_DIR=str(tmp_path / "run"),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cgctl",
            "agent",
            "--policy",
            str(policy),
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "1",
            "--socket",
            str(control),
            *extra_agent_args,
        ],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = RunningAgent(root, tmp_path, proc, port, notify, policy, control)
    stuck = ""
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)  # the agent dumps its threads' stacks to stderr
                time.sleep(2)
                proc.kill()
                proc.wait()
                stuck = proc.stderr.read() if proc.stderr is not None else ""
        notify.close()
        shutil.rmtree(control_dir, ignore_errors=True)
        kernel.remove_tree(root)
        assert not kernel.exists(root)
        if stuck:  # SIGTERM must stop the agent (a blocked sd_notify send once kept it running)
            pytest.fail(
                f"the agent did not exit within 60 s of SIGTERM; its log and stacks:\n{stuck[-4000:]}"
            )


def pids_max(root: str, group: str) -> str:
    if kernel.is_pure_v2():
        return kernel.read(kernel.v2_dir(root, group, "pids.max"))
    return kernel.read(kernel.v1_dir("pids", root, group, "pids.max"))


def set_pids_max(root: str, group: str, value: str) -> None:
    if kernel.is_pure_v2():
        kernel.write(kernel.v2_dir(root, group, "pids.max"), value)
    else:
        kernel.write(kernel.v1_dir("pids", root, group, "pids.max"), value)


def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_agent_is_ready_only_after_the_first_reconcile_and_serves_metrics(agent: RunningAgent) -> None:
    ready = agent.wait_notify("READY=1")
    # READY comes after the first reconcile: the groups already exist with their limits.
    assert pids_max(agent.root, "web") == "50"
    assert "STATUS=" in ready
    agent.wait_notify("WATCHDOG=1")
    text = agent.metrics()
    web = f'cgroup="/{agent.root}/web"'
    for family in (
        "cgroup_cpu_usage_seconds_total",
        "cgroup_memory_usage_bytes",
        "cgroup_pids_current",
        "cgroup_pids_max",
        "cgctl_build_info",
        "cgctl_apply_total",
    ):
        assert family in text, family
    assert any(
        line.startswith("cgroup_pids_max{") and web in line and line.endswith(" 50.0")
        for line in text.splitlines()
    ), text
    status, headers, body = agent.get(
        "/metrics", {"Accept-Encoding": "gzip", "Accept": "application/openmetrics-text;version=1.0.0"}
    )
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert "openmetrics" in headers.get("Content-Type", "")
    assert gzip.decompress(body).rstrip().endswith(b"# EOF")
    assert agent.get("/healthz")[0] == 200
    assert agent.get("/nope")[0] == 404


def test_drift_is_reported_and_corrected_within_one_interval(agent: RunningAgent) -> None:
    agent.wait_notify("READY=1")
    set_pids_max(agent.root, "web", "7")
    wait_for(lambda: pids_max(agent.root, "web") == "50", what="the agent to put pids.max back")
    text = agent.metrics()
    assert "cgctl_policy_drift_detected_total" in text


def test_invalid_policy_is_rejected_and_the_last_good_one_kept(agent: RunningAgent) -> None:
    agent.wait_notify("READY=1")
    agent.policy.write_text("version: 1\ngroups: [not, a, mapping]\n")
    agent.proc.send_signal(signal.SIGHUP)
    time.sleep(2.5)
    assert agent.proc.poll() is None, "the agent died of bad input"
    set_pids_max(agent.root, "web", "9")
    wait_for(lambda: pids_max(agent.root, "web") == "50", what="enforcement with the last good policy")
    write_policy(agent.policy, agent.root, pids=60)
    wait_for(lambda: pids_max(agent.root, "web") == "60", what="the fixed policy to be applied")


def test_cli_goes_through_the_agent_socket(agent: RunningAgent) -> None:
    agent.wait_notify("READY=1")
    write_policy(agent.policy, agent.root, pids=70)
    proc = agent.cgctl("apply", str(agent.policy))
    assert proc.returncode == 0, proc.stderr
    assert pids_max(agent.root, "web") == "70"
    other = agent.tmp / "other.yaml"
    write_policy(other, agent.root)
    proc = agent.cgctl("apply", str(other))
    assert proc.returncode == 2 and "running agent manages" in proc.stderr
    proc = agent.cgctl("freeze", "web")
    assert proc.returncode == 0 and "through the agent" in proc.stdout, proc.stderr
    proc = agent.cgctl("thaw", "web")
    assert proc.returncode == 0, proc.stderr


def test_control_socket_refuses_non_root_peers(agent: RunningAgent) -> None:
    agent.wait_notify("READY=1")
    os.chmod(agent.control, 0o666)  # let the kernel deliver the connection: the check is SO_PEERCRED
    code = (
        "import os, socket, sys; os.setgid(65534); os.setuid(65534);"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        's.sendall(b\'{"op": "status"}\\n\'); print(s.recv(4096).decode())'
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(agent.control)], capture_output=True, text=True, timeout=30
    )
    assert '"ok": false' in out.stdout and "refused: uid 65534" in out.stdout, out.stderr


def test_sigterm_exits_cleanly(agent: RunningAgent) -> None:
    agent.wait_notify("READY=1")
    agent.drain_notify()  # room for STOPPING=1
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=20) == 0
    agent.wait_notify("STOPPING=1")
    assert not agent.control.exists()


SIDE = f"cgctl-test-side-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    "extra_agent_args",
    [["--export-subtree", f"/{SIDE}", "--export-exclude", f"/{SIDE}/skip*", "--export-max-depth", "1"]],
)
def test_other_subtrees_are_exported_read_only_with_filters(agent: RunningAgent) -> None:
    agent.wait_notify("READY=1")
    try:
        for name in ("x", "skipme"):
            for directory in kernel.group_dirs(SIDE, name):
                os.makedirs(directory)
        text = agent.metrics()
        # Which families a side group has depends on its controllers (on v2, none are enabled below
        # /SIDE): look for the group in any family.
        series = [line for line in text.splitlines() if line.startswith("cgroup_")]
        assert any(f'cgroup="/{SIDE}/x"' in line and 'group=""' in line for line in series), series
        assert not any("skipme" in line for line in series)
        assert any(f'cgroup="/{agent.root}/web"' in line and 'group="web"' in line for line in series)
    finally:
        kernel.remove_tree(SIDE)
