"""A loopback OTLP/HTTP sink: answers every POST with 200 at once and counts what arrived.

Stands in for Langfuse's ingest (``POST /api/public/otel/v1/traces``) and for any OTLP/HTTP
endpoint (``/v1/traces``, ``/v1/logs``). HTTP/1.1 keep-alive on asyncio, no framework. For each
trace request it records ``(arrival monotonic time, first trace id, spans, stamped spans)``; the
span count comes from walking the protobuf wire format three levels deep (no full parse), the
stamped count from counting ``langfuse.observation.prompt.version`` in the body.

``GET /stats`` returns the counters and arrivals as JSON; ``POST /reset`` clears them.
``GET /api/public/projects`` answers as Langfuse does for a project's keys, so ``serve``'s
upstream check (on by default) passes against the sink as it does against Langfuse.

Run: ``python -m bench.sink [--port 0]``; prints ``sink listening on 127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import zlib
from dataclasses import dataclass, field

STAMP_MARKER = b"langfuse.observation.prompt.version"
MAX_ARRIVALS = 500_000


def _varint(b: bytes, i: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        x = b[i]
        i += 1
        result |= (x & 0x7F) << shift
        if x < 0x80:
            return result, i
        shift += 7


def _fields(b: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of every length-delimited field in ``b[start:end]``."""
    out: list[tuple[int, int, int]] = []
    i = start
    while i < end:
        key, i = _varint(b, i)
        wire = key & 7
        if wire == 2:
            n, i = _varint(b, i)
            out.append((key >> 3, i, i + n))
            i += n
        elif wire == 0:
            _, i = _varint(b, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def count_items(body: bytes) -> tuple[int, bytes]:
    """Spans (or log records) in an encoded Export*ServiceRequest, and the first span's trace id.

    Both requests have the same shape: 1 resource_x → 2 scope_x → 2 items; item field 1 is
    the trace id for spans (for log records field 1 is a time, so the id is then empty).
    """
    n = 0
    first = b""
    for f1, s1, e1 in _fields(body, 0, len(body)):
        if f1 != 1:
            continue
        for f2, s2, e2 in _fields(body, s1, e1):
            if f2 != 2:
                continue
            for f3, s3, e3 in _fields(body, s2, e2):
                if f3 != 2:
                    continue
                n += 1
                if not first:
                    for f4, s4, e4 in _fields(body, s3, e3)[:1]:
                        if f4 == 1:
                            first = body[s4:e4]
    return n, first


@dataclass
class Stats:
    requests: int = 0
    trace_requests: int = 0
    log_requests: int = 0
    other_requests: int = 0
    spans: int = 0
    stamped: int = 0
    logs: int = 0
    body_bytes: int = 0
    wire_bytes: int = 0
    errors: int = 0
    # (monotonic seconds, first trace id hex, spans, stamped)
    arrivals: list[tuple[float, str, int, int]] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "requests": self.requests, "trace_requests": self.trace_requests,
            "log_requests": self.log_requests, "other_requests": self.other_requests,
            "spans": self.spans, "stamped": self.stamped, "logs": self.logs,
            "body_bytes": self.body_bytes, "wire_bytes": self.wire_bytes, "errors": self.errors,
            "arrivals": self.arrivals,
        }


STATS = Stats()
_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
       b"Content-Length: 0\r\n\r\n")
# Langfuse's answer to a project key (web/src/pages/api/public/projects/index.ts, GET).
_PROJECTS = json.dumps({"data": [{"id": "bench-project", "name": "bench",
                                  "organization": {"id": "bench-org", "name": "bench"},
                                  "metadata": {}}]}).encode()


def _json_response(payload: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode() + b"\r\n\r\n" + payload)


def _ingest(path: str, headers: dict[str, str], body: bytes) -> None:
    now = time.monotonic()
    STATS.requests += 1
    STATS.wire_bytes += len(body)
    if headers.get("content-encoding", "") == "gzip":
        body = zlib.decompress(body, 47)
    STATS.body_bytes += len(body)
    if path.endswith("/v1/traces"):
        STATS.trace_requests += 1
        n, first = count_items(body)
        stamped = body.count(STAMP_MARKER)
        STATS.spans += n
        STATS.stamped += stamped
        if len(STATS.arrivals) < MAX_ARRIVALS:
            STATS.arrivals.append((now, first.hex(), n, stamped))
    elif path.endswith("/v1/logs"):
        STATS.log_requests += 1
        STATS.logs += count_items(body)[0]
    else:
        STATS.other_requests += 1


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self._one():
            pass

    def _one(self) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        method, path, _ = head[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body_parts: list[bytes] = []
            i = start
            while True:
                nl = buf.find(b"\r\n", i)
                if nl < 0:
                    return False
                size = int(bytes(buf[i:nl]).split(b";")[0], 16)
                if len(buf) < nl + 2 + size + 2:
                    return False
                body_parts.append(bytes(buf[nl + 2:nl + 2 + size]))
                i = nl + 2 + size + 2
                if size == 0:
                    break
            body = b"".join(body_parts)
            consumed = i
        else:
            length = int(headers.get("content-length", "0") or 0)
            if len(buf) < start + length:
                return False
            body = bytes(buf[start:start + length])
            consumed = start + length
        del buf[:consumed]
        self._respond(method, path, headers, body)
        return True

    def _respond(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        assert self.transport is not None
        if method == "GET" and path == "/stats":
            self.transport.write(_json_response(json.dumps(STATS.as_json()).encode()))
            return
        if method == "GET" and path == "/api/public/projects":
            self.transport.write(_json_response(_PROJECTS))
            return
        if method == "POST" and path == "/reset":
            STATS.__init__()  # type: ignore[misc]
            self.transport.write(_OK)
            return
        try:
            _ingest(path, headers, body)
        except Exception:
            STATS.errors += 1
        self.transport.write(_OK)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Conn, "127.0.0.1", port, backlog=128)
    bound = server.sockets[0].getsockname()[1]
    print(f"sink listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
