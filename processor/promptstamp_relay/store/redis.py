"""Fetch-log state shared by several relays through Redis (the ``redis`` extra, ``redis-py``).

Scaling out (docs/scaling.md): the Collector's ``loadbalancing`` exporter keeps each trace, and the
fetch-log records of that trace, on one relay, so the ``trace`` tier is answered by that relay's
memory. What crosses traces, the ``instance`` and ``latest`` tiers, is shared through Redis.

:class:`RedisStore` keeps the store protocol's promise (never block on a network) by answering
every call from a **local view** in memory. Two background threads keep the view and Redis in
step:

* the **writer** flushes the records this relay received to Redis in pipelined batches (group
  commit: a batch is whatever arrived while the previous one was in flight), from a bounded
  outbound buffer; while Redis is unreachable the buffer keeps the newest records and counts
  what it had to drop;
* the **reader** loads every tenant's records from Redis when it (re)connects, then follows the
  other relays' writes on a per-tenant stream with a blocking ``XREAD``: a record received by
  another relay lands in this relay's view within milliseconds, well inside the hold window.

Redis layout, tenant ``T`` (``{T}`` is literal: a Redis Cluster hash tag, one slot per tenant).
Key parts are percent-encoded; every key carries a TTL of the store's age bound, refreshed on
each write:

=========================================  ======  ==============================================
``promptstamp:{T}:l:<key>:<label>``         ZSET    one member per record, score = fetch time (µs)
``promptstamp:{T}:i:<inst>:<key>:<label>``  ZSET    the same members, per fetching instance
``promptstamp:{T}:idx``                     ZSET    every record of ``T``: the per-tenant cap and age
                                                    bound (trimmed atomically by a script), and what
                                                    a relay loads when it (re)connects
``promptstamp:{T}:log``                     STREAM  the batches as written (``MAXLEN ~``): what the
                                                    other relays follow
``promptstamp:tenants``                     SET     tenants with data (discovery)
=========================================  ======  ==============================================

A member is ``<fetch time ns, 20 digits>|key|label|instance|version|source|trace|span|error``
(text percent-encoded): it is its own id, so writing the same record twice (an app's retry, two
relays) stores it once, and records with the same score sort by their exact time, then by
content. The local view sorts the same way (time, then member), so every relay, and a
``ZREVRANGEBYSCORE … LIMIT 0 1`` on Redis itself, picks the same record for "the latest not
after the span's start", whatever order concurrent writers wrote in.

The writes of one tenant's batch are one server-side script (a ``ZADD`` per key, ``PEXPIRE`` on
every key touched, the ``XADD``, the trim), pipelined with the other tenants' in one round trip.

When Redis is unreachable, the view still answers (the trace tier is untouched; the cross-trace
tiers answer from what the view holds). The store logs the transition, counts errors, exposes
:attr:`RedisStore.stats` (``degraded``, ``errors``, ``dropped`` …, exported as
``promptstamp_store_*`` metrics) and reconnects with exponential backoff and jitter. After Redis
restarts empty (its ``run_id`` changed) each relay writes its own records back.
"""

from __future__ import annotations

import bisect
import functools
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..records import FetchRecord
from .memory import latest_at

if TYPE_CHECKING:
    from ..config import StoreConfig

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

    ``<time ns, 20 digits>|key|label|instance|version|source|trace id|span id|error type``, text
    parts percent-encoded (so never a ``|``), ids in hex, no error type as an empty part.
    """
    return (f"{r.time_ns:020d}|{_q(r.key)}|{_q(r.label)}|{_q(r.instance)}|{r.version}|{_q(r.source)}|"
            f"{r.trace_id.hex()}|{r.span_id.hex()}|{_q(r.error_type or '')}")


def decode_member(member: str) -> FetchRecord:
    """The record a member encodes. Raises ``ValueError`` on anything malformed."""
    parts = member.split("|")
    if len(parts) != 9 or len(parts[0]) != 20 or not parts[0].isdigit() or not parts[4].isdigit():
        raise ValueError("not a promptstamp fetch-log member")
    t, key, label, instance, version, source, trace, span, error = parts
    try:
        r = FetchRecord(key=_unq(key), label=_unq(label), version=int(version), source=_unq(source),
                        time_ns=int(t), trace_id=bytes.fromhex(trace), span_id=bytes.fromhex(span),
                        instance=_unq(instance), error_type=_unq(error) or None)
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


# -- the local view ------------------------------------------------------------------------------
_Entry = tuple[int, str, FetchRecord]  # (time_ns, member, record): sorted by (time_ns, member)


def _sort_key(e: _Entry) -> tuple[int, str]:
    return e[0], e[1]


class _View:
    """Every record this relay knows (its own and the other relays'), indexed like MemoryStore.

    Same bounds as :class:`~promptstamp_relay.store.MemoryStore` (age, per tenant, overall; the
    oldest arrivals go first), but series sort by ``(time, member)``: ties on time resolve the same
    way on every relay, whichever arrived first here. Deduplicates by member. Not thread-safe.
    """

    def __init__(self, max_entries: int, max_per_tenant: int) -> None:
        self.max_entries = max_entries
        self.max_per_tenant = max_per_tenant
        self._seq = 0
        self._known: dict[tuple[str, str], tuple[FetchRecord, bool]] = {}  # -> (record, own)
        self._fifo: dict[str, deque[tuple[int, str]]] = {}  # tenant -> (arrival seq, member)
        self._trace: dict[tuple[str, bytes, str, str], list[_Entry]] = {}
        self._instance: dict[tuple[str, str, str, str], list[_Entry]] = {}
        self._label: dict[tuple[str, str, str], list[_Entry]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def add(self, tenant: str, member: str, r: FetchRecord, *, own: bool) -> bool:
        """Take in one record; False when it is already known."""
        if (tenant, member) in self._known:
            return False
        self._known[(tenant, member)] = (r, own)
        self._seq += 1
        fifo = self._fifo.get(tenant)
        if fifo is None:
            fifo = self._fifo[tenant] = deque()
        fifo.append((self._seq, member))
        e: _Entry = (r.time_ns, member, r)
        if r.trace_id:
            _insert(self._trace, (tenant, r.trace_id, r.key, r.label), e)
        if r.instance:
            _insert(self._instance, (tenant, r.instance, r.key, r.label), e)
        _insert(self._label, (tenant, r.key, r.label), e)
        if len(fifo) > self.max_per_tenant:
            self._evict_oldest(tenant)
        while len(self._known) > self.max_entries:
            self._evict_oldest(min(self._fifo, key=lambda t: self._fifo[t][0][0]))
        return True

    def prune(self, horizon_ns: int) -> None:
        for tenant in list(self._fifo):
            fifo = self._fifo.get(tenant)
            while fifo and self._known[(tenant, fifo[0][1])][0].time_ns < horizon_ns:
                self._evict_oldest(tenant)

    def _evict_oldest(self, tenant: str) -> None:
        fifo = self._fifo[tenant]
        _, member = fifo.popleft()
        if not fifo:
            del self._fifo[tenant]
        r, _own = self._known.pop((tenant, member))
        e: _Entry = (r.time_ns, member, r)
        if r.trace_id:
            _remove(self._trace, (tenant, r.trace_id, r.key, r.label), e)
        if r.instance:
            _remove(self._instance, (tenant, r.instance, r.key, r.label), e)
        _remove(self._label, (tenant, r.key, r.label), e)

    def own_snapshot(self) -> list[tuple[str, list[tuple[int, str]]]]:
        """A copy of the arrival queues (cheap: the caller holds the lock for this only)."""
        return [(t, list(fifo)) for t, fifo in self._fifo.items()]

    def own(self, snapshot: list[tuple[str, list[tuple[int, str]]]]) -> list[tuple[str, str, FetchRecord]]:
        """The records of ``snapshot`` this relay received itself and still holds, oldest first.

        Runs without the lock: single dict reads only, and a record evicted since is skipped.
        """
        out: list[tuple[str, str, FetchRecord]] = []
        known = self._known
        for tenant, fifo in snapshot:
            for _, member in fifo:
                entry = known.get((tenant, member))
                if entry is not None and entry[1]:
                    out.append((tenant, member, entry[0]))
        return out

    def in_trace(self, tenant: str, trace_id: bytes, key: str, label: str) -> list[FetchRecord]:
        series = self._trace.get((tenant, trace_id, key, label))
        return [e[2] for e in series] if series else []

    def latest_for_instance(
        self, tenant: str, instance: str, key: str, label: str, at_ns: int
    ) -> FetchRecord | None:
        return latest_at(self._instance.get((tenant, instance, key, label)), at_ns, None)

    def latest(self, tenant: str, key: str, label: str, at_ns: int, not_before_ns: int) -> FetchRecord | None:
        return latest_at(self._label.get((tenant, key, label)), at_ns, not_before_ns)


def _insert(index: dict[Any, list[_Entry]], key: Any, e: _Entry) -> None:
    series = index.get(key)
    if series is None:
        index[key] = [e]
        return
    last = series[-1]
    if e[0] > last[0] or (e[0] == last[0] and e[1] > last[1]):
        series.append(e)  # the common case: records arrive in time order
    else:
        bisect.insort(series, e, key=_sort_key)


def _remove(index: dict[Any, list[_Entry]], key: Any, e: _Entry) -> None:
    series = index.get(key)
    if series is None:
        return
    i = bisect.bisect_left(series, _sort_key(e), key=_sort_key)
    if i < len(series) and series[i][1] == e[1]:
        del series[i]
    if not series:
        del index[key]


# -- the store -----------------------------------------------------------------------------------
@dataclass
class RedisStoreStats:
    """What the metrics layer reads (``promptstamp_store_*``). Written by the store's threads."""

    connected: bool = False  # both links (writer, reader) up
    degraded: bool = False  # a link is down: answering from the local view only
    errors: int = 0  # failed Redis operations (each failed connect, flush or read)
    flushed: int = 0  # records written to Redis
    dropped: int = 0  # records never written: the outbound buffer was full (Redis down or slow)
    pending: int = 0  # records waiting in the outbound buffer now
    remote: int = 0  # records taken in from other relays (or from Redis at (re)connect)
    rejected: int = 0  # members in Redis that are not valid records (ignored)
    degraded_resolutions: int = 0  # instance/latest answers given while degraded
    reconnects: int = 0  # successful connects after a failure
    flush_batches: int = 0
    flush_seconds: float = 0.0  # total time spent in flush round trips


class RedisStore:
    """:class:`~promptstamp_relay.store.FetchLogStore` shared by several relays through Redis.

    Every protocol call answers from the local view and returns without touching the network;
    see the module docstring for the threads and the Redis layout. ``start=False`` leaves the
    background threads unstarted (tests of the view; :meth:`start` starts them).
    """

    def __init__(
        self,
        url: str,
        *,
        max_entries: int = 200_000,
        max_entries_per_tenant: int | None = None,
        max_age_ns: int = 24 * 3600 * 10**9,
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
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        if max_age_ns <= 0:
            raise ValueError("max_age_ns must be positive")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("the redis store needs a redis://, rediss:// or unix:// URL")
        self.url = url
        self.origin = uuid.uuid4().hex[:16]  # this relay's id on the streams
        self.stats = RedisStoreStats()
        self._max_per_tenant = max_entries_per_tenant or max_entries
        self._max_age_ns = max_age_ns
        self._ttl_ms = max(1000, max_age_ns // 10**6)
        self._max_pending = max_pending or max_entries
        self._max_batch = max_batch
        self._stream_maxlen = stream_maxlen
        self._block_ms = read_block_ms
        self._tenant_refresh = tenant_refresh_seconds
        self._backoff = (backoff_initial_seconds, backoff_max_seconds)
        self._timeouts = (socket_timeout_seconds, connect_timeout_seconds)
        self._view = _View(max_entries, self._max_per_tenant)
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
        return cls(
            cfg.url,
            max_entries=cfg.max_entries,
            max_entries_per_tenant=cfg.max_entries_per_tenant,
            max_age_ns=int(cfg.max_age_seconds * 1e9),
        )

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
                if self._view.add(tenant, member, r, own=True):
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
            snapshot = self._view.own_snapshot()
        own = self._view.own(snapshot)
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
                    added += self._view.add(tenant, m, r, own=False)
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
