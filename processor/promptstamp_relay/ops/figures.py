"""The figures of a rendered label timeline (the timeline API's body), written once for the
``labels`` commands and the pages: error rate, tokens per generation, and the change line
between two versions. Pure; no imports from the rest of the relay."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["change_line", "error_rate", "ms", "pct_change", "per_generation"]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def error_rate(v: Mapping[str, Any]) -> float | None:
    """Errors per generation of one version entry; None without generations."""
    return None if not v["generations"] else float(v["errors"] / v["generations"])


def per_generation(v: Mapping[str, Any], key: str) -> float | None:
    return None if not v["generations"] else float(v[key] / v["generations"])


def pct_change(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    if a == 0:
        return "n/a" if b == 0 else "new"
    return f"{(b - a) / a * 100:+.1f} %"


def change_line(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """``v13 -> v14: error rate +4.6 pp, p50 +45.3 %, ...`` (``labels compare``, the pages)."""
    ra, rb = error_rate(a), error_rate(b)
    err = "n/a" if ra is None or rb is None else f"{(rb - ra) * 100:+.1f} pp"

    def tokens(key: str) -> str:
        return pct_change(per_generation(a, key), per_generation(b, key))

    return (f"v{a['version']} -> v{b['version']}: error rate {err}, "
            f"p50 {pct_change(a['duration_p50_ms'], b['duration_p50_ms'])}, "
            f"p95 {pct_change(a['duration_p95_ms'], b['duration_p95_ms'])}, "
            f"input tok/gen {tokens('input_tokens')}, output tok/gen {tokens('output_tokens')}")
