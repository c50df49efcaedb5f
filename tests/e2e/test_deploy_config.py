"""docker-compose.yml, the Dockerfile, examples/relay.yaml and collector-config/*.yaml, checked
without Docker or a collector binary: they parse, every file they reference exists, images are
pinned, and ports, hosts, keys and environment variable names agree with each other and with the
relay's own configuration loader."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import promptstamp_relay.config as relay_config
from promptstamp_relay.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
COLLECTOR_DIR = ROOT / "collector-config"
RELAY_YAML = ROOT / "examples" / "relay.yaml"

LANGFUSE_STACK = {"langfuse-web", "langfuse-worker", "postgres", "clickhouse", "redis", "minio"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: ``${X}``, ``${X:-default}``, ``${X-default}``, ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"]
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?"):
            if not current:
                raise AssertionError(f"compose requires {name}: {arg}")
            return current
        return current or ""

    return _VAR.sub(sub, value)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return interpolate(data, {})  # the defaults: what `docker compose up` uses with no .env


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def bind_mounts(service: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"], volume["target"]
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield source, target


def container_ports(service: Mapping[str, Any]) -> set[int]:
    ports = set()
    for spec in service.get("ports") or []:
        ports.add(int(str(spec).split(":")[-1].split("/")[0]))
    return ports


def documented_env_vars() -> set[str]:
    """The variables config/ documents with ``.. envvar::`` (the relay's one list of them)."""
    doc = relay_config.__doc__ or ""
    names: set[str] = set()
    for line in doc.splitlines():
        if ".. envvar::" in line:
            declared = line.split(".. envvar::", 1)[1]
            names.update(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", declared.split("  ")[0] + " " + declared))
    return {n for n in names if n.startswith(("PROMPTSTAMP_", "LANGFUSE_"))}


def hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def collector_config(name: str) -> dict[str, Any]:
    data = load_yaml(COLLECTOR_DIR / name)
    assert isinstance(data, dict), name
    return data


def relay_env(services: Mapping[str, Any]) -> dict[str, str]:
    return env_of(services["relay"])


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------
def test_compose_has_the_stack_collector_relay_and_app(services: dict[str, Any]) -> None:
    assert set(services) >= LANGFUSE_STACK
    assert {"otel-collector", "relay", "order-status-app"} <= set(services)


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        _repo, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        # a version with at least major.minor (or a dated release), not a floating major tag
        assert re.search(r"\d+\.\d+|RELEASE\.\d{4}-", tag), f"{name}: {image} is not pinned to a version"
    assert "otel/opentelemetry-collector-contrib" in services["otel-collector"]["image"]
    assert services["langfuse-web"]["image"].split(":")[-1] == services["langfuse-worker"]["image"].split(":")[-1]
    assert services["langfuse-web"]["image"].split(":")[-1].startswith("3.")  # Langfuse v3


def test_every_referenced_file_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name}: mounts missing {source}"
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
            if isinstance(build, dict) and "target" in build:
                stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
                assert build["target"] in stages, f"{name}: no stage {build['target']!r} in {dockerfile}"


def test_collector_command_reads_the_mounted_config(services: dict[str, Any]) -> None:
    collector = services["otel-collector"]
    (config_arg,) = [a for a in collector["command"] if a.startswith("--config")]
    path = config_arg.split("=", 1)[1]
    mounts = dict((target, source) for source, target in bind_mounts(collector))
    assert mounts[path].removeprefix("./") == "collector-config/agent.yaml"


def test_relay_env_names_are_the_ones_config_py_documents(services: dict[str, Any]) -> None:
    documented = documented_env_vars()
    assert {"PROMPTSTAMP_LISTEN", "LANGFUSE_BASE_URL", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"} <= documented
    used = set(relay_env(services))
    assert used <= documented, f"relay env not read by the relay: {sorted(used - documented)}"


def test_relay_config_loads_with_the_compose_environment(services: dict[str, Any]) -> None:
    env = relay_env(services)
    mounts = dict((target, source) for source, target in bind_mounts(services["relay"]))
    command = services["relay"]["command"]
    config_path = command[command.index("--config") + 1]
    assert (ROOT / mounts[config_path]).resolve() == RELAY_YAML
    cfg = load_config(RELAY_YAML, env=env)  # raises ConfigError listing every problem
    assert cfg.exporter_type() == "langfuse"
    assert cfg.listen == env["PROMPTSTAMP_LISTEN"]
    assert cfg.metrics_listen == env["PROMPTSTAMP_METRICS_LISTEN"]
    assert cfg.hold.seconds == float(env["PROMPTSTAMP_HOLD_SECONDS"])
    # the file alone says the same as the environment
    file_cfg = load_config(RELAY_YAML, env={k: v for k, v in env.items() if k.startswith("LANGFUSE_")})
    assert (file_cfg.listen, file_cfg.metrics_listen, file_cfg.hold.seconds) == (
        cfg.listen, cfg.metrics_listen, cfg.hold.seconds)
    lf = cfg.exporter.langfuse
    assert lf.ingestion_version == 4
    assert (lf.public_key, lf.secret_key) == (env["LANGFUSE_PUBLIC_KEY"], env["LANGFUSE_SECRET_KEY"])


def test_ports_agree(services: dict[str, Any]) -> None:
    cfg = load_config(RELAY_YAML, env=relay_env(services))
    _, relay_port = hostport(cfg.listen)
    _, metrics_port = hostport(cfg.metrics_listen)
    assert metrics_port in container_ports(services["relay"])
    # the relay's healthcheck probes its own OTLP port
    assert f"127.0.0.1:{relay_port}" in " ".join(services["relay"]["healthcheck"]["test"])
    # Dockerfile exposes the relay's ports
    exposed = set(re.findall(r"^EXPOSE\s+(.+)$", DOCKERFILE.read_text(), re.M)[-1].split())
    assert {str(relay_port), str(metrics_port)} <= exposed

    # collector -> relay
    agent = collector_config("agent.yaml")
    relay_exporters = {k: v for k, v in agent["exporters"].items() if k.split("/")[0] == "otlp_grpc"}
    (endpoint,) = [v["endpoint"] for v in relay_exporters.values()]
    assert hostport(endpoint) == ("relay", relay_port)

    # app -> collector
    app_env = env_of(services["order-status-app"])
    url = urlsplit(app_env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert url.hostname == "otel-collector"
    assert app_env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    grpc_receiver = agent["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert hostport(grpc_receiver)[1] == url.port
    assert url.port in container_ports(services["otel-collector"])

    # relay and app -> Langfuse web
    for name in ("relay", "order-status-app"):
        base = urlsplit(env_of(services[name])["LANGFUSE_BASE_URL"])
        assert base.hostname == "langfuse-web", name
        assert base.port in container_ports(services["langfuse-web"]), name


def test_one_set_of_langfuse_keys(services: dict[str, Any]) -> None:
    web = env_of(services["langfuse-web"])
    keys = (web["LANGFUSE_INIT_PROJECT_PUBLIC_KEY"], web["LANGFUSE_INIT_PROJECT_SECRET_KEY"])
    assert keys[0].startswith("pk-lf-") and keys[1].startswith("sk-lf-")
    for name in ("relay", "order-status-app"):
        env = env_of(services[name])
        assert (env["LANGFUSE_PUBLIC_KEY"], env["LANGFUSE_SECRET_KEY"]) == keys, name
    for var in ("ORG_ID", "ORG_NAME", "PROJECT_ID", "PROJECT_NAME", "USER_EMAIL", "USER_NAME", "USER_PASSWORD"):
        assert web.get(f"LANGFUSE_INIT_{var}"), var


def test_langfuse_stack_settings(services: dict[str, Any]) -> None:
    web, worker = env_of(services["langfuse-web"]), env_of(services["langfuse-worker"])
    for env in (web, worker):
        for var in ("DATABASE_URL", "SALT", "ENCRYPTION_KEY", "CLICKHOUSE_URL", "CLICKHOUSE_MIGRATION_URL",
                    "REDIS_HOST", "REDIS_AUTH", "LANGFUSE_S3_EVENT_UPLOAD_BUCKET"):
            assert env.get(var), var
        assert len(env["ENCRYPTION_KEY"]) == 64  # 256-bit hex
        assert urlsplit(env["DATABASE_URL"]).hostname == "postgres"
        assert urlsplit(env["CLICKHOUSE_URL"]).hostname == "clickhouse"
        assert env["REDIS_HOST"] == "redis"
        assert urlsplit(env["LANGFUSE_S3_EVENT_UPLOAD_ENDPOINT"]).hostname == "minio"
    assert web.get("NEXTAUTH_URL") and web.get("NEXTAUTH_SECRET")
    assert "noeviction" in services["redis"]["command"]
    assert "mkdir -p /data/langfuse" in services["minio"]["command"]  # the bucket exists


def test_healthy_dependencies_have_healthchecks(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            continue
        for dep, cond in depends.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy"


def test_relay_healthcheck_is_valid_python(services: dict[str, Any]) -> None:
    test = services["relay"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "<healthcheck>", "exec")


def test_app_command_is_one_the_app_accepts(services: dict[str, Any]) -> None:
    from promptstamp_relay.demo.app.__main__ import _parser

    args = _parser().parse_args(services["order-status-app"]["command"])
    assert args.seed_prompts and args.fake_openai and args.wait_for_langfuse > 0
    assert args.scenarios == ["all"]
    env = env_of(services["order-status-app"])
    assert env["ORDER_STATUS_INSTRUMENTATION"] in ("openllmetry", "openinference", "openai-v2")


# --------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------------------------
def _stages() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    parts = re.split(r"^(?=FROM\s)", text, flags=re.M)
    stages = {}
    for part in parts:
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", part, re.I)
        if m:
            stages[m.group(2) or m.group(1)] = part
    return stages


def test_dockerfile_relay_image(services: dict[str, Any]) -> None:
    stages = _stages()
    for stage in ("build", "base"):
        assert re.match(r"FROM python:3\.11-slim\b", stages[stage]), stage
    relay = list(stages)[-1]
    assert relay == "relay", "the relay must be the default (last) stage"
    # The builder has a compiler and setup.py (the C extension), builds a wheel and fails if the
    # extension is not in it; the runtime stages install that wheel, not the sources.
    build = stages["build"]
    assert re.search(r"apt-get install[^\n]*\bgcc\b", build)
    assert re.search(r"^COPY\s[^\n]*\bsetup\.py\b", build, re.M)
    assert "pip wheel --no-deps --wheel-dir /wheels ." in build and "_wirec" in build
    for stage in ("base", "relay", "demo-app"):
        assert not re.search(r"^COPY\s+(?!--from=build)", stages[stage].replace(
            "COPY examples/order_status/requirements.txt", ""), re.M), f"{stage} copies sources"
        assert "gcc" not in stages[stage], stage
    assert "COPY --from=build /wheels /wheels" in stages["base"]
    body = stages["relay"]
    assert re.search(r"""pip install\s+["']\$\(echo /wheels/promptstamp-\*\.whl\)\[relay[],]""", body)
    assert 'ENTRYPOINT ["promptstamp-relay"]' in body and 'CMD ["serve"]' in body
    assert services["relay"]["command"][0] == "serve"
    assert "ENV PROMPTSTAMP_LISTEN=0.0.0.0:4317" in body
    assert "USER " in body  # not root
    app = stages["demo-app"]
    assert 'ENTRYPOINT ["python", "-m", "promptstamp_relay.demo.app"]' in app


def test_dockerfile_copies_only_existing_sources() -> None:
    text = DOCKERFILE.read_text()
    sources = []
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        sources.extend(line.split()[:-1])
    assert sources
    missing = [s for s in sources if not (ROOT / s).exists()]
    # README.md is pyproject's `readme`; it is written separately from this deployment kit.
    assert set(missing) <= {"README.md"}, missing
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for source in sources:
        for pattern in ignored:
            assert not (source == pattern or source.startswith(pattern.rstrip("/") + "/")), (source, pattern)
    assert ".venv" in ignored and ".git" in ignored


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="README.md not written yet")
def test_dockerfile_readme_exists() -> None:
    assert (ROOT / "README.md").is_file()


# --------------------------------------------------------------------------------------------
# collector-config/
# --------------------------------------------------------------------------------------------
COLLECTOR_FILES = ["agent.yaml", "relay-upstream.yaml", "loadbalancing.yaml"]


@pytest.mark.parametrize("name", COLLECTOR_FILES)
def test_collector_pipelines_reference_defined_components(name: str) -> None:
    cfg = collector_config(name)
    pipelines = cfg["service"]["pipelines"]
    assert pipelines
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline_name, pipeline in pipelines.items():
        assert pipeline_name.split("/")[0] in ("traces", "logs", "metrics")
        for kind in used:
            for component in pipeline.get(kind) or []:
                assert component in (cfg.get(kind) or {}), f"{name}: {pipeline_name} uses undefined {component}"
                used[kind].add(component)
        processors = pipeline.get("processors") or []
        if "memory_limiter" in processors:
            assert processors[0] == "memory_limiter", f"{name}: memory_limiter must come first"
    for kind, components in used.items():
        assert set(cfg.get(kind) or {}) == components, f"{name}: unused {kind}"


def test_agent_sends_traces_and_logs_to_the_relay() -> None:
    cfg = collector_config("agent.yaml")
    pipelines = cfg["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == pipelines["logs"]["exporters"] == ["otlp_grpc/relay"]
    exporter = cfg["exporters"]["otlp_grpc/relay"]
    assert exporter["retry_on_failure"]["enabled"] and exporter["sending_queue"]["enabled"]
    # the exporter's batch flush timeout stays below the relay's hold window, so a fetch-log
    # record batched just after its span still resolves exactly
    timeout = float(exporter["sending_queue"]["batch"]["flush_timeout"].rstrip("s"))
    assert timeout < load_config(RELAY_YAML, env={"LANGFUSE_BASE_URL": "http://x", "LANGFUSE_PUBLIC_KEY": "p",
                                                  "LANGFUSE_SECRET_KEY": "s"}).hold.seconds


def test_relay_upstream_exports_to_langfuse_with_its_headers() -> None:
    cfg = collector_config("relay-upstream.yaml")
    pipelines = cfg["service"]["pipelines"]
    assert set(pipelines) == {"traces"}  # Langfuse ingests no logs
    (exporter_name,) = pipelines["traces"]["exporters"]
    assert exporter_name.split("/")[0] == "otlp_http"
    exporter = cfg["exporters"][exporter_name]
    assert exporter["endpoint"] == "${env:LANGFUSE_OTLP_ENDPOINT}"
    text = (COLLECTOR_DIR / "relay-upstream.yaml").read_text()
    assert "/api/public/otel" in text and "v1/traces" in text  # documented base path
    headers = exporter["headers"]
    assert re.fullmatch(r"Basic \$\{env:[A-Z_]+\}", headers["Authorization"])
    version = headers["x-langfuse-ingestion-version"]
    assert isinstance(version, str) and 1 <= int(version) <= 4
    assert exporter["encoding"] == "proto"


def test_loadbalancing_routes_traces_and_logs_by_trace_id() -> None:
    cfg = collector_config("loadbalancing.yaml")
    pipelines = cfg["service"]["pipelines"]
    relay_port = hostport(load_config(RELAY_YAML, env={"LANGFUSE_BASE_URL": "http://x",
                                                       "LANGFUSE_PUBLIC_KEY": "p",
                                                       "LANGFUSE_SECRET_KEY": "s"}).listen)[1]
    for signal in ("traces", "logs"):
        exporters = pipelines[signal]["exporters"]
        assert exporters, signal
        for name in exporters:
            assert name.split("/")[0] == "load_balancing", (signal, name)
            exporter = cfg["exporters"][name]
            assert exporter["routing_key"] == "traceID", (signal, name)
            resolver = exporter["resolver"]
            assert list(resolver) == ["static"]  # exactly one resolver; dns/k8s stay commented
            hosts = resolver["static"]["hostnames"]
            assert len(hosts) >= 2
            assert all(hostport(h)[1] == relay_port for h in hosts)
            assert exporter["protocol"]["otlp"]["tls"]["insecure"] is True
    text = (COLLECTOR_DIR / "loadbalancing.yaml").read_text()
    assert re.search(r"^\s*#\s*dns:", text, re.M) and re.search(r"^\s*#\s*k8s:", text, re.M)


NON_OBVIOUS_KEYS = {
    "agent.yaml": ["memory_limiter", "flush_timeout", "endpoint", "insecure", "sending_queue", "max_size", "batch"],
    "relay-upstream.yaml": ["memory_limiter", "endpoint", "Authorization", "x-langfuse-ingestion-version",
                            "encoding", "retry_on_failure"],
    "loadbalancing.yaml": ["memory_limiter", "routing_key", "insecure", "static", "retry_on_failure", "otlp",
                           "batch"],
}


@pytest.mark.parametrize("name", COLLECTOR_FILES)
def test_collector_configs_comment_their_non_obvious_keys(name: str) -> None:
    lines = (COLLECTOR_DIR / name).read_text().splitlines()
    assert lines[0].startswith("#"), "a header comment says what the file is for"
    for key in NON_OBVIOUS_KEYS[name]:
        indexes = [i for i, line in enumerate(lines) if re.match(rf"\s*{re.escape(key)}:", line)]
        assert indexes, f"{name}: no {key}"
        for i in indexes:
            window = lines[max(0, i - 4) : i + 1]
            assert any("#" in line for line in window), f"{name}:{i + 1}: {key} has no comment near it"


# Collector releases: component name -> the first release that knows it. The old names
# (otlp, otlphttp, loadbalancing) still work as deprecated aliases, with a warning at start-up.
COMPONENT_SINCE = {"otlp_grpc": (0, 144), "otlp_http": (0, 144), "load_balancing": (0, 153)}
DEPRECATED_EXPORTERS = {"otlp", "otlphttp", "loadbalancing"}


def _collector_version(services: Mapping[str, Any]) -> tuple[int, int]:
    tag = services["otel-collector"]["image"].rpartition(":")[2]
    m = re.fullmatch(r"(\d+)\.(\d+)\.\d+", tag)
    assert m, tag
    return int(m[1]), int(m[2])


@pytest.mark.parametrize("name", COLLECTOR_FILES)
def test_collector_configs_use_current_names_and_exporter_batching(name: str, services: dict[str, Any]) -> None:
    cfg = collector_config(name)
    text = (COLLECTOR_DIR / name).read_text()
    # the batch processor is deprecated: the exporters batch (sending_queue.batch), and say why
    assert not any(p.split("/")[0] == "batch" for p in cfg.get("processors") or {}), name
    assert re.search(r"#.*batch processor.*deprecated", text), name
    version = _collector_version(services)
    assert version >= (0, 144)
    for exporter_name, exporter in cfg["exporters"].items():
        kind = exporter_name.split("/")[0]
        assert kind not in DEPRECATED_EXPORTERS, f"{name}: {exporter_name} is a deprecated alias"
        assert version >= COMPONENT_SINCE.get(kind, (0, 0)), f"{name}: {kind} is newer than the image"
        queue = (exporter.get("protocol", {}).get("otlp", exporter)).get("sending_queue")
        assert queue and queue["enabled"] and "batch" in queue, f"{name}: {exporter_name} does not batch"
        assert queue["sizer"] == "items" and queue["batch"]["max_size"] <= queue["queue_size"]
    # the header names the same image version as docker-compose.yml
    assert f"{version[0]}.{version[1]}.0" in text, name
