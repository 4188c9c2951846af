"""The agent's control socket: how ``cgctl apply/freeze/thaw`` reach a running agent, so the host has one
writer. One JSON request line in, one JSON response line out, over a Unix stream socket. This is the
agent's side; the CLI's is :mod:`cgctl.control_client` (no asyncio: a blocking socket is all it needs).

Who may talk to it is decided from the kernel's view of the peer (``SO_PEERCRED``), never from anything
the client says: root always, and members of one configured group if the operator chose one.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from drivers.records import record

MAX_REQUEST_BYTES = 64 * 1024

log = logging.getLogger("cgctl.agent")


@record(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def _supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def peer_allowed(peer: Peer, group: str | None) -> bool:
    if peer.uid == 0:
        return True
    if group is None:
        return False
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return False
    return peer.gid == gid or gid in _supplementary_groups(peer.pid)


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlServer:
    def __init__(self, path: str, handler: Handler, group: str | None = None) -> None:
        self.path = path
        self.handler = handler
        self.group = group
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket of a previous agent (the writer lock guards liveness)
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        mode = 0o660 if self.group else 0o600
        os.chmod(self.path, mode)
        if self.group:
            os.chown(self.path, 0, grp.getgrnam(self.group).gr_gid)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            # Read the (bounded) request line before answering, also for a refused peer: replying and
            # closing first would make the client's send fail with EPIPE instead of showing the refusal.
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=10)
            except (TimeoutError, ValueError):
                return
            if not peer_allowed(peer, self.group):
                who = f"uid {peer.uid}"
                allowed = "root" + (f" or members of group {self.group!r}" if self.group else "")
                await self._reply(
                    writer, {"ok": False, "exit": 2, "stderr": f"refused: {who}; only {allowed}"}
                )
                return
            if len(line) > MAX_REQUEST_BYTES:
                await self._reply(writer, {"ok": False, "exit": 2, "stderr": "request too large"})
                return
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                await self._reply(writer, {"ok": False, "exit": 2, "stderr": f"bad request: {exc}"})
                return
            try:
                response = await self.handler(request)
            except Exception as exc:  # a bug must not leave the client without an answer
                log.exception("event=control_request_failed request=%r", request)
                response = {"ok": False, "exit": 1, "stderr": f"agent error: {type(exc).__name__}: {exc}"}
            await self._reply(writer, response)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        writer.write(json.dumps(response).encode() + b"\n")
        with contextlib.suppress(OSError):
            await writer.drain()
