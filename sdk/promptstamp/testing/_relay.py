"""``LiveRelay``: the real relay on free loopback ports, in front of a loopback Langfuse.

The app under test exports OTLP to :attr:`LiveRelay.otlp_grpc_endpoint` (or
:attr:`~LiveRelay.otlp_http_endpoint`); the relay stamps and sends to a
:class:`~promptstamp.testing.LangfuseServer`, which types, links and drops observations by
Langfuse's rules. :meth:`LiveRelay.generations` is what that server received.

Threads: the relay's own (receivers, hold ticker, delivery workers) and the server's; the
methods here are called from the test's thread. The relay is imported on :meth:`start`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from promptstamp.testing._langfuse import LangfuseServer, Observation
from promptstamp.testing._replay import (
    Generation,
    generation_from_observation,
    load_relay_config,
    outside_generation,
)
from promptstamp_contract.reasons import NOT_A_GENERATION

PROMPT_KEY = "app.prompt.key"

__all__ = ["LiveRelay"]


class _Reasons:
    """A pipeline observer that remembers why each generation ended unresolved (called under
    the relay's processing lock: it only stores)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_span: dict[tuple[str, str], str] = {}
        self.fetch_traces: set[str] = set()

    def on_fetch_records(self, tenant: str, records: Sequence[Any], now_ns: int) -> None:
        with self._lock:
            self.fetch_traces.update(r.trace_id.hex() for r in records if r.trace_id)

    def has_fetch_record(self, trace_id: str) -> bool:
        with self._lock:
            return trace_id in self.fetch_traces

    def on_generations(self, records: Sequence[Any], now_ns: int) -> None:
        with self._lock:
            for r in records:
                if r.reason is not None:
                    self.by_span[(r.trace_id.hex(), r.span_id.hex())] = r.reason

    def get(self, trace_id: str, span_id: str) -> str | None:
        with self._lock:
            return self.by_span.get((trace_id, span_id))


class LiveRelay:
    """A started relay for one test: ``with LiveRelay() as relay: ...`` or ``start()``/``stop()``.

    ``config``: ``None``, a YAML path, a mapping shaped like the YAML file, for everything but
    where it listens and where it sends (always loopback, always :attr:`langfuse`).
    ``langfuse``: a :class:`LangfuseServer` to send to (started and stopped by the caller);
    by default one of its own, with a public key no other server in the process uses.
    """

    def __init__(self, config: Any = None, *, langfuse: LangfuseServer | None = None) -> None:
        self._config = config
        self._own_langfuse = langfuse is None
        self.langfuse = langfuse if langfuse is not None else LangfuseServer(
            public_key=f"pk-lf-relay-{uuid.uuid4().hex[:12]}", secret_key="sk-lf-relay")
        self._reasons = _Reasons()
        self._relay: Any = None
        self.otlp_grpc_endpoint = ""
        self.otlp_http_endpoint: str | None = None
        self.lost = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> LiveRelay:
        from promptstamp_relay.config import Config
        from promptstamp_relay.server import RelayServer

        if self._own_langfuse:
            self.langfuse.start()
        try:
            overrides: dict[str, Any] = {
                "listen": "127.0.0.1:0",
                "metrics_listen": "",
                "exporter.type": "langfuse",
                "exporter.langfuse.base_url": self.langfuse.base_url,
                "exporter.langfuse.public_key": self.langfuse.public_key,
                "exporter.langfuse.secret_key": self.langfuse.secret_key,
                "retry.initial_interval_seconds": 0.1,
                "retry.max_interval_seconds": 0.5,
            }
            if hasattr(Config(), "receivers"):
                overrides["receivers.http.listen"] = "127.0.0.1:0"
            cfg = load_relay_config(self._config, overrides=overrides)
            self._relay = RelayServer(cfg, observers=(self._reasons,)).start()
            self.otlp_grpc_endpoint = f"http://{self._relay.address}"
            self.otlp_http_endpoint = self._http_endpoint()
        except BaseException:
            self.stop()
            raise
        return self

    def _http_endpoint(self) -> str | None:
        address = self._relay.http_address
        return None if address is None else f"http://{address}"

    def stop(self) -> int:
        """Release held spans, drain to the server, stop both. Returns the items the relay
        could not deliver (0 when all arrived). Idempotent."""
        if self._relay is not None:
            self.lost += self._relay.stop(timeout=10)
            self._relay = None
        if self._own_langfuse:
            self.langfuse.stop()
        return self.lost

    def __enter__(self) -> LiveRelay:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what arrived ----------------------------------------------------------------------------
    @property
    def server(self) -> Any:
        """The ``promptstamp_relay.server.RelayServer`` (for its stats)."""
        return self._relay

    def otlp_env(self, protocol: str = "grpc") -> dict[str, str]:
        """``OTEL_EXPORTER_OTLP_*`` for an app in a subprocess (``grpc`` or ``http/protobuf``)."""
        endpoint = self.otlp_grpc_endpoint if protocol == "grpc" else self.otlp_http_endpoint
        if endpoint is None:
            raise RuntimeError("this relay build has no OTLP/HTTP receiver")
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}

    def received_spans(self) -> list[Observation]:
        """Every span Langfuse received, as it would show it (dropped ones included)."""
        spans = list(self.langfuse.observations())
        spans.extend(r.observation for r in self.langfuse.rejected())
        spans.sort(key=lambda o: (o.start_time_unix_nano, o.span_id))
        return spans

    def _all(self) -> list[Generation]:
        found = []
        for o in self.received_spans():
            g = generation_from_observation(o, self._reasons.get(o.trace_id, o.span_id))
            if g is not None:
                found.append(g)
        return found

    def generations(self, wait_for: int = 0, timeout: float = 10.0) -> list[Generation]:
        """The generations (spans with a prompt key that the relay stamped) as Langfuse received
        them, oldest first. ``wait_for``: wait until at least that many have arrived; raise
        ``TimeoutError`` (saying what did arrive) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = [g for g in self._all() if g.reason != NOT_A_GENERATION]
            if len(found) >= wait_for:
                return found
            if time.monotonic() >= deadline:
                got = ", ".join(f"{g.span_name!r} ({g.resolution})" for g in found) or "none"
                raise TimeoutError(f"expected {wait_for} generation(s) within {timeout:g} s; "
                                   f"Langfuse received {len(found)}: {got}")
            time.sleep(0.02)

    def unresolved(self) -> list[Generation]:
        return [g for g in self.generations() if g.version is None]

    def not_generations(self) -> list[Generation]:
        """Spans with a prompt key and a model attribute that Langfuse typed as something else."""
        return [g for g in self._all() if g.reason == NOT_A_GENERATION]

    def outside_scope(self) -> list[Generation]:
        """Generations Langfuse received with no prompt key and no link, in a trace that has a
        fetch record: model calls made outside the prompt's scope (``outside_prompt_scope``)."""
        return [
            outside_generation(o.trace_id, o.span_id, o.name, o.service_name or "")
            for o in self.received_spans()
            if o.type == "GENERATION" and PROMPT_KEY not in o.attributes and o.prompt_name is None
            and self._reasons.has_fetch_record(o.trace_id)
        ]

    def __repr__(self) -> str:
        return f"LiveRelay(grpc={self.otlp_grpc_endpoint!r}, http={self.otlp_http_endpoint!r})"

