"""The label timeline shared by every relay through Redis (the ``redis`` extra).

Each relay flushes what it saw since its last flush (a delta) with one Lua script call per
timeline, all pipelined: counts with ``HINCRBY``, first and last times with a compare-and-set
(times are 20-digit strings, so comparing them as strings is exact), services and moves with
``HSET``. Deltas add up whatever the order, so two relays' counts add up. Reads take every
label's hash of one prompt.

Layout (the tenant's hash-tagged prefix, as the fetch-log store's, ``promptstamp:{tenant}:``):

- ``ro:p:<prompt>``: a set of the prompt's labels;
- ``ro:t:<prompt>:<label>``: a hash, fields ``v|<version>|<f,l,n,gf,gl,g,e,i,o>``,
  ``v|<version>|<d,it,ot>|<bucket>`` (the duration, input and output token sketches),
  ``s|<instance>|<version>|<f,l,n,s>``, ``svc|<instance>``, ``m|<time>``. A relay of a release
  before the token sketches skips their fields (and prunes them with their version).

Both expire ``rollouts.retention_days`` after their last write; :meth:`RedisTimelines.prune`
drops the entries inside a hash that retention has passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast
from urllib.parse import quote, unquote

import redis

from ..store.redis import tenant_prefix
from ._model import Timeline
from ._observer import TimelineKey

__all__ = ["RedisTimelines"]

# KEYS: the timeline hash, the prompt's label set. ARGV: ttl ms, label, then (op, field, value)...
# op i: HINCRBY; n / x: keep the smaller / larger (equal-length digit strings); s: HSET.
_MERGE = """
local key, idx = KEYS[1], KEYS[2]
redis.call('SADD', idx, ARGV[2])
for n = 3, #ARGV, 3 do
  local op, f, v = ARGV[n], ARGV[n + 1], ARGV[n + 2]
  if op == 'i' then
    redis.call('HINCRBY', key, f, v)
  elseif op == 's' then
    redis.call('HSET', key, f, v)
  else
    local cur = redis.call('HGET', key, f)
    if (not cur) or (op == 'n' and v < cur) or (op == 'x' and v > cur) then
      redis.call('HSET', key, f, v)
    end
  end
end
redis.call('PEXPIRE', key, ARGV[1])
redis.call('PEXPIRE', idx, ARGV[1])
return 1
"""


def _t(ns: int) -> str:
    return f"{ns:020d}"


def _q(part: str) -> str:
    return quote(part, safe="")


def _unq(part: str) -> str:
    return unquote(part)


#: The sketches' field names (``v|<version>|<name>|<bucket>``) -> VersionStats attribute.
_SKETCH_FIELDS = {"d": "durations", "it": "input_token_buckets", "ot": "output_token_buckets"}


def _ops(tl: Timeline) -> list[str]:
    """The script's (op, field, value) triples for one delta."""
    out: list[str] = []

    def put(op: str, f: str, value: int | str) -> None:
        if op in ("n", "x"):
            if not value:
                return
            value = _t(int(value))
        elif op == "i" and not value:
            return
        out.extend((op, f, str(value)))

    for v, s in tl.versions.items():
        p = f"v|{v}|"
        put("n", p + "f", s.first_ns)
        put("x", p + "l", s.last_ns)
        put("i", p + "n", s.fetches)
        put("n", p + "gf", s.gen_first_ns)
        put("x", p + "gl", s.gen_last_ns)
        put("i", p + "g", s.generations)
        put("i", p + "e", s.errors)
        put("i", p + "i", s.input_tokens)
        put("i", p + "o", s.output_tokens)
        for kind, attr in _SKETCH_FIELDS.items():
            sketch: dict[int, int] = getattr(s, attr)
            for b, n in sketch.items():
                put("i", f"{p}{kind}|{b}", n)
    for (inst, v), i in tl.served.items():
        p = f"s|{_q(inst)}|{v}|"
        put("n", p + "f", i.first_ns)
        put("x", p + "l", i.last_ns)
        put("i", p + "n", i.fetches)
        put("x", p + "s", i.since_ns)
    for inst, svc in tl.services.items():
        if svc:
            put("s", f"svc|{_q(inst)}", svc)
    for at, v in tl.moves.items():
        put("s", f"m|{_t(at)}", v)
    return out


_VERSION_FIELDS = {"f": "first_ns", "l": "last_ns", "n": "fetches", "gf": "gen_first_ns", "gl": "gen_last_ns",
                   "g": "generations", "e": "errors", "i": "input_tokens", "o": "output_tokens"}
_INSTANCE_FIELDS = {"f": "first_ns", "l": "last_ns", "n": "fetches", "s": "since_ns"}


def parse_hash(fields: Mapping[str, str]) -> Timeline:
    """A timeline hash back into a :class:`Timeline` (fields it does not know are skipped)."""
    tl = Timeline()
    for f, value in fields.items():
        parts = f.split("|")
        try:
            if parts[0] == "v" and len(parts) == 3 and parts[2] in _VERSION_FIELDS:
                setattr(tl.version(int(parts[1])), _VERSION_FIELDS[parts[2]], int(value))
            elif parts[0] == "v" and len(parts) == 4 and parts[2] in _SKETCH_FIELDS:
                sketch: dict[int, int] = getattr(tl.version(int(parts[1])), _SKETCH_FIELDS[parts[2]])
                sketch[int(parts[3])] = int(value)
            elif parts[0] == "s" and len(parts) == 4 and parts[3] in _INSTANCE_FIELDS:
                setattr(tl.instance(_unq(parts[1]), int(parts[2])), _INSTANCE_FIELDS[parts[3]], int(value))
            elif parts[0] == "svc" and len(parts) == 2:
                tl.services[_unq(parts[1])] = value
            elif parts[0] == "m" and len(parts) == 2:
                tl.moves[int(parts[1])] = int(value)
        except ValueError:
            continue
    tl.reindex()
    return tl


def _stale_fields(fields: Mapping[str, str], tl: Timeline, horizon_ns: int) -> list[str]:
    old_v = {str(v) for v, s in tl.versions.items() if s.seen_last_ns < horizon_ns}
    old_i = {(_q(i), str(v)) for (i, v), s in tl.served.items() if s.last_ns < horizon_ns}
    alive = {_q(i) for (i, v), s in tl.served.items() if s.last_ns >= horizon_ns}
    out = []
    for f in fields:
        parts = f.split("|")
        if ((parts[0] == "v" and len(parts) > 1 and parts[1] in old_v)
                or (parts[0] == "s" and len(parts) > 2 and (parts[1], parts[2]) in old_i)
                or (parts[0] == "svc" and len(parts) == 2 and parts[1] not in alive)
                or (parts[0] == "m" and len(parts) == 2 and parts[1].isdigit()
                    and int(parts[1]) < horizon_ns)):
            out.append(f)
    return out


class RedisTimelines:
    """Timeline deltas into Redis and merged timelines out. Thread-safe (redis-py's pool)."""

    def __init__(self, url: str, retention_ns: int, *, timeout: float = 5.0) -> None:
        self._client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout,
                                            socket_connect_timeout=timeout)
        self._ttl_ms = max(1, retention_ns // 10**6)
        self._merge = self._client.register_script(_MERGE)

    @staticmethod
    def _keys(tenant: str, prompt: str, label: str) -> tuple[str, str]:
        prefix = tenant_prefix(tenant)
        return f"{prefix}ro:t:{_q(prompt)}:{_q(label)}", f"{prefix}ro:p:{_q(prompt)}"

    def write(self, deltas: Mapping[TimelineKey, Timeline]) -> None:
        """Add ``deltas`` to the shared timelines, in one round trip. Raises ``redis.RedisError``."""
        if not deltas:
            return
        pipe = self._client.pipeline(transaction=False)
        for (tenant, prompt, label), tl in deltas.items():
            key, idx = self._keys(tenant, prompt, label)
            self._merge(keys=[key, idx], args=[self._ttl_ms, label, *_ops(tl)], client=pipe)
        pipe.execute()

    def read(self, tenant: str, prompt: str) -> dict[str, Timeline]:
        """Every label's shared timeline of ``tenant``'s ``prompt``. Raises ``redis.RedisError``."""
        labels = sorted(cast(Iterable[str], self._client.smembers(self._keys(tenant, prompt, "")[1])))
        if not labels:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for label in labels:
            pipe.hgetall(self._keys(tenant, prompt, label)[0])
        hashes: list[Any] = pipe.execute()
        return {label: parse_hash(h) for label, h in zip(labels, hashes, strict=True) if h}

    def prune(self, keys: Iterable[TimelineKey], horizon_ns: int) -> int:
        """Drop the entries of these timelines that retention has passed; how many fields went."""
        removed = 0
        for tenant, prompt, label in keys:
            key, _ = self._keys(tenant, prompt, label)
            fields = cast(dict[str, str], self._client.hgetall(key))
            stale = _stale_fields(fields, parse_hash(fields), horizon_ns)
            if stale:
                removed += int(self._client.hdel(key, *stale))
        return removed

    def close(self) -> None:
        self._client.close()

