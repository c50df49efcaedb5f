"""Langfuse's prompt webhooks: the signature check and the label moves an event reports.

Langfuse signs each webhook (its ``packages/shared/src/encryption/signature.ts``) with the
secret shown when the webhook was created: header ``x-langfuse-signature: t=<unix seconds>,
v1=<hex HMAC-SHA256 of "<t>.<body>">``. The body (``PromptWebhookOutboundSchema``) is
``{"id", "timestamp", "type": "prompt-version", "apiVersion": "v1", "action": "created" |
"updated" | "deleted", "prompt": {"name", "version", "labels", "updatedAt", …}}``. A label move
fires ``updated`` for the version that gains the label (and one for the version that loses it,
which no longer lists it); a new version created with labels fires ``created``.

Pure except for HMAC: the time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = ["BadSignature", "Move", "moves_of", "sign", "verify"]

SIGNATURE_HEADER = "x-langfuse-signature"
LATEST = "latest"  # Langfuse's own label on the newest version: never a move


class BadSignature(Exception):
    """Missing, malformed, stale or wrong signature (the message says which; never the secret)."""


@dataclass(frozen=True)
class Move:
    prompt: str
    label: str
    version: int
    at_ns: int


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The header value Langfuse would send (tests, docs)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(header: str | None, body: bytes, secrets: Mapping[str, str], now_s: float,
           tolerance_s: float) -> str:
    """The tenant whose secret signed ``body``; raise :class:`BadSignature`. Every secret is
    compared every time (the time taken does not tell which one nearly matched)."""
    if not header:
        raise BadSignature(f"no {SIGNATURE_HEADER} header: unsigned webhooks are refused")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        k, sep, v = item.strip().partition("=")
        if sep:
            parts.setdefault(k, []).append(v)
    ts, sigs = parts.get("t", []), parts.get("v1", [])
    if len(ts) != 1 or not ts[0].isdigit() or not sigs:
        raise BadSignature(f"{SIGNATURE_HEADER} is not t=<unix seconds>,v1=<hex>")
    timestamp = int(ts[0])
    if abs(now_s - timestamp) > tolerance_s:
        raise BadSignature(f"{SIGNATURE_HEADER} timestamp is {abs(now_s - timestamp):.0f} s away from "
                           f"now (more than rollouts.webhook_tolerance_seconds {tolerance_s:.0f})")
    signed = f"{timestamp}.".encode() + body
    found = None
    for tenant, secret in secrets.items():
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        for sig in sigs:
            if hmac.compare_digest(expected, sig.strip().lower()) and found is None:
                found = tenant
    if found is None:
        raise BadSignature("the signature matches no configured webhook secret")
    return found


def _ns(text: object) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def moves_of(body: bytes) -> list[Move]:
    """The label moves one event reports (``[]`` for other events); ``ValueError`` when the body is
    not a Langfuse webhook body."""
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    if event.get("type") != "prompt-version" or event.get("action") not in ("created", "updated"):
        return []
    prompt = event.get("prompt")
    if not isinstance(prompt, dict):
        raise ValueError("a prompt-version event without a prompt object")
    name, version, labels = prompt.get("name"), prompt.get("version"), prompt.get("labels")
    if (not isinstance(name, str) or not name or not isinstance(version, int) or isinstance(version, bool)
            or not isinstance(labels, list)):
        raise ValueError("prompt.name, prompt.version (integer) and prompt.labels are required")
    at = _ns(prompt.get("updatedAt")) or _ns(event.get("timestamp"))
    if at is None:
        raise ValueError("neither prompt.updatedAt nor timestamp is an ISO 8601 time with a zone")
    return [Move(name, label, version, at) for label in labels
            if isinstance(label, str) and label and label != LATEST]
