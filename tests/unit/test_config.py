from __future__ import annotations

from pathlib import Path

import pytest

from promptstamp_relay.cli import main
from promptstamp_relay.config import ConfigError, load_config


def test_defaults_are_valid_and_bind_loopback() -> None:
    cfg = load_config(None, env={})
    assert cfg.listen == "127.0.0.1:4317"
    assert cfg.hold.seconds == 2.0
    assert cfg.resolution.api.enabled is False
    assert cfg.exporter_type() == "debug"


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "listen: nowhere\nhold: {seconds: -1}\nqueue: {workers: many}\nbogus: 1\n"
        "exporter: {type: langfuse}\nstore: {backend: redis}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(f, env={})
    errs = info.value.errors
    for expected in ("'listen' must be host:port", "'hold.seconds' must be between 0 and 300",
                     "'queue.workers' must be an integer", "'bogus' is not a known setting",
                     "'exporter.langfuse.base_url' must be an http(s) URL",
                     "'store.url' must be a redis:// URL"):
        assert any(expected in e for e in errs), (expected, errs)


def test_environment_and_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("listen: 127.0.0.1:1111\nhold: {seconds: 1}\n")
    env = {"PROMPTSTAMP_LISTEN": "127.0.0.1:2222", "LANGFUSE_BASE_URL": "http://127.0.0.1:3000",
           "LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk", "PROMPTSTAMP_STORE": "redis://127.0.0.1:6379/0"}
    cfg = load_config(f, env=env, overrides={"hold.seconds": 0.25})
    assert cfg.listen == "127.0.0.1:2222"
    assert cfg.hold.seconds == 0.25
    assert cfg.exporter_type() == "langfuse"
    assert (cfg.exporter.langfuse.public_key, cfg.exporter.langfuse.secret_key) == ("pk", "sk")
    assert (cfg.store.backend, cfg.store.url) == ("redis", "redis://127.0.0.1:6379/0")


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("prompt_names: {order-status-answer: support/order-status}\n")
    assert main(["check-config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("hold: {seconds: 1000}\nretry: {multiplier: 0.5}\n")
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'hold.seconds'" in err and "'retry.multiplier'" in err


def test_generation_rules_and_prompt_names_from_yaml(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("generation: {present: [my.llm], equals: {kind: llm}}\nprompt_names: {k: n}\n")
    cfg = load_config(f, env={})
    assert cfg.generation.present == ["my.llm"] and cfg.generation.equals == {"kind": "llm"}
    assert cfg.prompt_names == {"k": "n"}
