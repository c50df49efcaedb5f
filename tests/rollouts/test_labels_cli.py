"""``labels rollback`` and ``labels promote`` against the loopback LangfuseServer (its labels API
follows Langfuse: PATCH adds labels and moves them off other versions; ``latest`` is reserved),
with the timeline read from a live relay; every failure's message and exit code."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from promptstamp.testing import LangfuseServer
from promptstamp_relay import labels_cli as labels
from promptstamp_relay.cli import main
from tests.otlp_builders import S

from .conftest import PROMPT, Relay, http

RelayFactory = Callable[..., Relay]
MESSAGES = [{"role": "system", "content": "Answer from the order state only."}]


@pytest.fixture(autouse=True)
def _no_langfuse_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LANGFUSE_BASE_URL", "LANGFUSE_HOST", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY",
                "PROMPTSTAMP_METRICS_LISTEN", labels.TOKEN_ENV):
        monkeypatch.delenv(var, raising=False)


def config(tmp: Path, base_url: str, secret: str = "sk-lf-test") -> str:
    path = tmp / "labels.yaml"
    path.write_text(f"exporter: {{langfuse: {{base_url: '{base_url}', public_key: pk-lf-test, "
                    f"secret_key: {secret}}}}}\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def rolled_out(relays: RelayFactory, langfuse: LangfuseServer) -> Relay:
    """Langfuse: v1, v2, v3 (production on v3); the relay saw production hand out v2, then v3."""
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["production"])
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["production"])
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["production", "staging"])
    relay = relays()
    t0 = time.time_ns() - 600 * S
    for i in range(4):
        relay.generation("pod-a", 2, at=t0 + i * S, duration_ms=700, error=(i == 0))
    for i in range(4):
        relay.generation("pod-a", 3, at=t0 + (100 + i) * S, duration_ms=1400, error=(i < 2))
    return relay


def run(*argv: str, answer: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> int:
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(answer or ""))
    return main(["labels", *argv])


def production(langfuse: LangfuseServer) -> int:
    got = langfuse.get_prompt(PROMPT, label="production")
    assert got is not None
    return int(got["version"])


def test_rollback_asks_and_changes_nothing_without_a_yes(rolled_out: Relay, langfuse: LangfuseServer,
                                                         tmp_path: Path, capsys: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path, langfuse.base_url)
    assert run("rollback", PROMPT, "production", "--relay", rolled_out.url, "--config", cfg,
               answer="n\n", monkeypatch=monkeypatch) == labels.EXIT_NOT_CONFIRMED
    out, err = capsys.readouterr()
    assert "plan: order-status-answer label production: v3 -> v2" in out
    assert "v2: last served" in out and "4 generations, 25.0 % errors" in out
    assert "not confirmed: nothing was changed" in err
    assert production(langfuse) == 3
    # No answer at all (stdin closed) is no either.
    assert run("rollback", PROMPT, "production", "--relay", rolled_out.url, "--config", cfg,
               answer="", monkeypatch=monkeypatch) == labels.EXIT_NOT_CONFIRMED
    assert production(langfuse) == 3


def test_rollback_moves_the_label_to_the_previous_version_and_verifies(
        rolled_out: Relay, langfuse: LangfuseServer, tmp_path: Path, capsys: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path, langfuse.base_url)
    assert run("rollback", PROMPT, "production", "--relay", rolled_out.url, "--config", cfg,
               answer="y\n", monkeypatch=monkeypatch) == 0
    assert "done: order-status-answer label production -> v2 (verified" in capsys.readouterr().out
    assert production(langfuse) == 2
    # Langfuse's semantics: v3 lost production, kept its other labels.
    v3 = langfuse.get_prompt(PROMPT, version=3)
    assert v3 is not None and v3["labels"] == ["staging", "latest"]
    # Again: already there, nothing sent.
    assert run("rollback", PROMPT, "production", "--to", "2", "--relay", rolled_out.url, "--config", cfg,
               "--yes") == 0
    assert "nothing to do" in capsys.readouterr().out


def test_rollback_failures_have_their_own_messages_and_codes(rolled_out: Relay, langfuse: LangfuseServer,
                                                             tmp_path: Path, capsys: Any) -> None:
    relay = ["--relay", rolled_out.url, "--yes"]
    bad_keys = config(tmp_path, langfuse.base_url, secret="sk-lf-wrong")
    assert run("rollback", PROMPT, "production", *relay, "--config", bad_keys) == labels.EXIT_LANGFUSE_AUTH
    assert "refused the keys" in capsys.readouterr().err

    good = config(tmp_path, langfuse.base_url)
    rolled_out.generation("pod-a", 1, prompt="not-in-langfuse")
    rolled_out.generation("pod-a", 2, prompt="not-in-langfuse", at=time.time_ns() + S)
    assert run("rollback", "not-in-langfuse", "production", *relay, "--config", good) \
        == labels.EXIT_LANGFUSE_NOT_FOUND
    assert "not found" in capsys.readouterr().err

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert run("rollback", PROMPT, "production", *relay, "--config", config(tmp_path, closed)) \
        == labels.EXIT_LANGFUSE_NETWORK
    assert "cannot reach Langfuse" in capsys.readouterr().err

    assert run("rollback", PROMPT, "production", "--relay", closed, "--config", good, "--yes") \
        == labels.EXIT_TIMELINE
    assert "cannot read the timeline" in capsys.readouterr().err

    rolled_out.generation("pod-a", 3, prompt="one-version-only")
    assert run("rollback", "one-version-only", "production", *relay, "--config", good) == labels.EXIT_REFUSED
    assert "give --to VERSION" in capsys.readouterr().err

    assert run("rollback", PROMPT, "production", "--relay", rolled_out.url, "--yes") == labels.EXIT_USAGE
    assert "no Langfuse keys for tenant 'default'" in capsys.readouterr().err
    assert production(langfuse) == 3


class StuckLangfuse(LangfuseServer):
    """Answers PATCH 200 but moves nothing (what a failed verification looks like)."""

    def _set_labels_locked(self, name: str, version: int, labels: list[str]) -> dict[str, Any] | None:
        return next((v for v in self._prompts.get(name, []) if v["version"] == version), None)


def test_a_move_that_does_not_show_in_langfuse_is_reported(relays: RelayFactory, tmp_path: Path,
                                                           capsys: Any) -> None:
    with StuckLangfuse() as stuck:
        stuck.create_prompt(PROMPT, MESSAGES, labels=["production"])
        stuck.create_prompt(PROMPT, MESSAGES, labels=["production"])
        relay = relays()
        relay.generation("pod-a", 1, at=time.time_ns() - 10 * S)
        relay.generation("pod-a", 2)
        assert run("rollback", PROMPT, "production", "--relay", relay.url, "--yes",
                   "--config", config(tmp_path, stuck.base_url)) == labels.EXIT_NOT_VERIFIED
        assert "but Langfuse now answers v2" in capsys.readouterr().err


def test_promote_needs_evidence_under_from_and_force_says_so(rolled_out: Relay, langfuse: LangfuseServer,
                                                             tmp_path: Path, capsys: Any) -> None:
    cfg = config(tmp_path, langfuse.base_url)
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["staging"])  # v4, never exercised
    args = ["promote", PROMPT, "--from", "staging", "--to", "production", "--relay", rolled_out.url,
            "--config", cfg, "--yes"]
    assert run(*args) == labels.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "refusing to promote order-status-answer v4 from staging to production" in err
    assert "--force moves it anyway" in err
    assert production(langfuse) == 3

    rolled_out.generation("pod-s", 4, label="staging")  # staging serves v4: now there is evidence
    assert run(*args) == 0
    out = capsys.readouterr().out
    assert "plan: order-status-answer label production: v3 -> v4 (what staging points to)" in out
    assert "v4 under staging: last served" in out and "1 generations" in out
    assert production(langfuse) == 4


def test_promote_with_force_moves_without_evidence_and_says_so(rolled_out: Relay, langfuse: LangfuseServer,
                                                               tmp_path: Path, capsys: Any) -> None:
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["canary"])  # v4
    assert run("promote", PROMPT, "--from", "canary", "--to", "production", "--relay", rolled_out.url,
               "--config", config(tmp_path, langfuse.base_url), "--yes", "--force") == 0
    out = capsys.readouterr().out
    assert "--force: promoting v4 without evidence that it served generations under canary" in out
    assert production(langfuse) == 4
    assert run("promote", PROMPT, "--from", "nowhere", "--to", "production", "--relay", rolled_out.url,
               "--config", config(tmp_path, langfuse.base_url), "--yes") == labels.EXIT_LANGFUSE_NOT_FOUND


def test_show_and_compare_read_as_tables(rolled_out: Relay, capsys: Any) -> None:
    assert run("show", PROMPT, "--relay", rolled_out.url) == 0
    out = capsys.readouterr().out
    assert "order-status-answer  label production  current v3" in out
    assert "pod-a (order-agent)  v3" in out
    assert run("show", PROMPT, "--relay", rolled_out.url, "--json") == 0
    assert json.loads(capsys.readouterr().out)["labels"]["production"]["current"] == 3
    assert run("compare", PROMPT, "--label", "production", "--relay", rolled_out.url) == 0
    out = capsys.readouterr().out
    assert "v2 -> v3: error rate +25.0 pp" in out
    assert "input tok/gen +0.0 %" in out
    assert run("show", "nothing-here", "--relay", rolled_out.url) == labels.EXIT_TIMELINE
    assert "has no timeline for prompt 'nothing-here'" in capsys.readouterr().err


def test_the_loopback_langfuse_reserves_latest_like_langfuse(langfuse: LangfuseServer) -> None:
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["production"])
    auth = "Basic " + base64.b64encode(b"pk-lf-test:sk-lf-test").decode()
    status, body = http(f"{langfuse.base_url}/api/public/v2/prompts/{PROMPT}/versions/1", method="PATCH",
                        body=json.dumps({"newLabels": ["latest"]}).encode(),
                        headers={"Authorization": auth, "Content-Type": "application/json"})
    assert status == 400
    assert body["error"][0]["message"] == "Label 'latest' is always assigned to the latest prompt version"
    with pytest.raises(ValueError, match="latest"):
        langfuse.set_labels(PROMPT, 1, ["latest"])
    # PATCH adds: the version keeps what it had, and the label leaves the other versions.
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["staging"])
    status, body = http(f"{langfuse.base_url}/api/public/v2/prompts/{PROMPT}/versions/2", method="PATCH",
                        body=json.dumps({"newLabels": ["production"]}).encode(),
                        headers={"Authorization": auth, "Content-Type": "application/json"})
    assert status == 200 and body["labels"] == ["production", "staging", "latest"]
    v1 = langfuse.get_prompt(PROMPT, version=1)
    assert v1 is not None and v1["labels"] == []
