"""Fetching prompts through Langfuse's ``get_prompt``, and the runtime fallback policy.

promptstamp keeps its own cache per (name, label) and always calls ``get_prompt`` with
``cache_ttl_seconds=0``, because Langfuse's client cache silently serves a stale copy when a
refresh fails and ``source`` must say so: ``langfuse`` (fresh, or younger than the TTL),
``cache`` (last known good after a failed fetch, at most ``max_stale_seconds`` old),
``fallback`` (the app's code-embedded prompt); a 404 fails closed. The design and the full
table: ``docs/fetch-policy.md``.

A guarded rollout's plan (``_rollout``) is looked up beside each (name, label) and cached the
same way; while one runs, the subjects on its new side are handed ``to_version`` instead of the
label's version, fetched by version and cached per (name, version) with the same policy. Every
failure there fails safe to the label's version (``docs/fetch-policy.md``, "Rollouts").

``Fetcher`` is called from the app's threads (and ``asyncio.to_thread`` workers); it is
thread-safe, with one fetch in flight per (name, label) and per (name, version). The clock is
the module attribute ``_now`` (monotonic seconds), so tests can move time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import promptstamp_contract as contract

from ._errors import PromptError, PromptNotFoundError, PromptUnavailableError
from ._rollout import NEW_SIDE, NOT_FRESH, OLD_SIDE, NotFresh, PlanEntry, fetch_plan
from ._template import PromptType, Template, from_langfuse

DEFAULT_CACHE_TTL_SECONDS: Final = 60.0
DEFAULT_MAX_STALE_SECONDS: Final = 300.0
FAILURE_BACKOFF_SECONDS: Final = 5.0

_now: Callable[[], float] = time.monotonic
_log = logging.getLogger("promptstamp")


@dataclass(frozen=True)
class Resolution:
    """What ``prompt()`` hands out and records: the template, where it came from, and why."""

    template: Template
    source: str  # contract.SOURCE_LANGFUSE | SOURCE_CACHE | SOURCE_FALLBACK
    error_type: str | None = None
    #: a running rollout's side: NEW_SIDE (``template`` is its ``to_version``), OLD_SIDE (the
    #: label's version, which the rollout applies to), None (no rollout applies)
    rollout: str | None = None


@dataclass
class FetchSettings:
    """Defaults for every ``prompt()``; ``install()`` sets them."""

    cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS
    max_stale_seconds: float = DEFAULT_MAX_STALE_SECONDS
    fetch_timeout_seconds: float | None = None  # None: the Langfuse client's timeout (5 s)
    max_retries: int = 0


@dataclass
class _Entry:
    """Cache state of one (name, label), or of one (name, version) a rollout hands out."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # The last copy Langfuse returned and when: one tuple, so a reader outside the lock never
    # pairs a new copy with an old time.
    good: tuple[Template, float] | None = None
    failed_at: float | None = None  # when the last fetch failed, if it did
    error_type: str | None = None
    plan: PlanEntry = field(default_factory=PlanEntry)  # (name, label) entries: its rollout plan
    warned: bool = False  # (name, version) entries: "cannot hand out the new version" was logged
    missing_at: float | None = None  # (name, version) entries: when Langfuse last answered 404


def check_seconds(what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    return float(value)


def _is_not_found(error: BaseException) -> bool:
    if getattr(error, "status_code", None) == 404:
        return True
    try:
        from langfuse.api import NotFoundError
    except ImportError:  # pragma: no cover - a langfuse without the fern error classes
        return type(error).__name__ == "NotFoundError"
    return isinstance(error, NotFoundError)


RELAY_SERVER_HEADER: Final = "promptstamp-relay"


def _answered_by_relay(error: BaseException) -> bool:
    """The answer came from a promptstamp relay (its ``Server`` header), not from Langfuse: the
    client's ``base_url`` points at the relay, which serves OTLP only, never the prompts API."""
    headers = getattr(error, "headers", None) or {}
    try:
        server = next((str(v) for k, v in dict(headers).items() if str(k).lower() == "server"), "")
    except (TypeError, ValueError):
        return False
    return server.startswith(RELAY_SERVER_HEADER)


def _build_client() -> Any:
    # Imported here, not at module import: ``import promptstamp`` must stay cheap, and an app
    # that passes its own client never pays for building one.
    from langfuse import Langfuse

    # Reads LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY and LANGFUSE_BASE_URL (or LANGFUSE_HOST).
    # Tracing stays off: spans go through the app's own OTel pipeline, not Langfuse's exporter.
    return Langfuse(tracing_enabled=False)


class Fetcher:
    """The prompt cache and policy for one Langfuse client. Thread-safe."""

    def __init__(self, client: Any = None, settings: FetchSettings | None = None) -> None:
        self.settings = settings or FetchSettings()
        self._client = client
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._versions: dict[tuple[str, int], _Entry] = {}

    # -- client -----------------------------------------------------------------------------

    def set_client(self, client: Any) -> None:
        """Use ``client`` from now on; a different client forgets every cached prompt and plan."""
        with self._lock:
            if client is self._client:
                return
            self._client = client
            self._entries.clear()
            self._versions.clear()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _build_client()
            return self._client

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._versions.clear()

    def _entry(self, name: str, label: str) -> _Entry:
        with self._lock:
            entry = self._entries.get((name, label))
            if entry is None:
                entry = self._entries[(name, label)] = _Entry()
            return entry

    def _version_entry(self, name: str, version: int) -> _Entry:
        with self._lock:
            entry = self._versions.get((name, version))
            if entry is None:
                entry = self._versions[(name, version)] = _Entry()
            return entry

    # -- resolution -------------------------------------------------------------------------

    def fresh(
        self,
        name: str,
        label: str,
        type_: PromptType,
        cache_ttl_seconds: float | None,
        subject: str | Callable[[], str] = "",
    ) -> Resolution | None:
        """What :meth:`resolve` would hand out when that needs no I/O (the prompt, its plan and,
        on a rollout's new side, the new version all younger than the TTL); else ``None``."""
        ttl = self._ttl(cache_ttl_seconds)
        return self._resolve(name, label, type_, subject, ttl, self.settings.max_stale_seconds, None,
                             io=False)

    def resolve(
        self,
        name: str,
        label: str,
        type_: PromptType,
        *,
        subject: str | Callable[[], str] = "",
        cache_ttl_seconds: float | None = None,
        max_stale_seconds: float | None = None,
        fallback: Template | None = None,
    ) -> Resolution:
        """Hand out (name, label) by the policy in ``docs/fetch-policy.md``, following a running
        rollout's plan for ``subject`` (only hashed; a callable is called only when a rollout
        applies). May block on I/O."""
        ttl = self._ttl(cache_ttl_seconds)
        max_stale = (
            self.settings.max_stale_seconds
            if max_stale_seconds is None
            else check_seconds("max_stale_seconds", max_stale_seconds)
        )
        resolution = self._resolve(name, label, type_, subject, ttl, max_stale, fallback, io=True)
        assert resolution is not None
        return resolution

    def _resolve(
        self,
        name: str,
        label: str,
        type_: PromptType,
        subject: str | Callable[[], str],
        ttl: float,
        max_stale: float,
        fallback: Template | None,
        *,
        io: bool,
    ) -> Resolution | None:
        """The hand-out; with ``io=False``, ``None`` as soon as anything would need a request."""
        entry = self._entry(name, label)
        base = self._fresh(entry, name, label, type_, ttl)
        if base is None:
            if not io:
                return None
            base = self._refresh(entry, name, label, type_, ttl, max_stale, fallback)
        version = base.template.version
        if version is None:  # the app's fallback: no rollout applies to it
            return base
        plan = entry.plan.fresh(ttl, _now())
        if plan is NOT_FRESH:
            if not io:
                return None
            plan = entry.plan.lookup(
                name, label, ttl=ttl, max_stale=max_stale, backoff=FAILURE_BACKOFF_SECONDS, now=_now,
                fetch=lambda: fetch_plan(self.client(), name, label, self.settings.fetch_timeout_seconds),
                is_not_found=_is_not_found,
                label_error=base.error_type if base.source != contract.SOURCE_LANGFUSE else None,
            )
        assert not isinstance(plan, NotFresh)
        if plan is None or not plan.applies_to(version):
            return base
        if plan.new_side(subject if isinstance(subject, str) else subject()):
            new = self._new_version(name, label, plan.to_version, type_, ttl, max_stale, base, io=io)
            if isinstance(new, NotFresh):
                return None
            if new is not None:
                return Resolution(new.template, new.source, new.error_type, NEW_SIDE)
        return Resolution(base.template, base.source, base.error_type, OLD_SIDE)

    def _new_version(
        self,
        name: str,
        label: str,
        version: int,
        type_: PromptType,
        ttl: float,
        max_stale: float,
        base: Resolution,
        *,
        io: bool,
    ) -> Resolution | NotFresh | None:
        """A rollout's new version by the prompt policy (no fallback); ``None`` when it cannot be
        handed out (logged once until it can), NOT_FRESH when ``io`` is off and it needs I/O."""
        entry = self._version_entry(name, version)
        missing_at = entry.missing_at
        if missing_at is not None and _now() - missing_at < ttl:
            return None  # a 404 is remembered for the TTL, like a plan's absence; logged already
        where = f"version {version}"
        try:
            hit = self._fresh(entry, name, where, type_, ttl)
            if hit is not None:
                return hit
            if not io:
                return NOT_FRESH
            label_error = base.error_type if base.source != contract.SOURCE_LANGFUSE else None
            new = self._refresh(entry, name, where, type_, ttl, max_stale, None, version=version,
                                label_error=label_error)
        except PromptError as error:
            with entry.lock:
                warn, entry.warned = not entry.warned, True
            if warn:
                cause = error.__cause__
                _log.warning(
                    "promptstamp: the rollout of prompt %r (label %r) hands out version %s to some "
                    "subjects, but that version cannot be fetched (%s%s): they get the label's "
                    "version %s meanwhile",
                    name, label, version, getattr(error, "error_type", type(error).__name__),
                    f": {str(cause)[:200]}" if cause is not None else "", base.template.version,
                )
            return None
        if entry.warned and new.source == contract.SOURCE_LANGFUSE:
            with entry.lock:
                entry.warned = False
        return new

    def _refresh(
        self,
        entry: _Entry,
        name: str,
        label: str,
        type_: PromptType,
        ttl: float,
        max_stale: float,
        fallback: Template | None,
        *,
        version: int | None = None,
        label_error: str | None = None,
    ) -> Resolution:
        """Fetch (name, label) — or (name, version) — unless a fresh copy appeared meanwhile, and
        apply the policy. ``label_error``: Langfuse just failed the label's fetch; do not ask."""
        with entry.lock:
            # Another thread may have fetched while this one waited for the lock.
            hit = self._fresh(entry, name, label, type_, ttl)
            if hit is not None:
                return hit
            if label_error is not None:
                return self._degraded(entry, name, label, type_, max_stale, fallback, label_error, None)
            if entry.failed_at is not None and _now() - entry.failed_at < FAILURE_BACKOFF_SECONDS:
                return self._degraded(
                    entry, name, label, type_, max_stale, fallback, entry.error_type or "", None
                )
            try:
                template = self._fetch(name, label, type_, version)
            except Exception as error:
                error_type = type(error).__name__
                if _answered_by_relay(error):
                    # A set-up error, not an outage: fail closed and say what to change.
                    raise PromptNotFoundError(
                        name, label, "BaseUrlIsRelay",
                        "the Langfuse client's base_url (LANGFUSE_BASE_URL) points at a promptstamp "
                        "relay, which does not serve the prompts API: keep base_url at Langfuse and "
                        "route spans with Langfuse(span_exporter=...), see docs/langfuse-sdk.md",
                    ) from error
                if _is_not_found(error):
                    # Fail closed, and forget the copy: the label has moved or gone.
                    entry.good, entry.failed_at, entry.error_type = None, None, None
                    if version is not None:
                        entry.missing_at = _now()
                    raise PromptNotFoundError(name, label, error_type) from error
                entry.failed_at, entry.error_type = _now(), error_type
                return self._degraded(entry, name, label, type_, max_stale, fallback, error_type, error)
            entry.good = (template, _now())
            entry.failed_at, entry.error_type, entry.missing_at = None, None, None
            return self._hand_out(template, name, label, type_, contract.SOURCE_LANGFUSE, None)

    def _ttl(self, cache_ttl_seconds: float | None) -> float:
        if cache_ttl_seconds is None:
            return self.settings.cache_ttl_seconds
        return check_seconds("cache_ttl_seconds", cache_ttl_seconds)

    def _fetch(self, name: str, label: str, type_: PromptType, version: int | None = None) -> Template:
        where: dict[str, Any] = {"label": label} if version is None else {"version": version}
        fetched = self.client().get_prompt(
            name,
            **where,
            type=type_,
            cache_ttl_seconds=0,  # never the client's silent stale copy: docs/fetch-policy.md
            max_retries=self.settings.max_retries,
            fetch_timeout_seconds=self.settings.fetch_timeout_seconds,
        )
        return from_langfuse(fetched)

    def _fresh(
        self, entry: _Entry, name: str, label: str, type_: PromptType, ttl: float
    ) -> Resolution | None:
        good = entry.good
        if good is None or _now() - good[1] >= ttl:
            return None
        return self._hand_out(good[0], name, label, type_, contract.SOURCE_LANGFUSE, None)

    def _degraded(
        self,
        entry: _Entry,
        name: str,
        label: str,
        type_: PromptType,
        max_stale: float,
        fallback: Template | None,
        error_type: str,
        cause: BaseException | None,
    ) -> Resolution:
        stale_seconds: float | None = None
        good = entry.good
        if good is not None:
            stale_seconds = _now() - good[1]
            if stale_seconds <= max_stale:
                return self._hand_out(good[0], name, label, type_, contract.SOURCE_CACHE, error_type)
        if fallback is not None:
            return Resolution(fallback, contract.SOURCE_FALLBACK, error_type)
        raise PromptUnavailableError(name, label, error_type, stale_seconds) from cause

    @staticmethod
    def _hand_out(
        template: Template,
        name: str,
        label: str,
        type_: PromptType,
        source: str,
        error_type: str | None,
    ) -> Resolution:
        if template.type != type_:
            # Not a fetch failure but a configuration one: fail closed like a missing label.
            raise PromptNotFoundError(
                name, label, "PromptTypeMismatch", f"it is a {template.type} prompt, not {type_}"
            )
        return Resolution(template, source, error_type)
