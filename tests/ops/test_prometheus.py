"""The Grafana dashboard and the Prometheus alerting rules of observability/, with a real
Prometheus (Debian's ``prometheus`` package: ``prometheus`` and ``promtool``):

- ``promtool check rules`` passes; ``promtool test rules`` proves each alert fires on a scripted
  regression and stays quiet without it (and that every firing case really depends on its
  expectation: flipped, promtool fails);
- docker-compose.yml provisions Prometheus and Grafana from those files, consistently;
- a real ``prometheus`` process (free loopback port, TSDB in a temporary directory, 1 s scrapes)
  scrapes a relay under a scripted load, evaluates the rules without error, and answers every
  PromQL expression of the dashboard with at least one series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from promptstamp.testing import LangfuseServer
from tests.otlp_builders import fetch_record, logs
from tests.relays import free_port, stop_process
from tests.waiting import wait_until

from .scripted import MINUTE, PROMPT, Driver, pod, relay, rollout

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "observability"
RULES = OBS / "prometheus" / "rules" / "promptstamp.yml"
RULE_TESTS = OBS / "prometheus" / "tests" / "promptstamp_test.yml"
DASHBOARD = OBS / "grafana" / "dashboards" / "promptstamp-rollouts.json"

pytestmark = pytest.mark.timeout(300)


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed (Debian package 'prometheus'; scripts/test.sh installs it): "
                    "the rules and the dashboard are not checked against a real Prometheus")
    return found


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alerts() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


# -- the rules ------------------------------------------------------------------------------------
def test_the_rules_pass_promtool_check() -> None:
    got = promtool("check", "rules", str(RULES))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "SUCCESS: 15 rules found" in got.stdout
    assert alerts() == ["PromptVersionErrorRateRegression", "PromptVersionLatencyRegression",
                        "PromptLabelInstanceLagging", "PromptInstanceLagging", "PromptUnresolvedShareHigh",
                        "PromptstampRelayRefusingRequests"]


def test_each_alert_fires_on_a_scripted_regression_and_stays_quiet_without(tmp_path: Path) -> None:
    got = promtool("test", "rules", str(RULE_TESTS))
    assert got.returncode == 0, got.stdout + got.stderr
    spec = yaml.safe_load(RULE_TESTS.read_text())
    fires: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for case in spec["tests"]:
        for check in case["alert_rule_test"]:
            counts = fires if check["exp_alerts"] else quiet
            counts[check["alertname"]] = counts.get(check["alertname"], 0) + 1
    assert set(fires) == set(quiet) == set(alerts())
    # Not vacuous: each firing expectation, flipped to "no alert", makes promtool fail.
    shutil.copytree(RULES.parent, tmp_path / "rules")
    (tmp_path / "tests").mkdir()
    for i, case in enumerate(spec["tests"]):
        for j, check in enumerate(case["alert_rule_test"]):
            if not check["exp_alerts"]:
                continue
            flipped = json.loads(json.dumps({**spec, "tests": [case]}))  # that case alone
            flipped["tests"][0]["alert_rule_test"][j]["exp_alerts"] = []
            path = tmp_path / "tests" / f"flipped-{i}-{j}.yml"
            path.write_text(yaml.safe_dump(flipped))
            got = promtool("test", "rules", str(path))
            assert got.returncode != 0, f"{case['name']}: {check['alertname']} never fired"
            assert check["alertname"] in got.stdout + got.stderr


def test_compose_provisions_prometheus_and_grafana_from_observability() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    mounts: dict[str, str] = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not there"
                mounts[target] = source
    assert all(p.split(":")[0] == "127.0.0.1" for s in ("prometheus", "grafana") for p in services[s]["ports"])
    prom = yaml.safe_load((OBS / "prometheus" / "prometheus.yml").read_text())
    got = promtool("check", "config", str(OBS / "prometheus" / "prometheus.yml"))
    assert got.returncode == 0, got.stdout + got.stderr
    # The scrape target is the relay service's metrics listener ...
    listen = services["relay"]["environment"]["PROMPTSTAMP_METRICS_LISTEN"]
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"relay:{listen.rpartition(':')[2]}"]
    # ... the rule files are the mounted rules directory ...
    (rule_glob,) = prom["rule_files"]
    assert mounts[str(Path(rule_glob).parent)] == "./observability/prometheus/rules"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./observability/prometheus/prometheus.yml"
    # ... Grafana's data source is that Prometheus, under the uid the dashboard defaults to, and
    # its dashboard provider reads the mounted dashboards.
    provisioning = OBS / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning"] == "./observability/grafana/provisioning"
    (ds,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    dash = json.loads(DASHBOARD.read_text())
    var = next(v for v in dash["templating"]["list"] if v["type"] == "datasource")
    assert var["current"]["value"] == ds["uid"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "promptstamp.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == "./observability/grafana/dashboards"
    assert services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == \
        provider["options"]["path"] + "/" + DASHBOARD.name


# -- the dashboard --------------------------------------------------------------------------------
def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana's variables filled in as the test's
    Prometheus needs: every tenant, prompt and label; 15 s rate windows (1 s scrapes)."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in (("$__rate_interval", "15s"), ("$__range", "1m"), ("$tenant", ".*"),
                               ("$prompt", ".*"), ("$label", ".*")):
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{panel['title']}: a variable left in {expr}"
            out.append((panel["title"], expr))
    return out


def test_the_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "tenant", "prompt", "label"}
    titles = []
    for panel in dash["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
    row = next(p for p in dash["panels"] if p["type"] == "row")
    assert row["repeat"] == "label"  # the versions, under each label
    assert {"Which versions answer under the label", "Error rate by version", "Duration p50 / p95 by version",
            "Tokens per generation by version", "Unresolved generations by reason",
            "Requests refused"} <= set(titles)
    assert next(p for p in dash["panels"] if p["title"] == "Which versions answer under the label")["type"] == \
        "state-timeline"
    assert len(dashboard_queries()) == 30


# -- a real Prometheus over a relay ---------------------------------------------------------------
class Prometheus:
    """``prometheus`` on a free loopback port, scraping ``target`` every second, with ``rules``."""

    def __init__(self, tmp: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "promptstamp-relay", "static_configs": [{"targets": [target]}]}],
        }))
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until(self._ready, 30, lambda: f"prometheus to be ready: {self.logs()[-1500:]}", interval=0.2)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.logs()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def logs(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)
        self.log.close()


class Load:
    """A bounded stream of generations in a thread: pods on v13 and v14 under production (v14
    erring more), one pod on an old version (lagging), unresolved ones and now and then a
    malformed fetch record; at most ``most``
    generations or ``seconds``, whichever comes first."""

    def __init__(self, d: Driver, most: int = 3000, seconds: float = 90.0) -> None:
        self._d, self._most, self._seconds = d, most, seconds
        self._stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self._seconds
        try:
            while not self._stop.is_set() and self.sent < self._most and time.monotonic() < deadline:
                n = self.sent
                instance, version = (("pod-b", 13), ("pod-a", 14), ("pod-c", 14))[n % 3]
                self._d.generation(instance, version, duration_ms=(1100 if version == 14 else 700) + (n % 7) * 50,
                                   error=(n % 4 == 0) if version == 14 else (n % 30 == 0))
                if n % 10 == 0:
                    self._d.generation("pod-x", None, label="canary")  # unresolved after the hold
                if n % 50 == 0:  # an app bug: a fetch record without its version (counted as invalid)
                    self._d.client.logs(logs([fetch_record(PROMPT, "production", None)], resource=pod("pod-x")),
                                        timeout=10)
                self.sent += 1
                self._stop.wait(0.05)
        except BaseException as e:  # reported by stop()
            self.error = e

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert self.error is None, f"the load failed: {self.error!r}"


@pytest.fixture
def relay_under_load(tmp_path: Path) -> Iterator[tuple[Driver, Load]]:
    with LangfuseServer() as langfuse, relay(tmp_path, langfuse) as d:
        rollout(d, time.time_ns() - 40 * MINUTE)
        load = Load(d)
        try:
            yield d, load
        finally:
            load.stop()


def test_a_real_prometheus_answers_every_dashboard_query(relay_under_load: tuple[Driver, Load],
                                                         tmp_path: Path) -> None:
    d, load = relay_under_load
    started = time.monotonic()
    prom = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{d.relay.metrics_port}", RULES)
    try:
        up = wait_until(lambda: [t for t in prom.api("targets")["activeTargets"] if t["health"] == "up"], 30,
                        "prometheus to scrape the relay")
        assert up[0]["labels"]["job"] == "promptstamp-relay"
        answers: dict[str, list[Any]] = {}

        def all_answer() -> bool:
            assert load.error is None, f"the load failed: {load.error!r}"
            for _title, expr in dashboard_queries():
                if not answers.get(expr):
                    answers[expr] = prom.api("query", query=expr)["result"]
            return all(answers.values())

        def missing() -> str:
            return "every dashboard query to return a series; none yet: " + "; ".join(
                f"{t}: {e}" for t, e in dashboard_queries() if not answers.get(e))

        wait_until(all_answer, 90, missing, interval=1.0)
        # The numbers make sense: v14 errs more than v13 under production, on Prometheus's side too.
        # (The load errs on 1 in 4 of v14's generations and 1 in 30 of v13's, starting with one of
        # each: the first scrapes can show them equal, so wait for the rates to part.)
        error_rate = next(e for t, e in dashboard_queries() if t == "Error rate by version")

        def production_rates() -> dict[str, float]:
            return {r["metric"]["version"]: float(r["value"][1])
                    for r in prom.api("query", query=error_rate)["result"]
                    if r["metric"]["prompt"] == PROMPT and r["metric"]["label"] == "production"}

        def parted() -> dict[str, float] | None:
            got = production_rates()
            return got if got.get("14", 0.0) > got.get("13", 0.0) else None

        rates = wait_until(parted, 60, lambda: f"v14's error rate above v13's, now {production_rates()}",
                           interval=1.0)
        assert rates["14"] > rates["13"], rates
        serving = next(e for t, e in dashboard_queries() if t == "Which versions answer under the label")
        states = {(r["metric"]["label"], r["metric"]["version"]): r["value"][1]
                  for r in prom.api("query", query=serving)["result"]}
        assert states[("production", "13")] == states[("production", "14")] == "1"  # pod-b lags
        # The dashboard's variables: Grafana's label_values() over the same series.
        dash = json.loads(DASHBOARD.read_text())
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((\w+)(?:\{.*\})?, (\w+)\)", var["query"]["query"])
            assert m, var["query"]["query"]
            values = prom.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
            assert values, f"variable {var['name']} has no values"
        assert PROMPT in prom.api("label/prompt/values", **{"match[]": "promptstamp_generations_total"})
        # Every rule (recording and alerting) evaluates on the relay's real series without error.
        def evaluated() -> list[dict[str, Any]] | None:
            rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                          not r["lastEvaluation"].startswith("0001") for r in rules) else None

        rules = wait_until(evaluated, 30, "every rule to be evaluated once")
        assert len(rules) == 15
        assert [r for r in rules if r["health"] != "ok"] == []
        def recorded() -> bool:  # once a rule evaluation saw two scrapes
            got = prom.api("query", query="promptstamp_version:generations:increase15m")["result"]
            return {r["metric"]["version"] for r in got if r["metric"]["label"] == "production"} >= {"13", "14"}

        wait_until(recorded, 30, "the recording rules to record v13 and v14 under production")
        print(f"prometheus: {len(dashboard_queries())} dashboard queries answered, 15 rules evaluated, "
              f"{load.sent} generations sent, {time.monotonic() - started:.1f} s")
    finally:
        prom.stop()
