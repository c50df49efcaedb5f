"""Receiver authentication: which tenant a request belongs to, from its metadata / headers.

A tenant is identified by the credentials a request arrives with, in the ``authorization``
metadata entry (``OTEL_EXPORTER_OTLP_HEADERS=authorization=...`` on the app side):

- ``Bearer <token>``: a token listed under ``auth.tenants.<name>.tokens``;
- ``Basic base64(<public key>:<secret key>)``, the header Langfuse itself takes: a tenant's
  ``langfuse_public_key`` and ``langfuse_secret_key``; or, with
  ``auth.passthrough_langfuse_credentials``, any key pair, which is then its own tenant
  (:func:`passthrough_tenant`) and is forwarded to Langfuse with exactly those keys (Langfuse
  is the one that checks them).

The modes (``auth.enabled`` × ``passthrough_langfuse_credentials``):

====================  ===========================================================================
off, off              every request is the ``default`` tenant; metadata is not read
off, passthrough      Basic credentials: their own tenant; none: ``default`` (if the relay has
                      Langfuse keys of its own, else refused); anything else: refused
on, off               a configured tenant's credentials, or refused
on, passthrough       a configured tenant's credentials; else Basic credentials are their own
                      tenant; else refused
====================  ===========================================================================

Presented credentials are hashed (SHA-256) and compared with every configured one with
:func:`hmac.compare_digest`, all of them every time: the time taken depends on how many
credentials are configured, not on how much of one a caller guessed right. A credential never
appears in a log line, an error message, a recording or a tenant name (a passthrough tenant is
named by its public key and a digest of the pair).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.model import DEFAULT_TENANT
from .settings import AuthConfig

__all__ = ["PASSTHROUGH_SEPARATOR", "Authenticator", "Identity", "Unauthenticated", "passthrough_tenant"]

AUTHORIZATION = "authorization"
#: Separates the public key from the digest in a passthrough tenant's name; configured tenant
#: names may not contain it, so the two kinds never collide.
PASSTHROUGH_SEPARATOR = "#"
UNAUTHENTICATED_MESSAGE = "missing or invalid credentials"
_MAX_HEADER = 8192  # longer than any real credential; refused before decoding or hashing


class Unauthenticated(Exception):
    """Missing or wrong credentials. ``hint`` says which kind, for the operator's log line; it
    never contains a secret (at most a Langfuse public key, which is not one)."""

    def __init__(self, hint: str) -> None:
        super().__init__(UNAUTHENTICATED_MESSAGE)
        self.message = UNAUTHENTICATED_MESSAGE
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a request. ``langfuse_keys``: the request's own (public, secret) key pair when
    its spans go to Langfuse with them (passthrough); None: the tenant's configured keys."""

    tenant: str
    langfuse_keys: tuple[str, str] | None = None

    def __repr__(self) -> str:  # never print the secret key
        keys = "" if self.langfuse_keys is None else f", public_key={self.langfuse_keys[0]!r}"
        return f"Identity(tenant={self.tenant!r}{keys})"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def passthrough_tenant(public_key: str, secret_key: str) -> str:
    """The tenant of a passthrough key pair: ``<public key>#<digest of the pair>``.

    The digest is part of the name so that a caller who knows a public key (public keys are
    not secret) but not its secret key gets a tenant of its own, and cannot feed fetch logs to
    the real owner's spans.
    """
    digest = hashlib.sha256(f"{public_key}:{secret_key}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"{public_key}{PASSTHROUGH_SEPARATOR}{digest[:16]}"


def _refuse(hint: str) -> Unauthenticated:
    return Unauthenticated(hint)


def _public_key_hint(public_key: str) -> str:
    """A public key as a log hint: shown only when it looks like one (``pk-...``), shortened; a
    secret pasted into the wrong slot is never echoed."""
    if public_key.startswith("pk-") and public_key.isprintable():
        return f"public key {public_key[:24]!r}"
    return f"a user name of {len(public_key)} characters that is not a public key"


def _match(presented: bytes, table: list[tuple[bytes, str]]) -> str | None:
    """The tenant whose credential digest equals ``presented``; every entry is compared."""
    found: str | None = None
    for digest, tenant in table:
        if hmac.compare_digest(presented, digest) and found is None:
            found = tenant
    return found


class Authenticator:
    """Built once from :class:`~promptstamp_relay.config.AuthConfig` (already validated).

    ``default_has_keys``: whether the relay's own exporter has Langfuse keys, so that a request
    without credentials can go out as the ``default`` tenant in passthrough mode.
    """

    def __init__(self, cfg: AuthConfig, *, default_has_keys: bool = True) -> None:
        self.enabled = cfg.enabled
        self.passthrough = cfg.passthrough_langfuse_credentials
        self._default_has_keys = default_has_keys
        self._bearer: list[tuple[bytes, str]] = []
        self._basic: list[tuple[bytes, str]] = []
        if cfg.enabled:
            for name, tenant in cfg.tenants.items():
                for token in tenant.tokens:
                    self._bearer.append((_digest(token), name))
                if tenant.langfuse_public_key and tenant.langfuse_secret_key:
                    pair = f"{tenant.langfuse_public_key}:{tenant.langfuse_secret_key}"
                    self._basic.append((_digest(pair), name))

    @property
    def reads_metadata(self) -> bool:
        return self.enabled or self.passthrough

    def tenant_for(self, metadata: Mapping[str, str]) -> str:
        """The tenant of a request; raise :class:`Unauthenticated`."""
        return self.identify(metadata).tenant

    def identify(self, metadata: Mapping[str, str]) -> Identity:
        """Who sent a request with ``metadata``; raise :class:`Unauthenticated`."""
        if not self.reads_metadata:
            return Identity(DEFAULT_TENANT)
        header = metadata.get(AUTHORIZATION)
        if header is None:
            if not self.enabled and self._default_has_keys:
                return Identity(DEFAULT_TENANT)
            raise _refuse("no authorization header")
        if len(header) > _MAX_HEADER:
            raise _refuse(f"an authorization header of {len(header)} characters (too long)")
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            tenant = _match(_digest(value), self._bearer)
            if tenant is None:
                raise _refuse(f"an unknown bearer token ({len(value)} characters)")
            return Identity(tenant)
        if scheme == "basic" and value:
            pair = _decode_basic(value)
            if pair is None:
                raise _refuse("a Basic credential that is not base64(user:password)")
            public_key, secret_key = pair
            tenant = _match(_digest(f"{public_key}:{secret_key}"), self._basic)
            if tenant is not None:
                return Identity(tenant)
            if self.passthrough and public_key and secret_key:
                return Identity(passthrough_tenant(public_key, secret_key), (public_key, secret_key))
            raise _refuse(f"Basic credentials of {_public_key_hint(public_key)} that match no tenant")
        if scheme in ("bearer", "basic"):
            raise _refuse(f"an empty {scheme} credential")
        raise _refuse("an authorization scheme other than Bearer or Basic")


def _decode_basic(value: str) -> tuple[str, str] | None:
    """``base64(user:password)`` → (user, password), or None when it is not that."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
        text = raw.decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError):
        return None
    user, sep, password = text.partition(":")
    if not sep:
        return None
    return user, password
