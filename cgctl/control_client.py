"""The CLI's side of the agent's control socket (the agent's side: :mod:`cgctl.control`).

A plain blocking socket: the CLI sends one JSON request line and waits for the one answer line, so it
needs no event loop (and does not import asyncio, 25-50 ms of a command's start).
"""

from __future__ import annotations

import json
import socket
from typing import Any


class AgentUnavailable(Exception):
    pass


def call_agent(path: str, request: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one request to a running agent. Raises AgentUnavailable when none listens at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnavailable(str(exc)) from None
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise AgentError(f"sending to the agent at {path} failed: {exc}") from None
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AgentError(f"the agent at {path} did not answer within {timeout:.0f}s") from None
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    data = b"".join(chunks)
    if not data:
        # Connected but no answer: the agent exists, so working around it would make two writers.
        raise AgentError(f"the agent at {path} closed the connection without answering; see its log")
    response: dict[str, Any] = json.loads(data)
    return response


class AgentError(Exception):
    """An agent listens but the exchange failed: never fall back to writing directly."""
