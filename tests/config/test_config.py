from __future__ import annotations

from pathlib import Path

import pytest

from promptstamp_relay.cli import main
from promptstamp_relay.config import ConfigError, load_config


def test_defaults_are_valid_and_bind_loopback() -> None:
    cfg = load_config(None, env={})
    assert cfg.listen == "127.0.0.1:4317"
    assert cfg.hold.seconds == 8.0
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


# -- the loader catches what used to fail at run time (issue: an operator's first hour) ----------
from promptstamp_relay.config import explain, load  # noqa: E402
from promptstamp_relay.export.endpoints import grpc_target, langfuse_base_url  # noqa: E402

LANGFUSE_ENV = {"LANGFUSE_PUBLIC_KEY": "pk-lf-1", "LANGFUSE_SECRET_KEY": "sk-lf-secret-value"}


def _errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    f = tmp_path / "relay.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f, env=env or {})
    return info.value.errors


def test_duplicate_keys_are_errors_with_both_lines(tmp_path: Path) -> None:
    errs = _errors(tmp_path, "hold:\n  seconds: 1\nlisten: 127.0.0.1:1\nhold:\n  seconds: 5\n")
    (err,) = errs
    assert err.startswith(f"{tmp_path / 'relay.yaml'}:4:1: duplicate key 'hold' (first at line 1)")
    nested = _errors(tmp_path, "hold:\n  seconds: 1\n  seconds: 2\n")
    assert nested == [f"{tmp_path / 'relay.yaml'}:3:3: duplicate key 'hold.seconds' (first at line 2); "
                      "YAML would silently keep the last one"]


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    f = tmp_path / "relay.yaml"
    f.write_text("retry:\n  <<: {multiplier: 2.0, max_interval_seconds: 10}\n  multiplier: 3.0\n")
    cfg = load_config(f, env={})
    assert (cfg.retry.multiplier, cfg.retry.max_interval_seconds) == (3.0, 10.0)


def test_unknown_keys_get_did_you_mean_and_a_line(tmp_path: Path) -> None:
    errs = _errors(tmp_path, "listen: 127.0.0.1:1\nhold:\n  secnds: 1\nexporters: {}\n")
    path = tmp_path / "relay.yaml"
    assert f"{path}:3: 'hold.secnds' is not a known setting; did you mean 'hold.seconds'?" in errs
    assert f"{path}:4: 'exporters' is not a known setting; did you mean 'exporter'?" in errs
    # a flag with a typo too
    with pytest.raises(ConfigError, match=r"'hold\.secnds' is not a known setting; did you mean 'hold\.seconds'"):
        load_config(None, env={}, overrides={"hold.secnds": 1})


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path: Path) -> None:
    (err,) = _errors(tmp_path, "listen: 127.0.0.1:1\nhold:\n  seconds: [1,\n")
    assert err.startswith(f"{tmp_path / 'relay.yaml'}:4:1: not valid YAML")
    assert "<unicode string>" not in err
    (err,) = _errors(tmp_path, "a: b: c\n")
    assert err.startswith(f"{tmp_path / 'relay.yaml'}:1:5: not valid YAML: mapping values are not allowed")


def test_errors_from_the_environment_name_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"PROMPTSTAMP_HOLD_SECONDS": "abc"})
    assert info.value.errors == ["PROMPTSTAMP_HOLD_SECONDS='abc': must be a number"]
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"PROMPTSTAMP_HOLD_SECONDS": "500", "PROMPTSTAMP_LISTEN": "nowhere"})
    errs = info.value.errors
    assert "'hold.seconds' must be between 0 and 300 (set by PROMPTSTAMP_HOLD_SECONDS)" in errs
    assert "'listen' must be host:port, got 'nowhere' (set by PROMPTSTAMP_LISTEN)" in errs


def test_unsupported_store_scheme_lists_the_supported_ones_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"PROMPTSTAMP_STORE": "postgres://relay:hunter2@db:5432/relay"})
    (err,) = info.value.errors
    assert err.startswith("PROMPTSTAMP_STORE='postgres://…': not a supported store; supported: memory, redis://")
    assert "rediss://" in err and "unix://" in err
    assert "hunter2" not in err
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380/1", "unix:///run/redis.sock"):
        assert load_config(None, env={"PROMPTSTAMP_STORE": url}).store.url == url


def test_keys_without_a_base_url_say_the_debug_exporter_is_used() -> None:
    loaded = load(None, env=LANGFUSE_ENV)
    assert loaded.config.exporter_type() == "debug"
    (note,) = loaded.notes
    assert "no base URL" in note and "debug exporter" in note and "LANGFUSE_BASE_URL" in note
    assert "environment LANGFUSE_PUBLIC_KEY" in note
    assert "sk-lf-secret-value" not in note


def test_langfuse_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    f = tmp_path / "relay.yaml"
    f.write_text("exporter:\n  langfuse:\n    base_url: http://file:3000\n    public_key: pk-file\n"
                 "    secret_key: sk-file\nhold: {seconds: 1}\n")
    env = {"LANGFUSE_BASE_URL": "http://env:3000", "LANGFUSE_PUBLIC_KEY": "pk-env", "PROMPTSTAMP_HOLD_SECONDS": "3"}
    cfg = load_config(f, env=env, overrides={"hold.seconds": 0.5})
    lf = cfg.exporter.langfuse
    assert (lf.base_url, lf.public_key, lf.secret_key) == ("http://env:3000", "pk-env", "sk-file")
    assert cfg.hold.seconds == 0.5
    cfg = load_config(f, env=env, overrides={"exporter.langfuse.base_url": "http://flag:3000"})
    assert cfg.exporter.langfuse.base_url == "http://flag:3000"


def test_langfuse_host_is_an_alias_and_base_url_wins() -> None:
    cfg = load_config(None, env={**LANGFUSE_ENV, "LANGFUSE_HOST": "https://cloud.langfuse.com"})
    assert cfg.exporter_type() == "langfuse" and cfg.exporter.langfuse.base_url == "https://cloud.langfuse.com"
    loaded = load(None, env={**LANGFUSE_ENV, "LANGFUSE_HOST": "https://us.cloud.langfuse.com",
                             "LANGFUSE_BASE_URL": "https://cloud.langfuse.com"})
    assert loaded.config.exporter.langfuse.base_url == "https://cloud.langfuse.com"
    assert any("LANGFUSE_HOST" in n and "using LANGFUSE_BASE_URL" in n for n in loaded.notes)


@pytest.mark.parametrize("given", ["http://lf:3000/api/public/otel", "http://lf:3000/api/public/otel/",
                                   "http://lf:3000/api/public/otel/v1/traces", "http://lf:3000/"])
def test_langfuse_base_url_with_the_otlp_path_is_normalised_with_a_note(given: str) -> None:
    loaded = load(None, env={**LANGFUSE_ENV, "LANGFUSE_BASE_URL": given})
    assert loaded.config.exporter.langfuse.base_url == "http://lf:3000"
    if "/api/public" in given:
        (note,) = loaded.notes
        assert "LANGFUSE_BASE_URL" in note and "'http://lf:3000'" in note and "/api/public/otel/v1/traces" in note
    else:
        assert loaded.notes == []  # a trailing slash is not worth a note


def test_tenant_base_url_is_normalised_too(tmp_path: Path) -> None:
    f = tmp_path / "relay.yaml"
    f.write_text("auth:\n  enabled: true\n  tenants:\n    acme:\n      langfuse_public_key: pk-a\n"
                 "      langfuse_secret_key: sk-a\n      langfuse_base_url: https://eu.lf/api/public/otel\n")
    loaded = load(f, env={**LANGFUSE_ENV, "LANGFUSE_BASE_URL": "http://lf:3000"})
    assert loaded.config.auth.tenants["acme"].langfuse_base_url == "https://eu.lf"
    assert any("auth.tenants.acme.langfuse_base_url" in n for n in loaded.notes)


def test_endpoint_helpers() -> None:
    assert langfuse_base_url(" https://x/api/public ") == "https://x"
    assert langfuse_base_url("https://x/prefix") == "https://x/prefix"
    assert grpc_target("collector:4317", insecure=True) == grpc_target("http://collector:4317", insecure=False)
    assert grpc_target("https://collector:4317", insecure=True).tls
    assert grpc_target("collector:4317", insecure=False).tls
    assert grpc_target("http://[::1]:4317/", insecure=True).target == "[::1]:4317"
    for bad in ("http://collector:4318/v1/traces", "grpc://collector:4317", "http://collector", "collector"):
        with pytest.raises(ValueError):
            grpc_target(bad, insecure=True)


@pytest.mark.parametrize("section", ["exporter", "logs_exporter"])
def test_otlp_grpc_endpoint_in_url_form(section: str) -> None:
    def cfg(endpoint: str, **more: object) -> object:
        return load_config(None, env={}, overrides={f"{section}.type": "otlp_grpc",
                                                    f"{section}.otlp_grpc.endpoint": endpoint, **more})

    for ok in ("collector:4317", "http://collector:4317", "https://collector.example:443"):
        cfg(ok)
    with pytest.raises(ConfigError, match="has no path"):
        cfg("http://collector:4318/v1/traces")
    with pytest.raises(ConfigError, match=r"insecure' is true but the endpoint .* is https://"):
        cfg("https://collector:4317", **{f"{section}.otlp_grpc.insecure": True})
    with pytest.raises(ConfigError, match=r"insecure' is false but the endpoint .* is http://"):
        cfg("http://collector:4317", **{f"{section}.otlp_grpc.insecure": False})


def test_record_mode_is_validated() -> None:
    assert load_config(None, env={}).record_mode == "append"
    assert load_config(None, env={}, overrides={"record_mode": "truncate"}).record_mode == "truncate"
    with pytest.raises(ConfigError, match="'record_mode' must be append or truncate"):
        load_config(None, env={}, overrides={"record_mode": "overwrite"})


def test_explain_says_where_each_setting_came_from_and_hides_secrets(tmp_path: Path) -> None:
    f = tmp_path / "relay.yaml"
    f.write_text("listen: 127.0.0.1:1111\nhold:\n  seconds: 1\nprompt_names: {k: n}\n"
                 "store: {backend: redis, url: 'redis://:s3cret@redis:6379/0'}\n")
    env = {**LANGFUSE_ENV, "LANGFUSE_BASE_URL": "http://lf:3000", "PROMPTSTAMP_LISTEN": "127.0.0.1:2222"}
    rows = {key: (value, source) for key, value, source in
            explain(load(f, env=env, overrides={"hold.seconds": 0.5}))}
    assert rows["listen"] == ("'127.0.0.1:2222'", "environment PROMPTSTAMP_LISTEN")
    assert rows["hold.seconds"] == ("0.5", "flag")
    assert rows["hold.max_spans"] == ("100000", "default")
    assert rows["prompt_names"] == ('{"k": "n"}', f"file {f}:4")
    assert rows["exporter.langfuse.public_key"] == ("'pk-lf-1'", "environment LANGFUSE_PUBLIC_KEY")
    assert rows["exporter.langfuse.secret_key"] == ("(set)", "environment LANGFUSE_SECRET_KEY")
    assert rows["store.url"] == ("'redis://***@redis:6379/0'", f"file {f}:5")
    assert rows["auth.enabled"][1] == "default"
    text = repr(rows)
    assert "sk-lf-secret-value" not in text and "s3cret" not in text


def test_check_config_explain_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {**LANGFUSE_ENV, "LANGFUSE_BASE_URL": "http://lf:3000/api/public/otel"}.items():
        monkeypatch.setenv(k, v)
    assert main(["check-config", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "note: exporter.langfuse.base_url 'http://lf:3000/api/public/otel'" in out
    assert "exporter.langfuse.secret_key" in out and "(set)  (environment LANGFUSE_SECRET_KEY)" in out
    assert "sk-lf-secret-value" not in out
    assert "configuration OK: listen 127.0.0.1:4317, exporter langfuse" in out
