"""Following a guarded rollout's plan: which version a subject is handed under a label.

A rollout's plan lives in Langfuse as a text prompt of its own,
``promptstamp-rollout/<label>/<name>`` (``promptstamp_contract.rollout_plan``), the plan in
force labelled ``active``. The SDK reads it with the app's own Langfuse client and keeps the
answer in its own cache, per prompt name and label, for the same TTL as the prompt: a plan, or
"no plan" (a 404: the common case, so it costs one request per TTL, not one per call).

:class:`PlanEntry` is that cache entry and its lookup policy, always failing safe to the label's
own version:

- a lookup that fails keeps the last known plan (plan or no plan) while Langfuse last answered
  at most ``max_stale_seconds`` ago, else no plan; the next attempt waits
  ``FAILURE_BACKOFF_SECONDS``; one WARNING per outage (until a lookup succeeds again), except
  while the last answer, young enough, was "no rollout" (nothing changes for the app);
- while the label's own fetch is failing, the plan is not asked for (the same Langfuse, one
  timeout is enough): that counts as a failed lookup with the label's error;
- a plan that does not parse is no plan, with one WARNING per plan version.

The hand-out itself (resolving the label, then ``to_version`` for the subjects on the new side)
is ``_fetch.Fetcher``'s. Thread-safe: ``known`` is one tuple, read without the lock by the fast
path; the rest changes under ``lock``. Nothing here logs or does I/O on the fast path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from promptstamp_contract.rollout_plan import (
    PLAN_LABEL,
    PLAN_PREFIX,
    RolloutPlan,
    parse_plan,
    plan_prompt_name,
)

__all__ = [
    "NEW_SIDE",
    "NOT_FRESH",
    "OLD_SIDE",
    "NotFresh",
    "PlanEntry",
    "fetch_plan",
    "quiet_plan_not_found",
]

_log = logging.getLogger("promptstamp")

#: ``p.rollout`` values: handed the rollout's new version, or kept on the label's version while
#: a running rollout applies to it.
NEW_SIDE: Final = "new"
OLD_SIDE: Final = "old"


class NotFresh:
    """The cached answer is missing or older than the TTL: a lookup (I/O) is needed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_FRESH"


NOT_FRESH: Final = NotFresh()


def fetch_plan(client: Any, name: str, label: str, fetch_timeout_seconds: float | None) -> Any:
    """The ``active`` version of the plan prompt, through the app's client; raises as
    ``get_prompt`` does (a missing plan is a 404: ``langfuse.api.NotFoundError``)."""
    quiet_plan_not_found()
    return client.get_prompt(
        plan_prompt_name(name, label),
        label=PLAN_LABEL,
        type="text",
        cache_ttl_seconds=0,  # never the client's silent stale copy, as for prompts
        max_retries=0,
        fetch_timeout_seconds=fetch_timeout_seconds,
    )


@dataclass(slots=True, eq=False)
class PlanEntry:
    """The plan of one (name, label) as last learned, and the state of its lookups."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the last answer Langfuse gave (a plan, or None for no plan / an unusable plan) and when
    known: tuple[RolloutPlan | None, float] | None = None
    failed_at: float | None = None
    outage_warned: bool = False
    bad_versions_warned: set[int] = field(default_factory=set)

    def fresh(self, ttl: float, now: float) -> RolloutPlan | NotFresh | None:
        """The plan (or None) Langfuse gave less than ``ttl`` ago, without I/O; else NOT_FRESH."""
        known = self.known
        if known is None or now - known[1] >= ttl:
            return NOT_FRESH
        return known[0]

    def lookup(
        self,
        name: str,
        label: str,
        *,
        ttl: float,
        max_stale: float,
        backoff: float,
        now: Callable[[], float],
        fetch: Callable[[], Any],
        is_not_found: Callable[[BaseException], bool],
        label_error: str | None,
    ) -> RolloutPlan | None:
        """The plan in force, looked up when the cached answer is older than ``ttl``. Never
        raises for a lookup that fails: the last known plan up to ``max_stale``, else no plan.
        ``label_error``: the label's own fetch just failed with it, so Langfuse is not asked."""
        with self.lock:
            # Another thread may have looked it up while this one waited for the lock.
            hit = self.fresh(ttl, now())
            if not isinstance(hit, NotFresh):
                return hit
            if self.failed_at is not None and now() - self.failed_at < backoff:
                return self._last_known(max_stale, now())
            if label_error is not None:
                return self._failed(name, label, label_error, "not asked, the prompt's own fetch "
                                    "just failed with it", max_stale, now())
            try:
                fetched = fetch()
            except Exception as error:
                if not is_not_found(error):
                    return self._failed(name, label, type(error).__name__, str(error)[:200],
                                        max_stale, now())
                plan = None  # no plan prompt, or no version labelled active: no rollout
            else:
                plan = self._parsed(fetched, name, label)
            self.known = (plan, now())
            self.failed_at = None
            self.outage_warned = False
            return plan

    def _parsed(self, fetched: Any, name: str, label: str) -> RolloutPlan | None:
        version = getattr(fetched, "version", None)
        plan_version = version if isinstance(version, int) and not isinstance(version, bool) else 0
        plan, why = parse_plan(getattr(fetched, "config", None), name=name, label=label,
                               plan_version=plan_version)
        if plan is None and plan_version not in self.bad_versions_warned:
            self.bad_versions_warned.add(plan_version)
            _log.warning(
                "promptstamp: the rollout plan of prompt %r (label %r) cannot be used, so the "
                "label's own version is handed out: %s version %s: %s",
                name, label, plan_prompt_name(name, label), plan_version, why,
            )
        return plan

    def _last_known(self, max_stale: float, now: float) -> RolloutPlan | None:
        known = self.known
        if known is None or now - known[1] > max_stale:
            return None
        return known[0]

    def _failed(self, name: str, label: str, error_type: str, detail: str, max_stale: float,
                now: float) -> RolloutPlan | None:
        self.failed_at = now
        plan = self._last_known(max_stale, now)
        if plan is None and self.known is not None and now - self.known[1] <= max_stale:
            # No rollout at the last lookup, recent enough: the app goes on exactly as it was, and
            # the prompt's own failure is said where it happens. Nothing to add (yet).
            return plan
        if not self.outage_warned:
            self.outage_warned = True
            if plan is not None:
                keeping = (f"following the last known plan (version {plan.plan_version}, "
                           f"{plan.state} at {plan.share_percent:g} %) until it is "
                           f"{max_stale:g} s old, then the label's own version")
            else:
                keeping = "the label's own version meanwhile"
            _log.warning(
                "promptstamp: could not look up the rollout plan of prompt %r (label %r, %s): "
                "%s: %s; %s",
                name, label, plan_prompt_name(name, label), error_type, detail, keeping,
            )
        return plan


# -- Langfuse's own log line for the common 404 ----------------------------------------------------
# On a 404 Langfuse's client logs "Prompt '<key>' not found during refresh, evicting from cache."
# at WARNING on the ``langfuse`` logger. For the plan prompt a 404 is the normal answer (no
# rollout), once per TTL per prompt and label in every app: that line alone is dropped.

class _PlanNotFoundFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            isinstance(args, tuple)
            and len(args) == 1
            and isinstance(args[0], str)
            and args[0].startswith(PLAN_PREFIX)
            and "not found" in str(record.msg)
        )


_quiet_lock = threading.Lock()
_quieted = False


def quiet_plan_not_found() -> None:
    """Add the filter to the ``langfuse`` logger, once per process."""
    global _quieted
    if _quieted:
        return
    with _quiet_lock:
        if not _quieted:
            logging.getLogger("langfuse").addFilter(_PlanNotFoundFilter())
            _quieted = True
