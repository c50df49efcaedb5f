"""Receiver authentication: tenants from credentials, refusals, constant-time compare, no echo."""

from __future__ import annotations

import base64
import contextlib
import hmac
import inspect
import logging
import time
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from promptstamp.testing import LangfuseServer
from promptstamp_relay.admission import auth as auth_mod
from promptstamp_relay.admission.auth import Authenticator, Identity, Unauthenticated, passthrough_tenant
from promptstamp_relay.config import AuthConfig, ConfigError, TenantConfig, load_config
from tests.otlp_builders import span, traces
from tests.relays import running
from tests.waiting import wait_until

from .conftest import TOKEN_A, TOKEN_B, basic, bearer, call, relay_config

PK_A, SK_A = "pk-lf-aaaa", "sk-lf-aaaa-secret"
PK_B, SK_B = "pk-lf-bbbb", "sk-lf-bbbb-secret"
NOT_UTF8 = base64.b64encode(b"\xff\xfe:x").decode()


def two_tenants(**kw: Any) -> AuthConfig:
    return AuthConfig(
        enabled=True,
        tenants={
            "a": TenantConfig(tokens=[TOKEN_A], langfuse_public_key=PK_A, langfuse_secret_key=SK_A),
            "b": TenantConfig(tokens=[TOKEN_B, "tenant-b-second-token-000"]),
        },
        **kw,
    )


def md(header: str) -> dict[str, str]:
    return {"authorization": header}


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def refused(a: Authenticator, metadata: dict[str, str]) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        a.identify(metadata)
    return info.value


# --------------------------------------------------------------------------------------------
# The authenticator alone
# --------------------------------------------------------------------------------------------
def test_off_by_default_every_request_is_the_default_tenant_and_metadata_is_not_read() -> None:
    a = Authenticator(AuthConfig())
    assert a.identify({}) == Identity("default")
    assert a.identify(md("Bearer whatever")) == Identity("default")


def test_bearer_tokens_and_basic_keys_map_to_their_tenant() -> None:
    a = Authenticator(two_tenants())
    assert a.tenant_for(md(f"Bearer {TOKEN_A}")) == "a"
    assert a.tenant_for(md(f"bearer {TOKEN_B}")) == "b"  # the scheme is case-insensitive
    assert a.tenant_for(md("Bearer tenant-b-second-token-000")) == "b"
    assert a.tenant_for(md(f"Basic {b64(f'{PK_A}:{SK_A}')}")) == "a"


@pytest.mark.parametrize(
    "metadata",
    [
        {},  # missing
        md(""),
        md("Bearer"),
        md("Bearer "),
        md("Bearer wrong-token-0123456789"),
        md(f"Bearer {TOKEN_A}x"),
        md(f"Bearer {TOKEN_A[:-1]}"),
        md(f"Token {TOKEN_A}"),
        md(f"Basic {b64(f'{PK_A}:wrong')}"),
        md(f"Basic {b64(PK_A)}"),  # no colon
        md("Basic !!!not-base64!!!"),
        md("Basic " + NOT_UTF8),
        md("Bearer " + "x" * 100_000),  # oversized
        md(f"Basic {b64(TOKEN_A)}"),  # a token is not a Basic credential
    ],
)
def test_missing_or_wrong_credentials_are_unauthenticated_without_echo(metadata: dict[str, str]) -> None:
    r = refused(Authenticator(two_tenants()), metadata)
    assert r.message == "missing or invalid credentials"
    secret = metadata.get("authorization", "").partition(" ")[2]
    assert not secret or (secret not in str(r) and secret not in r.hint)


def test_passthrough_makes_each_key_pair_its_own_tenant() -> None:
    a = Authenticator(AuthConfig(passthrough_langfuse_credentials=True))
    ident = a.identify(md(f"Basic {b64(f'{PK_B}:{SK_B}')}"))
    assert ident.tenant == passthrough_tenant(PK_B, SK_B)
    assert ident.langfuse_keys == (PK_B, SK_B)
    assert ident.tenant.startswith(PK_B + "#") and SK_B not in ident.tenant
    assert SK_B not in repr(ident)
    # Knowing a public key is not enough to join its tenant: another secret, another tenant.
    forged = a.identify(md(f"Basic {b64(f'{PK_B}:guessed')}"))
    assert forged.tenant != ident.tenant
    # Without credentials: the default tenant when the relay has keys of its own, else refused.
    assert a.identify({}) == Identity("default")
    no_keys = Authenticator(AuthConfig(passthrough_langfuse_credentials=True), default_has_keys=False)
    assert refused(no_keys, {}).message == auth_mod.UNAUTHENTICATED_MESSAGE
    # Anything but Basic is refused in passthrough mode.
    assert refused(a, md(f"Bearer {TOKEN_A}")).message == auth_mod.UNAUTHENTICATED_MESSAGE


def test_passthrough_with_auth_prefers_configured_tenants() -> None:
    a = Authenticator(two_tenants(passthrough_langfuse_credentials=True))
    assert a.identify(md(f"Basic {b64(f'{PK_A}:{SK_A}')}")) == Identity("a")
    assert a.identify(md(f"Basic {b64(f'{PK_B}:{SK_B}')}")).langfuse_keys == (PK_B, SK_B)
    assert refused(a, {}).message == auth_mod.UNAUTHENTICATED_MESSAGE  # auth on: credentials required


def test_every_configured_credential_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest over equal-length digests, every configured entry, every time: no
    early exit on the first match or mismatch."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(x: bytes, y: bytes) -> bool:
        calls.append((len(x), len(y)))
        return real(x, y)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth.py calls it through
    a = Authenticator(two_tenants())
    for header in (f"Bearer {TOKEN_A}", f"Bearer {TOKEN_B}", "Bearer nope-nope-nope-nope", "Bearer x"):
        calls.clear()
        with contextlib.suppress(Unauthenticated):
            a.identify(md(header))
        assert len(calls) == 3  # three tokens configured: three comparisons, whatever matched
        assert all(lx == ly == 32 for lx, ly in calls)  # SHA-256 digests: lengths leak nothing
    calls.clear()
    with pytest.raises(Unauthenticated):
        a.identify(md(f"Basic {b64(f'{PK_A}:x')}"))
    assert len(calls) == 1  # one key pair configured
    source = inspect.getsource(auth_mod)
    assert "==" not in source.split("def _match")[1].split("def ")[0]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"auth.enabled": True}, "at least one tenant"),
        ({"auth.tenants": {"a": {"tokens": [TOKEN_A]}}}, "auth.enabled is false"),
        ({"auth.enabled": True, "auth.tenants": {"a": {"tokens": ["short"]}}}, "at least 16"),
        ({"auth.enabled": True, "auth.tenants": {"a": {}}}, "needs tokens or"),
        ({"auth.enabled": True, "auth.tenants": {"a": {"langfuse_public_key": "pk"}}}, "go together"),
        ({"auth.enabled": True, "auth.tenants": {"a#1": {"tokens": [TOKEN_A]}}}, "not a valid tenant name"),
        ({"auth.enabled": True, "auth.tenants": {"a": {"tokens": [TOKEN_A]}, "b": {"tokens": [TOKEN_A]}}},
         "also a token of tenant 'a'"),
        ({"auth.passthrough_langfuse_credentials": True, "exporter.type": "debug"}, "needs the langfuse exporter"),
    ],
)
def test_auth_config_errors_never_quote_a_token(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, env={}, overrides=overrides)
    assert TOKEN_A not in str(info.value)


# --------------------------------------------------------------------------------------------
# Live: the relay refuses before decoding anything, and logs no credential
# --------------------------------------------------------------------------------------------
def auth_overrides(langfuse_b: LangfuseServer | None = None) -> dict[str, Any]:
    tenants: dict[str, Any] = {"a": {"tokens": [TOKEN_A]}}
    if langfuse_b is not None:
        tenants["b"] = {"tokens": [TOKEN_B], "langfuse_public_key": langfuse_b.public_key,
                        "langfuse_secret_key": langfuse_b.secret_key, "langfuse_base_url": langfuse_b.base_url}
    return {"auth.enabled": True, "auth.tenants": tenants}


def test_live_refusals_and_acceptance(langfuse: LangfuseServer, caplog: pytest.LogCaptureFixture) -> None:
    payload = traces([span("authed")]).SerializeToString()
    caplog.set_level(logging.DEBUG)
    with running(relay_config(langfuse, **auth_overrides()), timeout=3) as relay:
        assert call(relay.address, payload)[0] == grpc.StatusCode.UNAUTHENTICATED
        wrong = "Bearer sixteen-chars-but-wrong-xyz"
        code, details = call(relay.address, payload, metadata=[("authorization", wrong)])
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "missing or invalid credentials")
        # Garbage bodies from an unauthenticated caller are not even decoded.
        assert call(relay.address, b"\xff" * 64)[0] == grpc.StatusCode.UNAUTHENTICATED
        assert relay.stats.invalid == 0 and relay.stats.refused == 3
        assert call(relay.address, payload, metadata=bearer(TOKEN_A)) == (grpc.StatusCode.OK, "")
        assert langfuse.wait_for_observations(1, timeout=10)[0].name == "authed"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sixteen-chars-but-wrong" not in logged and TOKEN_A not in logged


def test_refused_authentication_is_logged_at_info_with_peer_and_hint_rate_limited(
        langfuse: LangfuseServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from promptstamp_relay import admission as admit

    monkeypatch.setattr(admit, "AUTH_LOG_INTERVAL_SECONDS", 0.3)
    payload = traces([span("x")]).SerializeToString()
    caplog.set_level(logging.INFO, logger="promptstamp_relay.admission")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "promptstamp_relay.admission" and "refused unauthenticated" in r.getMessage()]

    with running(relay_config(langfuse, **auth_overrides()), timeout=3) as relay:
        wrong = "Bearer sixteen-chars-but-wrong-xyz"
        for _ in range(3):
            assert call(relay.address, payload, metadata=[("authorization", wrong)])[0] == \
                grpc.StatusCode.UNAUTHENTICATED
        assert relay.stats.refused_unauthenticated == 3
        assert len(lines()) == 1  # the other two are counted, not logged
        first = lines()[0]
        assert "127.0.0.1" in first and "unknown bearer token" in first
        assert all(r.levelno == logging.INFO for r in caplog.records if r.getMessage() == first)
        t0 = time.monotonic()
        wait_until(lambda: time.monotonic() - t0 > 0.35, 2, "the log interval to pass")
        assert call(relay.address, payload, metadata=basic(PK_A, "not-the-secret"))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        assert len(lines()) == 2
        second = lines()[1]
        assert "2 more refused" in second and repr(PK_A) in second
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sixteen-chars-but-wrong" not in logged and "not-the-secret" not in logged


def test_the_otel_sdk_sends_its_token_as_metadata(langfuse: LangfuseServer) -> None:
    with running(relay_config(langfuse, **auth_overrides()), timeout=3) as relay:
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
            endpoint=relay.address, insecure=True, timeout=5, headers={"authorization": f"Bearer {TOKEN_A}"})))
        with tp.get_tracer("t").start_as_current_span("sdk-authed"):
            pass
        tp.shutdown()
        assert langfuse.wait_for_observations(1, timeout=10)[0].name == "sdk-authed"


def test_each_tenant_is_forwarded_with_its_own_langfuse_keys(langfuse: LangfuseServer) -> None:
    with LangfuseServer(public_key="pk-lf-tenant-b", secret_key="sk-lf-tenant-b") as langfuse_b:
        with running(relay_config(langfuse, **auth_overrides(langfuse_b)), timeout=3) as relay:
            assert call(relay.address, traces([span("from-a", span_id=1)]).SerializeToString(),
                        metadata=bearer(TOKEN_A))[0] == grpc.StatusCode.OK
            assert call(relay.address, traces([span("from-b", span_id=2)]).SerializeToString(),
                        metadata=bearer(TOKEN_B))[0] == grpc.StatusCode.OK
            assert [o.name for o in langfuse.wait_for_observations(1, timeout=10)] == ["from-a"]
            assert [o.name for o in langfuse_b.wait_for_observations(1, timeout=10)] == ["from-b"]
            assert relay._api_credentials("b") == (langfuse_b.base_url, "pk-lf-tenant-b", "sk-lf-tenant-b")
            assert relay._api_credentials("a") == (langfuse.base_url, langfuse.public_key, langfuse.secret_key)
        assert langfuse.rejected() == [] and langfuse_b.rejected() == []
        assert all(r.status == 200 for r in langfuse.ingest_requests + langfuse_b.ingest_requests)


def test_passthrough_forwards_the_callers_own_keys_and_keeps_them_out_of_recordings(
    langfuse: LangfuseServer, tmp_path: Any
) -> None:
    recording = tmp_path / "rec.jsonl"
    cfg = relay_config(langfuse, **{"auth.passthrough_langfuse_credentials": True, "record": str(recording)})
    with running(cfg, timeout=3) as relay:
        ok = call(relay.address, traces([span("own-keys", span_id=1)]).SerializeToString(),
                  metadata=basic(langfuse.public_key, langfuse.secret_key))
        assert ok == (grpc.StatusCode.OK, "")
        other = call(relay.address, traces([span("other-keys", span_id=2)]).SerializeToString(),
                     metadata=basic("pk-lf-other", "sk-lf-other-secret"))
        assert other == (grpc.StatusCode.OK, "")  # accepted: Langfuse is the judge of the keys
        assert [o.name for o in langfuse.wait_for_observations(1, timeout=10)] == ["own-keys"]
        wait_until(lambda: any(r.status == 401 for r in langfuse.ingest_requests))
        sent = {r.headers.get("Authorization") or r.headers.get("authorization") for r in langfuse.ingest_requests}
        assert "Basic " + b64("pk-lf-other:sk-lf-other-secret") in sent  # its own keys, not the relay's
    text = recording.read_text()
    assert "sk-lf-other-secret" not in text and langfuse.secret_key not in text
    assert "own-keys" in text
