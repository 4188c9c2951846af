"""Render :class:`exporters.collector.Family` lists as Prometheus text 0.0.4 or OpenMetrics 1.0.0.

This is the server's hot path. It writes the same samples prometheus_client's encoders would write for
:class:`exporters.collector.CgctlCollector` (tests parse both and compare), at a fraction of the cost:
each group's ``cgroup``/``group`` label text is escaped once per scrape, not once per sample.

A body is served in two parts: a :class:`Prefix` (the per-group families, rendered once per snapshot
and shared by every scrape of it) and a small tail rendered per scrape (the agent's own families, whose
counters move between scrapes, and ``# EOF``). With gzip the prefix is a raw deflate stream ended by a
sync flush and the tail a fresh deflate stream; one gzip header and trailer around both make a single
valid gzip member (the technique of zlib's ``gzjoin``), so a client needs no support for multi-member
gzip streams.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from exporters.collector import Extra, Family, escape_label_value

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def format_value(value: float) -> str:
    if value.__class__ is int:
        return str(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:  # NaN
        return "NaN"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


_CHUNK_LINES = 2048  # ~200 KiB of text per chunk: the whole body never needs to exist as one str


def iter_render(families: Sequence[Family], *, openmetrics: bool, eof: bool | None = None) -> Iterator[bytes]:
    """The exposition body for ``families`` in one format, as UTF-8 chunks. ``eof`` (default: whether
    the format is OpenMetrics) ends it with ``# EOF``; a prefix of a body must not have one."""
    if eof is None:
        eof = openmetrics
    out: list[str] = []
    append = out.append
    extra_cache: dict[Extra, str] = {}
    fmt = format_value
    for family in families:
        name = family.name
        kind: str = family.kind
        if not openmetrics:
            # The 0.0.4 text format names counters by their sample name and has no info type.
            if kind == "counter":
                name += "_total"
            elif kind == "info":
                name += "_info"
                kind = "gauge"
        append(f"# HELP {name} {_escape_help(family.help)}\n# TYPE {name} {kind}\n")
        base = family.name
        for suffix, labels, extra, value in family.samples:
            if extra:
                extra_text = extra_cache.get(extra)
                if extra_text is None:
                    extra_text = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in extra)
                    extra_cache[extra] = extra_text
                if labels is not None:
                    append(f"{base}{suffix}{{{labels.text},{extra_text}}} {fmt(value)}\n")
                else:
                    append(f"{base}{suffix}{{{extra_text}}} {fmt(value)}\n")
            elif labels is not None:
                append(f"{base}{suffix}{{{labels.text}}} {fmt(value)}\n")
            else:
                append(f"{base}{suffix} {fmt(value)}\n")
            if len(out) >= _CHUNK_LINES:
                yield "".join(out).encode()
                out.clear()
    if eof:
        append("# EOF\n")
    if out:
        yield "".join(out).encode()


def render(families: Sequence[Family], *, openmetrics: bool) -> bytes:
    """The whole exposition body for ``families`` in one format."""
    return b"".join(iter_render(families, openmetrics=openmetrics))


# RFC 1952 header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


@dataclass(frozen=True, slots=True)
class Prefix:
    """The start of a body, rendered once and reused by :func:`finish` for every scrape.

    ``data`` is the UTF-8 text, or with ``gzip_level`` set a raw deflate stream of it that ends on a
    byte boundary without a final block (``Z_SYNC_FLUSH``), so more deflate blocks can follow it.
    """

    data: bytes
    crc: int  # CRC-32 of the uncompressed text, for the gzip trailer (0 in a plain prefix)
    size: int  # length of the uncompressed text
    openmetrics: bool
    gzip_level: int | None = None


def render_prefix(families: Sequence[Family], *, openmetrics: bool, gzip_level: int | None = None) -> Prefix:
    """``families`` rendered as the start of a body (no ``# EOF``), plain or as an open deflate stream."""
    if gzip_level is None:
        data = b"".join(iter_render(families, openmetrics=openmetrics, eof=False))
        return Prefix(data, 0, len(data), openmetrics)
    crc = size = 0
    compressor = zlib.compressobj(gzip_level, zlib.DEFLATED, -15)  # wbits -15: raw deflate, no framing
    parts = []
    for chunk in iter_render(families, openmetrics=openmetrics, eof=False):
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
        parts.append(compressor.compress(chunk))
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return Prefix(b"".join(parts), crc, size, openmetrics, gzip_level)


def finish(prefix: Prefix, families: Sequence[Family]) -> list[bytes]:
    """The whole body: ``prefix`` followed by ``families`` (and ``# EOF`` in OpenMetrics), as pieces
    to write in order. With gzip, one gzip member whose deflate stream is the prefix's blocks followed
    by the tail's own (a fresh compressor never refers back into the prefix, so the join is valid)."""
    tail = b"".join(iter_render(families, openmetrics=prefix.openmetrics))
    if prefix.gzip_level is None:
        return [prefix.data, tail]
    compressor = zlib.compressobj(prefix.gzip_level, zlib.DEFLATED, -15)
    deflated = compressor.compress(tail) + compressor.flush()  # Z_FINISH: ends with the final block
    trailer = struct.pack("<II", zlib.crc32(tail, prefix.crc), (prefix.size + len(tail)) & 0xFFFFFFFF)
    return [_GZIP_HEADER, prefix.data, deflated + trailer]
