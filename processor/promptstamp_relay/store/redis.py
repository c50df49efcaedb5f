"""Fetch-log state shared by several relays through Redis (the ``redis`` extra, ``redis-py``).

Why: with several relays, what crosses traces (the ``instance`` and ``latest`` tiers) must be
seen by every relay. What: :class:`RedisStore` answers every store call from a local view in
memory (the shared index of ``_index.py``, so the receive path never waits on Redis); a writer
thread flushes this relay's records to Redis in pipelined batches, and a reader thread follows
the other relays' writes on per-tenant streams. The layout, the member format, the degraded
mode and the measurements are in docs/scaling.md.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..core.model import FetchRecord
from ..counters import Counters, metric
from ._config import StoreBounds, StoreConfig
from ._index import FetchIndex

__all__ = ["RedisStore", "RedisStoreStats", "decode_member", "encode_member", "tenant_prefix"]

log = logging.getLogger("promptstamp_relay.store.redis")

TENANTS_KEY = "promptstamp:tenants"
_PAGE = 5000  # idx members read per round trip when loading a tenant
_XREAD_COUNT = 256  # stream entries (batches) per XREAD
_INGEST_CHUNK = 256  # records put into the view per hold of its lock (keeps the receive path fast)

# Members start ``<time ns, 20 digits>|<key>|<label>|<instance>|`` (parts percent-encoded, so
# never a '|'): the scripts find a member's series keys in the member itself.
_LUA_SERIES = """
local function series(prefix, m)
  local t, k, l, i = string.match(m, '^(%d+)|([^|]*)|([^|]*)|([^|]*)|')
  if not t or #t ~= 20 then return nil end
  local ik = nil
  if i ~= '' then ik = prefix .. 'i:' .. i .. ':' .. k .. ':' .. l end
  return string.sub(t, 1, 17), prefix .. 'l:' .. k .. ':' .. l, ik
end
"""

# Trim one tenant: drop records older than the age bound, then the oldest beyond the cap, from
# the idx and from both series of each. Atomic, so relays trimming the same tenant at once never
# leave a series member behind.
_LUA_TRIM = """
local function drop(prefix, members)
  for _, m in ipairs(members) do
    local _, lk, ik = series(prefix, m)
    if lk then redis.call('ZREM', lk, m) end
    if ik then redis.call('ZREM', ik, m) end
  end
end
local function trim(idx, prefix, cap, horizon)
  local removed = 0
  local old = redis.call('ZRANGEBYSCORE', idx, '-inf', '(' .. horizon, 'LIMIT', 0, 10000)
  if #old > 0 then
    drop(prefix, old)
    redis.call('ZREMRANGEBYRANK', idx, 0, #old - 1)
    removed = #old
  end
  local excess = redis.call('ZCARD', idx) - cap
  if excess > 0 then
    drop(prefix, redis.call('ZRANGE', idx, 0, excess - 1))
    redis.call('ZREMRANGEBYRANK', idx, 0, excess - 1)
    removed = removed + excess
  end
  return removed
end
"""

# One tenant's batch, in one round trip with the rest of the pipeline: every member into its
# label series, its instance series and the idx (one ZADD per key: per-member calls cost twice
# as much), a TTL on every key touched, one stream entry for the other relays (after the ZADDs: a
# reader that sees the entry sees the records), then the trim.
# KEYS: idx, stream. ARGV: prefix, ttl ms, cap, horizon µs, stream maxlen, origin, members...
_WRITE_SCRIPT = _LUA_SERIES + _LUA_TRIM + """
local idx, stream, prefix, ttl = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local groups, order = {}, {}
local function put(key, score, m)
  local g = groups[key]
  if not g then
    g = {}
    groups[key] = g
    order[#order + 1] = key
  end
  g[#g + 1] = score
  g[#g + 1] = m
end
for n = 7, #ARGV do
  local m = ARGV[n]
  local score, lk, ik = series(prefix, m)
  if score then
    put(lk, score, m)
    if ik then put(ik, score, m) end
    put(idx, score, m)
  end
end
for _, key in ipairs(order) do
  local g = groups[key]
  for i = 1, #g, 1000 do
    redis.call('ZADD', key, unpack(g, i, math.min(i + 999, #g)))
  end
  redis.call('PEXPIRE', key, ttl)
end
redis.call('XADD', stream, 'MAXLEN', '~', ARGV[5], '*', 'o', ARGV[6], 'r', table.concat(ARGV, '\\n', 7))
redis.call('PEXPIRE', stream, ttl)
return trim(idx, prefix, tonumber(ARGV[3]), ARGV[4])
"""


# -- codec ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=65536)
def _q(part: str) -> str:
    return quote(part, safe="")


@functools.lru_cache(maxsize=65536)
def _unq(part: str) -> str:
    return unquote(part, errors="strict")


def tenant_prefix(tenant: str) -> str:
    """``promptstamp:{<tenant>}:``: every key of one tenant starts with it."""
    return f"promptstamp:{{{_q(tenant)}}}:"


def encode_member(r: FetchRecord) -> str:
    """The sorted-set member for ``r``: deterministic, so it is also the record's id.

    ``<time ns, 20 digits>|key|label|instance|version|source|trace id|span id|error type``, then
    ``|service`` when the record has a ``service.name`` (so a record without one encodes as it
    always did); text parts percent-encoded (so never a ``|``), ids in hex, no error type as an
    empty part.
    """
    m = (f"{r.time_ns:020d}|{_q(r.key)}|{_q(r.label)}|{_q(r.instance)}|{r.version}|{_q(r.source)}|"
         f"{r.trace_id.hex()}|{r.span_id.hex()}|{_q(r.error_type or '')}")
    return f"{m}|{_q(r.service)}" if r.service else m


def decode_member(member: str) -> FetchRecord:
    """The record a member encodes (with or without its service part). Raises ``ValueError`` on
    anything malformed or not in the canonical form :func:`encode_member` writes."""
    parts = member.split("|")
    if len(parts) not in (9, 10) or len(parts[0]) != 20 or not parts[0].isdigit() or not parts[4].isdigit():
        raise ValueError("not a promptstamp fetch-log member")
    t, key, label, instance, version, source, trace, span, error = parts[:9]
    service = parts[9] if len(parts) == 10 else ""
    if len(parts) == 10 and not service:
        raise ValueError("not a promptstamp fetch-log member: empty service part")
    try:
        r = FetchRecord(key=_unq(key), label=_unq(label), version=int(version), source=_unq(source),
                        time_ns=int(t), trace_id=bytes.fromhex(trace), span_id=bytes.fromhex(span),
                        instance=_unq(instance), error_type=_unq(error) or None, service=_unq(service))
    except ValueError as e:  # hex or UTF-8 errors
        raise ValueError(f"not a promptstamp fetch-log member: {e}") from None
    if not (r.key and r.label and r.source and r.version):
        raise ValueError("not a promptstamp fetch-log member: empty key, label, source or version")
    return r


def _redacted(url: str) -> str:
    """``url`` without its credentials, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# -- the store -----------------------------------------------------------------------------------
@dataclass
class RedisStoreStats(Counters):
    """What the metrics layer reads (``promptstamp_store_*``). Written by the store's threads."""

    connected: bool = metric("1 while both Redis links are up", name="store_connected", gauge=True,
                             default=False)
    degraded: bool = metric("1 while Redis is unreachable: resolving from the local view",
                            name="store_degraded", gauge=True, default=False)
    errors: int = metric("Failed Redis operations (connects, flushes, reads)", name="store_errors")
    flushed: int = metric("Fetch-log records written to Redis", name="store_flushed")
    dropped: int = metric("Fetch-log records never written to Redis (buffer full)", name="store_dropped")
    pending: int = metric("Fetch-log records waiting to be written to Redis", name="store_pending",
                          gauge=True)
    remote: int = metric("Fetch-log records taken in from other relays", name="store_remote_records")
    rejected: int = 0  # members in Redis that are not valid records (ignored)
    degraded_resolutions: int = metric("instance/latest answers given while degraded",
                                       name="store_degraded_resolutions")
    reconnects: int = 0  # successful connects after a failure
    flush_batches: int = 0
    flush_seconds: float = 0.0  # total time spent in flush round trips


class RedisStore:
    """:class:`~promptstamp_relay.store.FetchLogStore` shared by several relays through Redis.

    Every protocol call answers from the local view and returns without touching the network
    (docs/scaling.md: the threads, the Redis layout). Bounds come from ``config`` (each keyword
    overrides its field); the other keywords tune the Redis link. ``start=False`` leaves the
    background threads unstarted (tests of the view; :meth:`start` starts them).
    """

    def __init__(
        self,
        url: str,
        config: StoreConfig | None = None,
        *,
        max_entries: int | None = None,
        max_entries_per_tenant: int | None = None,
        max_age_ns: int | None = None,
        max_pending: int | None = None,
        max_batch: int = 1000,
        stream_maxlen: int = 1000,
        read_block_ms: int = 200,
        tenant_refresh_seconds: float = 0.5,
        backoff_initial_seconds: float = 0.1,
        backoff_max_seconds: float = 2.0,
        socket_timeout_seconds: float = 2.0,
        connect_timeout_seconds: float = 1.0,
        start: bool = True,
    ) -> None:
        bounds = StoreBounds.of(config, max_entries=max_entries,
                                max_entries_per_tenant=max_entries_per_tenant, max_age_ns=max_age_ns)
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("the redis store needs a redis://, rediss:// or unix:// URL")
        self.bounds = bounds
        self.url = url
        self.origin = uuid.uuid4().hex[:16]  # this relay's id on the streams
        self.stats = RedisStoreStats()
        self._max_per_tenant = bounds.max_per_tenant
        self._max_age_ns = bounds.max_age_ns
        self._ttl_ms = max(1000, bounds.max_age_ns // 10**6)
        self._max_pending = max_pending or bounds.max_entries
        self._max_batch = max_batch
        self._stream_maxlen = stream_maxlen
        self._block_ms = read_block_ms
        self._tenant_refresh = tenant_refresh_seconds
        self._backoff = (backoff_initial_seconds, backoff_max_seconds)
        self._timeouts = (socket_timeout_seconds, connect_timeout_seconds)
        # Every record this relay knows (its own and the other relays'); ties on fetch time
        # break by member, so every relay picks the same record whatever arrived first here.
        self._view: FetchIndex[str] = FetchIndex(bounds.max_entries, bounds.max_per_tenant, unique=True)
        self._lock = threading.Lock()  # the view: held for in-memory work only
        self._pending: deque[tuple[str, str, FetchRecord]] = deque()
        self._pending_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._links_down: set[str] = set()
        self._links_up: set[str] = set()
        self._degraded_since = 0.0
        self._last_drop_log = 0.0
        self._now_ns = 0  # the largest now_ns a caller passed
        self._run_id: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._close_deadline = 0.0
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="redis-store-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="redis-store-reader", daemon=True)
        self._started = False
        self._script = redis.Redis().register_script(_WRITE_SCRIPT)  # no connection: a script handle
        self._in_flight = 0
        #: The last flush round trips, in seconds (the benchmark reads them).
        self.flush_latencies: deque[float] = deque(maxlen=4096)
        if start:
            self.start()

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> RedisStore:
        return cls(cfg.url, cfg)

    def start(self) -> RedisStore:
        if not self._started:
            self._started = True
            log.info("redis store: sharing fetch-log state through %s (relay %s)",
                     _redacted(self.url), self.origin)
            self._writer.start()
            self._reader.start()
        return self

    # -- the store protocol (receive path: memory only) -------------------------------------------
    def add(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None:
        if now_ns > self._now_ns:
            self._now_ns = now_ns
        horizon = self._now_ns - self._max_age_ns
        encoded = [(encode_member(r), r) for r in records
                   if r.version is not None and r.time_ns >= horizon]
        fresh: list[tuple[str, str, FetchRecord]] = []
        with self._lock:
            for member, r in encoded:
                if self._view.add(tenant, r, member, own=True):
                    fresh.append((tenant, member, r))
            self._view.prune(horizon)
        if fresh:
            self._enqueue(fresh)
            self._wake.set()

    def in_trace(self, tenant: str, trace_id: bytes, key: str, label: str) -> Sequence[FetchRecord]:
        with self._lock:
            return self._view.in_trace(tenant, trace_id, key, label)

    def latest_for_instance(
        self, tenant: str, instance: str, key: str, label: str, at_ns: int
    ) -> FetchRecord | None:
        with self._lock:
            r = self._view.latest_for_instance(tenant, instance, key, label, at_ns)
        if r is not None and self.stats.degraded:
            self.stats.degraded_resolutions += 1
        return r

    def latest(
        self, tenant: str, key: str, label: str, at_ns: int, not_before_ns: int
    ) -> FetchRecord | None:
        with self._lock:
            r = self._view.latest(tenant, key, label, at_ns, not_before_ns)
        if r is not None and self.stats.degraded:
            self.stats.degraded_resolutions += 1
        return r

    def prune(self, now_ns: int) -> None:
        if now_ns > self._now_ns:
            self._now_ns = now_ns
        with self._lock:
            self._view.prune(self._now_ns - self._max_age_ns)

    def __len__(self) -> int:
        return len(self._view)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the threads, after flushing what is pending (for at most ``timeout`` seconds)."""
        if self._closed:
            return
        self._closed = True
        self._close_deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._started:
            self._writer.join(timeout + 1.0)
            self._reader.join(self._block_ms / 1000 + self._timeouts[0] + 1.0)
        left = len(self._pending)
        if left:
            log.warning("redis store: %d fetch-log records not written to redis at shutdown "
                        "(this relay resolved with them; other relays never saw them)", left)

    # -- state ---------------------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the outbound buffer is empty (tests, benchmarks); True when it is."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._pending or self._in_flight:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def _enqueue(self, items: Iterable[tuple[str, str, FetchRecord]], *, front: bool = False) -> None:
        dropped = 0
        with self._pending_lock:
            if front:
                self._pending.extendleft(reversed(list(items)))
            else:
                self._pending.extend(items)
            while len(self._pending) > self._max_pending:
                self._pending.popleft()  # the oldest: the newest matter most to the latest tiers
                dropped += 1
            self.stats.pending = len(self._pending)
            self.stats.dropped += dropped
        if dropped:
            now = time.monotonic()
            if now - self._last_drop_log >= 10.0:
                self._last_drop_log = now
                log.warning("redis store: outbound buffer full (%d records): %d records dropped so far, "
                            "never written to redis (other relays will not see them)",
                            self._max_pending, self.stats.dropped)

    def _take(self, n: int) -> list[tuple[str, str, FetchRecord]]:
        with self._pending_lock:
            k = min(n, len(self._pending))
            batch = [self._pending.popleft() for _ in range(k)]
            self._in_flight = k
            self.stats.pending = len(self._pending)
        return batch

    def _link_ok(self, link: str) -> None:
        with self._state_lock:
            self._links_up.add(link)
            was_down = link in self._links_down
            self._links_down.discard(link)
            if was_down:
                self.stats.reconnects += 1
            if self.stats.degraded and not self._links_down:
                self.stats.degraded = False
                log.info("redis store: %s reachable again after %.1f s: back to shared state "
                         "(%d records to flush)", _redacted(self.url),
                         time.monotonic() - self._degraded_since, len(self._pending))
            self.stats.connected = not self._links_down and self._links_up >= {"writer", "reader"}

    def _link_failed(self, link: str, exc: BaseException) -> None:
        with self._state_lock:
            self.stats.errors += 1
            self._links_up.discard(link)
            first = link not in self._links_down
            self._links_down.add(link)
            self.stats.connected = False
            if not self.stats.degraded:
                self.stats.degraded = True
                self._degraded_since = time.monotonic()
                log.warning("redis store: %s unreachable (%s: %s): DEGRADED, resolving from this "
                            "relay's local view (trace tier unaffected; instance/latest tiers see only "
                            "what this relay already knows); buffering writes, reconnecting with backoff",
                            _redacted(self.url), type(exc).__name__, exc)
            elif first:
                log.debug("redis store: %s link down too: %s", link, exc)

    def _sleep_backoff(self, delay: float) -> float:
        self._stop.wait(delay * (0.8 + 0.4 * random.random()))
        return min(delay * 2, self._backoff[1])

    def _connect(self, *, reader: bool) -> redis.Redis:
        socket_timeout, connect_timeout = self._timeouts
        if reader:
            socket_timeout = max(socket_timeout, self._block_ms / 1000 + 1.0)
        client = redis.Redis.from_url(
            self.url, decode_responses=True, socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 0),
            single_connection_client=reader,  # the writer's pipelines take the pool's connection
            client_name=f"promptstamp-relay-{self.origin}-{'r' if reader else 'w'}",
        )
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
        return client

    # -- the writer ------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        conn: redis.Redis | None = None
        delay = self._backoff[0]
        while True:
            if self._stop.is_set():
                if conn is None or not self._pending or time.monotonic() >= self._close_deadline:
                    break
            elif conn is not None and not self._pending:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                if conn is None:
                    conn = self._connect(reader=False)
                    self._check_restart(conn)
                    self._link_ok("writer")
                    delay = self._backoff[0]
                batch = self._take(self._max_batch)
                if batch:
                    try:
                        self._write(conn, batch)
                    except BaseException:
                        self._enqueue(batch, front=True)
                        raise
                    finally:
                        self._in_flight = 0
            except Exception as e:
                if not isinstance(e, (redis.RedisError, OSError)):
                    log.exception("redis store: unexpected error in the writer")
                self._link_failed("writer", e)
                if conn is not None:
                    conn.close()
                    conn = None
                if self._stop.is_set():
                    break
                delay = self._sleep_backoff(delay)
        if conn is not None:
            conn.close()

    def _check_restart(self, conn: redis.Redis) -> None:
        """A Redis that restarted (new ``run_id``) may have lost everything: write ours back.

        Both links call this when they connect (a pipeline may reconnect silently, so the writer
        alone could miss a restart); the first to see the new ``run_id`` does the work.
        """
        run_id = str(conn.info("server").get("run_id", ""))
        with self._state_lock:
            previous, self._run_id = self._run_id, run_id
        if previous is None or previous == run_id:
            return
        with self._lock:
            own = self._view.own_entries()
        room = max(0, self._max_pending - len(self._pending))
        own = own[-room:] if room else []
        log.warning("redis store: redis restarted (run_id changed): writing back the %d records "
                    "this relay received", len(own))
        self._enqueue(own, front=True)
        self._wake.set()

    def _write(self, conn: redis.Redis, batch: list[tuple[str, str, FetchRecord]]) -> None:
        by_tenant: dict[str, list[str]] = {}
        for tenant, member, _r in batch:
            by_tenant.setdefault(tenant, []).append(member)
        ttl = self._ttl_ms
        horizon_us = max(0, (self._now_ns - self._max_age_ns) // 1000)
        pipe = conn.pipeline(transaction=False)
        for tenant, members in by_tenant.items():
            prefix = tenant_prefix(tenant)
            self._script(keys=[prefix + "idx", prefix + "log"],
                         args=[prefix, ttl, self._max_per_tenant, horizon_us, self._stream_maxlen,
                               self.origin, *members],
                         client=pipe)
            pipe.sadd(TENANTS_KEY, tenant)
        pipe.pexpire(TENANTS_KEY, ttl)
        t0 = time.perf_counter()
        pipe.execute()
        dt = time.perf_counter() - t0
        st = self.stats
        st.flushed += len(batch)
        st.flush_batches += 1
        st.flush_seconds += dt
        self.flush_latencies.append(dt)

    # -- the reader ------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        conn: redis.Redis | None = None
        delay = self._backoff[0]
        cursors: dict[str, str] = {}  # stream key -> last entry id read
        tenants: dict[str, str] = {}  # stream key -> tenant
        next_refresh = 0.0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect(reader=True)
                    self._check_restart(conn)
                    self._link_ok("reader")
                    delay = self._backoff[0]
                    cursors, tenants, next_refresh = {}, {}, 0.0  # reload every tenant: no gap
                if time.monotonic() >= next_refresh:
                    for tenant in sorted(cast(set[str], conn.smembers(TENANTS_KEY))):
                        stream = tenant_prefix(tenant) + "log"
                        if stream not in cursors:
                            cursors[stream] = self._load_tenant(conn, tenant)
                            tenants[stream] = tenant
                    next_refresh = time.monotonic() + self._tenant_refresh
                if not cursors:
                    self._stop.wait(self._block_ms / 1000)
                    continue
                resp = conn.xread(cast(Any, cursors), count=_XREAD_COUNT, block=self._block_ms)
                for stream, entries in _stream_entries(resp):
                    since = cursors[stream]
                    for entry_id, fields in entries:
                        cursors[stream] = entry_id
                        if fields.get("o") != self.origin and fields.get("r"):
                            self._ingest(tenants[stream], fields["r"].split("\n"))
                    if len(entries) == _XREAD_COUNT:
                        self._check_gap(conn, stream, since, tenants[stream])
            except Exception as e:
                if self._stop.is_set():
                    break
                if not isinstance(e, (redis.RedisError, OSError)):
                    log.exception("redis store: unexpected error in the reader")
                self._link_failed("reader", e)
                if conn is not None:
                    conn.close()
                    conn = None
                delay = self._sleep_backoff(delay)
        if conn is not None:
            conn.close()

    def _check_gap(self, conn: redis.Redis, stream: str, since: str, tenant: str) -> None:
        """Behind on a stream: if ``MAXLEN`` trimmed entries not read yet, reload from the idx."""
        oldest = cast(list[tuple[str, Any]], conn.xrange(stream, count=1))
        if oldest and _id_after(oldest[0][0], since):
            log.warning("redis store: this relay fell behind the %s stream; reloading from the idx",
                        stream)
            self._load_tenant(conn, tenant)

    def _load_tenant(self, conn: redis.Redis, tenant: str) -> str:
        """Read a tenant's whole idx into the view; return the stream id to follow from."""
        prefix = tenant_prefix(tenant)
        last = cast(list[tuple[str, Any]], conn.xrevrange(prefix + "log", count=1))
        cursor = last[0][0] if last else "0-0"  # entries up to here are in the idx already
        low = "-inf"
        while True:
            page = cast(list[tuple[str, float]], conn.zrangebyscore(
                prefix + "idx", low, "+inf", start=0, num=_PAGE, withscores=True))
            self._ingest(tenant, [m for m, _ in page])
            if len(page) < _PAGE:
                break
            top = int(page[-1][1])
            # Inclusive from the last score (the view dedupes); past it when a page is all one score.
            low = f"({top}" if int(page[0][1]) == top else str(top)
        return cursor

    def _ingest(self, tenant: str, members: list[str]) -> None:
        horizon = self._now_ns - self._max_age_ns
        decoded: list[tuple[str, FetchRecord]] = []
        for m in members:
            try:
                r = decode_member(m)
            except ValueError:
                self.stats.rejected += 1
                continue
            if r.time_ns >= horizon:
                decoded.append((m, r))
        for i in range(0, len(decoded), _INGEST_CHUNK):
            added = 0
            with self._lock:
                for m, r in decoded[i:i + _INGEST_CHUNK]:
                    added += self._view.add(tenant, r, m, own=False)
            self.stats.remote += added


def _id_after(a: str, b: str) -> bool:
    """Stream id ``a`` is after ``b`` (ids are ``<ms>-<seq>``)."""
    am, _, asq = a.partition("-")
    bm, _, bsq = b.partition("-")
    return (int(am), int(asq or 0)) > (int(bm), int(bsq or 0))


def _stream_entries(resp: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREAD's answer as ``[(stream, [(id, fields)])]`` (RESP2 lists or RESP3 maps)."""
    if not resp:
        return []
    items = resp.items() if isinstance(resp, dict) else resp
    return [(k, list(v)) for k, v in items]
