"""A tiny asyncio HTTP/1.1 server for ``/metrics`` and ``/healthz``.

Nothing slow runs on the event loop: collection is the caller's ``collect()`` coroutine (which batches
its reads in one ``asyncio.to_thread``), and building + rendering + gzip of the exposition run in
``asyncio.to_thread`` too — prometheus_client's own aiohttp/ASGI integrations render on the loop and
stall it for hundreds of milliseconds (reference/deps.md §8). The loop only parses request headers and
hands the finished body to the transport.

The per-group part of a body depends on the snapshot alone, so it is rendered once per snapshot and
format (text or OpenMetrics, plain or gzip) and reused by every scrape of that snapshot (an HA pair of
Prometheus servers, several scrapers within ``min_interval``); each scrape renders only the agent's own
families, which move between scrapes, and joins the two (:func:`exporters.exposition.finish`).

Robustness against slow or hostile clients: a deadline for each request's headers (slowloris), a cap
on header size (431), a cap on concurrent connections, a deadline for writing the response, and any
malformed request gets a 400 and a closed connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporters.collector import AgentMetrics, Snapshot, build_agent_families, build_group_families
from exporters.exposition import Prefix, finish, render_prefix

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class SnapshotCache:
    """Calls ``collect()`` at most once per ``min_interval`` seconds; concurrent scrapes share one call.

    A failing collection (or one slower than ``timeout``) is counted in ``cgctl_collect_errors_total``
    and the previous snapshot (or an empty one) is served, so the agent's own metrics stay visible when
    cgroupfs reads break.
    """

    def __init__(
        self,
        collect: Callable[[], Awaitable[Snapshot]],
        agent: AgentMetrics | None = None,
        *,
        min_interval: float = 1.0,
        timeout: float | None = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._collect = collect
        self._agent = agent
        self._min_interval = min_interval
        self._timeout = timeout
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._taken_at = 0.0
        self._inflight: asyncio.Future[Snapshot] | None = None

    @property
    def latest(self) -> Snapshot:
        return self._snapshot if self._snapshot is not None else Snapshot()

    async def get(self) -> Snapshot:
        if self._snapshot is not None and self._clock() - self._taken_at < self._min_interval:
            return self._snapshot
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
        # shield: one scraper disconnecting must not cancel the collection the others wait for.
        return await asyncio.shield(self._inflight)

    async def _refresh(self) -> Snapshot:
        started = time.perf_counter()
        try:
            # A hung read (a stuck filesystem) must not hold every scrape forever: give up, count it.
            snapshot = await asyncio.wait_for(self._collect(), self._timeout)
            errors = snapshot.errors
        except Exception:
            log.exception("event=collect_failed timeout=%s", self._timeout)
            snapshot = self.latest
            errors = 1
        finally:
            self._inflight = None
        if self._agent is not None:
            self._agent.record_collect(time.perf_counter() - started, errors)
        self._snapshot = snapshot
        self._taken_at = self._clock()
        return snapshot


@dataclass(frozen=True)
class ServerLimits:
    header_timeout: float = 10.0  # seconds for a request line + headers (also the keep-alive idle time)
    write_timeout: float = 30.0
    max_header_bytes: int = 16384
    max_connections: int = 64
    gzip_level: int = 1  # level 9 costs ~8x the CPU for ~15% less on the wire (reference/deps.md §8)


@dataclass
class _Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse_head(head: bytes) -> _Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as err:  # pragma: no cover - latin-1 decodes anything
        raise _BadRequest(400, "undecodable request") from err
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header")
        key = name.lower()
        headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    return _Request(method, target.split("?", 1)[0], version, headers)


class MetricsServer:
    """Serves ``/metrics`` from a :class:`SnapshotCache` and ``/healthz`` from a health callable."""

    def __init__(
        self,
        cache: SnapshotCache,
        agent: AgentMetrics | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        health: HealthCheck | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self._cache = cache
        self._agent = agent
        self._host = host
        self._port = port
        self._health = health or (lambda: (True, "ok"))
        self._limits = limits or ServerLimits()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # The rendered per-group part of the snapshot last served, by (openmetrics, gzip); a future so
        # that concurrent scrapes of one snapshot wait for one rendering instead of starting their own.
        self._prefix_snapshot: Snapshot | None = None
        self._prefixes: dict[tuple[bool, bool], asyncio.Future[Prefix]] = {}

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._port, limit=self._limits.max_header_bytes
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= self._limits.max_connections or task is None:
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._limits.header_timeout)
            except asyncio.LimitOverrunError:
                await self._send(writer, 431, b"request headers too large\n", close=True)
                return
            except asyncio.IncompleteReadError as err:
                if err.partial.strip():
                    await self._send(writer, 400, b"incomplete request\n", close=True)
                return
            except TimeoutError:
                return
            except ValueError:  # the stream's own limit, raised as ValueError by readuntil
                await self._send(writer, 431, b"request headers too large\n", close=True)
                return
            try:
                request = _parse_head(head)
            except _BadRequest as err:
                await self._send(writer, err.status, f"{err}\n".encode(), close=True)
                return
            connection = request.headers.get("connection", "").lower()
            keep_alive = (
                "keep-alive" in connection if request.version == "HTTP/1.0" else "close" not in connection
            )
            if "transfer-encoding" in request.headers or request.headers.get("content-length", "0") != "0":
                # No route takes a body: answer, then close instead of reading and framing one.
                keep_alive = False
            await self._dispatch(request, writer, close=not keep_alive)
            if not keep_alive:
                return

    async def _dispatch(self, request: _Request, writer: asyncio.StreamWriter, *, close: bool) -> None:
        head_only = request.method == "HEAD"
        if request.path not in ("/metrics", "/healthz", "/"):
            await self._send(writer, 404, b"not found\n", close=close, head_only=head_only)
            return
        if request.method not in ("GET", "HEAD"):
            await self._send(
                writer, 405, b"method not allowed\n", close=close, extra=[("Allow", "GET, HEAD")]
            )
            return
        if request.path == "/healthz":
            ok, detail = self._health()
            await self._send(
                writer, 200 if ok else 503, f"{detail}\n".encode(), close=close, head_only=head_only
            )
        elif request.path == "/":
            await self._send(
                writer, 200, b"cgctl agent: see /metrics and /healthz\n", close=close, head_only=head_only
            )
        else:
            await self._metrics(request, writer, close=close, head_only=head_only)

    async def _metrics(
        self, request: _Request, writer: asyncio.StreamWriter, *, close: bool, head_only: bool
    ) -> None:
        _encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        openmetrics = content_type.startswith("application/openmetrics-text")
        use_gzip = gzip_accepted(request.headers.get("accept-encoding", ""))
        try:
            snapshot = await self._cache.get()
            prefix = await self._prefix(snapshot, openmetrics, use_gzip)
            body = await asyncio.to_thread(self._finish, prefix, snapshot)
        except Exception:
            log.exception("event=render_failed")
            await self._send(writer, 500, b"rendering failed\n", close=True)
            return
        extra = [("Content-Encoding", "gzip")] if use_gzip else []
        await self._send(
            writer, 200, body, close=close, head_only=head_only, content_type=content_type, extra=extra
        )

    async def _prefix(self, snapshot: Snapshot, openmetrics: bool, use_gzip: bool) -> Prefix:
        """The per-group part of ``snapshot``'s body in this format, rendered (in a worker thread) by
        the first scrape that needs it and kept until a scrape gets a different snapshot."""
        if snapshot is not self._prefix_snapshot:
            self._prefix_snapshot = snapshot
            self._prefixes = {}
        key = (openmetrics, use_gzip)
        future = self._prefixes.get(key)
        if future is None:
            future = asyncio.ensure_future(
                asyncio.to_thread(self._render_prefix, snapshot, openmetrics, use_gzip)
            )
            self._prefixes[key] = future
        try:
            # shield: one scraper disconnecting must not cancel the rendering the others wait for.
            return await asyncio.shield(future)
        except Exception:
            if self._prefixes.get(key) is future:
                del self._prefixes[key]  # the next scrape tries again
            raise

    def _render_prefix(self, snapshot: Snapshot, openmetrics: bool, use_gzip: bool) -> Prefix:
        level = self._limits.gzip_level if use_gzip else None
        return render_prefix(build_group_families(snapshot), openmetrics=openmetrics, gzip_level=level)

    def _finish(self, prefix: Prefix, snapshot: Snapshot) -> list[bytes]:
        agent = self._agent.state() if self._agent is not None else None
        return finish(prefix, build_agent_families(agent, len(snapshot.usage)))

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes | Sequence[bytes],
        *,
        close: bool,
        head_only: bool = False,
        content_type: str = "text/plain; charset=utf-8",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        pieces = [body] if isinstance(body, bytes) else body  # written in order, never joined into one
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {sum(len(piece) for piece in pieces)}",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        lines.extend(f"{name}: {value}" for name, value in extra or ())
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.writelines(pieces)
        await asyncio.wait_for(writer.drain(), self._limits.write_timeout)
