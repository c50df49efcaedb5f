"""The relay's pages (``/prompts``, ``/prompts/{name}``) over HTTP, on a live relay that received a
scripted rollout: the same numbers as ``labels show --json`` and ``labels compare``, the lanes,
the marks and the lagging instance in the SVG, escaping of every name from spans, and the
timeline API's authentication and tenant isolation. The same pages in a real browser:
``test_browser.py``."""

from __future__ import annotations

import base64
import itertools
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promptstamp_relay.cli import main
from promptstamp_relay.core.model import GenerationRecord
from promptstamp_relay.ops._svg import OKABE_ITO, PATTERNS, esc, styles_for
from promptstamp_relay.ops.pages import PromptPages
from promptstamp_relay.rollouts import RolloutsConfig
from promptstamp_relay.rollouts._model import render_prompt
from promptstamp_relay.rollouts.component import Rollouts
from tests.otlp_builders import T0, S, fetch_record, gen_attrs, logs, span, traces
from tests.relays import metrics_text
from tests.waiting import wait_until

from .browser import Node, parse
from .scripted import (
    HOSTILE_INSTANCE,
    HOSTILE_LABEL,
    HOSTILE_PROMPT,
    HOSTILE_SERVICE,
    PROMPT,
    Driver,
    hostile,
    pod,
    relay,
    rollout,
)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers.items()), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read().decode()


def page(d: Driver, name: str, query: str = "") -> Node:
    status, headers, html = get(f"{d.url}/prompts/{urllib.parse.quote(name, safe='')}{query}")
    assert status == 200, html
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    return parse(html)


@pytest.fixture(scope="module")
def rolled_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Driver, dict[str, Any]]]:
    with relay(tmp_path_factory.mktemp("pages")) as d:
        body = rollout(d)
        hostile(d)
        yield d, body


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(["labels", *argv]) == 0
    return capsys.readouterr().out


def test_the_page_shows_the_numbers_of_labels_show(rolled_out: tuple[Driver, dict[str, Any]],
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    d, _ = rolled_out
    monkeypatch.delenv("PROMPTSTAMP_RELAY_TOKEN", raising=False)
    shown = json.loads(cli(capsys, "show", PROMPT, "--relay", d.url, "--json"))
    text = cli(capsys, "show", PROMPT, "--relay", d.url)
    dom = page(d, PROMPT)
    assert dom.one(id="prompt-name").text() == PROMPT
    assert [s.attrs["data-label"] for s in dom.all("section", "label")] == list(shown["labels"])
    for label, tl in shown["labels"].items():
        section = dom.one("section", "label", data_label=label)
        assert section.one("b", "current").text() == f"v{tl['current']}"
        rows = section.one("table", "versions").all("tr")[1:]
        assert [r.attrs["data-version"] for r in rows] == [str(v["version"]) for v in tl["versions"]]
        for row, v in zip(rows, tl["versions"], strict=True):
            cell = {td.attrs["data-field"]: td.text() for td in row.all("td")}
            # as labels show --json has them ...
            assert cell["first_served"] == v["first_served"] and cell["last_served"] == v["last_served"]
            for f in ("fetches", "generations", "errors", "input_tokens", "output_tokens"):
                assert cell[f] == str(v[f]), f
            assert cell["duration_p50_ms"] == f"{v['duration_p50_ms']:.0f}"
            assert cell["duration_p95_ms"] == f"{v['duration_p95_ms']:.0f}"
            assert cell["error_rate"] == f"{v['errors'] / v['generations'] * 100:.1f} %"
            # ... and as labels show prints them: the row's cells, in its order
            line = "  ".join([cell["version"], cell["first_served"], cell["last_served"], cell["fetches"],
                              cell["generations"], cell["errors"], cell["duration_p50_ms"],
                              cell["duration_p95_ms"], cell["input_tokens"], cell["output_tokens"]])
            assert line in re.sub(r" {2,}", "  ", text)
        lagging = {r.attrs["data-instance"]: r.words() for r in section.one("table", "instances").all("tr")[1:]}
        assert list(lagging) == [i["instance"] for i in tl["instances"]]
        for i in tl["lagging"]:
            assert f"LAGGING, {i['behind_seconds']:.1f} s behind" in lagging[i["instance"]]
    # The changes between versions read as labels compare prints them.
    compared = cli(capsys, "compare", PROMPT, "--label", "production", "--relay", d.url)
    changes = [li.text() for li in dom.one("section", "label", data_label="production").one("ul", "changes").all("li")]
    assert changes == ["v13 -> v14: " + compared.split("v13 -> v14: ")[1].strip()]
    assert "error rate +" in changes[0]  # v14 errs more: the scripted regression shows


def test_the_lanes_marks_and_lagging_instance(rolled_out: tuple[Driver, dict[str, Any]]) -> None:
    d, body = rolled_out
    prod = page(d, PROMPT).one("section", "label", data_label="production")
    svg = prod.one("svg", "timeline")
    lanes = {g.attrs["data-instance"]: g for g in svg.all("g", "lane")}
    assert list(lanes) == ["pod-b", "pod-a", "pod-c"]  # the order of labels show's instances
    assert {k: g.attrs["data-lagging"] for k, g in lanes.items()} == {"pod-b": "true", "pod-a": "false",
                                                                      "pod-c": "false"}
    assert "LAGGING: still v13, " in lanes["pod-b"].text()
    assert lanes["pod-b"].all("rect", "lag-box") and not lanes["pod-a"].all("rect", "lag-box")
    served = {k: [b.attrs["data-version"] for b in g.all("g", "served")] for k, g in lanes.items()}
    assert served == {"pod-b": ["13"], "pod-a": ["13", "14"], "pod-c": ["13", "14"]}
    # Every bar says its version in words, not only in colour.
    for g in svg.all("g", "served"):
        assert g.one("text", "vtag").text() == f"v{g.attrs['data-version']}"

    def x(node: Node) -> float:
        return float(node.one("rect").attrs["x"])

    def line_x(mark: Node) -> float:
        return float(mark.one("line").attrs["x1"])

    move = svg.one("g", "move")
    assert move.attrs["data-version"] == "14" and move.text() == "label → v14 (Langfuse)"
    firsts = {m.attrs["data-version"]: m for m in svg.all("g", "first")}
    assert set(firsts) == {"13", "14"} and firsts["14"].text() == "v14 first served"
    # Geometry: the label moved, then pod-a switched (its v14 bar starts at v14's first hand-out),
    # then pod-c; pod-b's v13 bar runs to the right end with the others' v14 bars.
    a14 = next(b for b in lanes["pod-a"].all("g", "served") if b.attrs["data-version"] == "14")
    c14 = next(b for b in lanes["pod-c"].all("g", "served") if b.attrs["data-version"] == "14")
    assert line_x(move) < x(a14) < x(c14)
    assert x(a14) == pytest.approx(line_x(firsts["14"]), abs=0.1)
    b13 = lanes["pod-b"].one("g", "served")
    right = float(b13.one("rect").attrs["x"]) + float(b13.one("rect").attrs["width"])
    assert right > x(c14)
    # The legend tells versions apart by pattern too, and names the line styles.
    legend = prod.one("ul", "legend").words()
    assert "v13" in legend and "v14" in legend and "lagging instance" in legend and "label moved" in legend
    # The charts: one per metric, a bar per version, the value written next to it.
    charts = {c.attrs["data-metric"]: c for c in prod.all("svg", "chart")}
    assert list(charts) == ["error_rate", "duration_p50_ms", "duration_p95_ms", "input_per_generation",
                            "output_per_generation"]
    v14 = body["labels"]["production"]["versions"][1]
    bar = charts["duration_p95_ms"].one("g", "bar", data_version="14")
    assert bar.one("text", "value").text() == f"{v14['duration_p95_ms']:.0f} ms"
    bar = charts["error_rate"].one("g", "bar", data_version="14")
    assert bar.one("text", "value").text() == f"{v14['errors'] / v14['generations'] * 100:.1f} %"


def test_the_index_lists_every_prompt(rolled_out: tuple[Driver, dict[str, Any]]) -> None:
    d, _ = rolled_out
    status, _, html = get(d.url + "/prompts")
    assert status == 200
    rows = {r.attrs["data-prompt"]: r for r in parse(html).all("tr", "prompt")}
    assert list(rows) == sorted([PROMPT, HOSTILE_PROMPT])
    ours = rows[PROMPT]
    labels = {li.attrs["data-label"]: li.words() for li in ours.all("li")}
    assert labels == {"production": "production → v14", "staging": "staging → v15",
                      "canary": "canary → unresolved only"}
    cell = {td.attrs["data-field"]: td.text() for td in ours.all("td") if "data-field" in td.attrs}
    assert cell["generations"] == "58" and cell["lagging"] == "1"
    # The unresolved share is the one /metrics exports.
    metrics = metrics_text(get(d.url + "/metrics")[2])
    ours_total = sum(v for k, v in metrics.items()
                     if k.startswith("promptstamp_generations_total{") and f'prompt="{PROMPT}"' in k)
    none = sum(v for k, v in metrics.items() if k.startswith("promptstamp_generations_total{")
               and f'prompt="{PROMPT}"' in k and 'version="none"' in k)
    assert (none, ours_total) == (1, 59)
    assert cell["unresolved"] == "1.7 % (1 of 59)"
    link = ours.one("a", "name")
    assert link.attrs["href"] == f"/prompts/{PROMPT}"
    assert rows[HOSTILE_PROMPT].one("a", "name").attrs["href"] == "/prompts/" + urllib.parse.quote(HOSTILE_PROMPT, safe="")


def test_hostile_names_are_text(rolled_out: tuple[Driver, dict[str, Any]]) -> None:
    d, _ = rolled_out
    for path in ("/prompts", "/prompts/" + urllib.parse.quote(HOSTILE_PROMPT, safe="")):
        status, headers, html = get(d.url + path)
        assert status == 200
        assert "<script" not in html.lower() and "<img" not in html.lower() and "<b onmouseover" not in html
        assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none': no script runs
        dom = parse(html)
        assert not dom.all("script") and not dom.all("img") and not dom.all("b", onmouseover="alert(3)")
    dom = page(d, HOSTILE_PROMPT)
    assert dom.one(id="prompt-name").text() == HOSTILE_PROMPT
    section = dom.one("section", "label")
    assert section.attrs["data-label"] == HOSTILE_LABEL
    assert section.one("h2").words().startswith(f"Label {HOSTILE_LABEL} · current")
    lane = section.one("g", "lane")
    assert lane.attrs["data-instance"] == HOSTILE_INSTANCE
    assert HOSTILE_SERVICE[:20] in lane.text()
    row = section.one("table", "instances").all("tr")[1]
    assert [td.text() for td in row.all("td")][:2] == [HOSTILE_INSTANCE, HOSTILE_SERVICE]
    assert dom.one("head").one("title").text().startswith(f"prompt {HOSTILE_PROMPT}")


def test_unknown_prompts_and_labels_are_404_pages(rolled_out: tuple[Driver, dict[str, Any]]) -> None:
    d, _ = rolled_out
    for path in ("/prompts/nothing-here", f"/prompts/{PROMPT}?label=nope", "/prompts/%3Cb%3Ex"):
        status, headers, html = get(d.url + path)
        assert status == 404 and headers["Content-Type"].startswith("text/html")
        assert "No timeline for prompt" in html and "<b>x" not in html
    status, _, html = get(f"{d.url}/prompts/{PROMPT}?label=staging")
    assert status == 200 and [s.attrs["data-label"] for s in parse(html).all("section", "label")] == ["staging"]


TOKEN_A, TOKEN_B = "tenant-a-token-0123456789", "tenant-b-token-0123456789"


def test_the_pages_take_the_timeline_apis_auth_and_keep_tenants_apart(tmp_path: Path) -> None:
    tenants = {"acme": {"tokens": [TOKEN_A], "langfuse_public_key": "pk-lf-acme", "langfuse_secret_key": "sk-lf-acme"},
               "globex": {"tokens": [TOKEN_B]}}
    with relay(tmp_path, **{"auth.enabled": True, "auth.tenants": tenants, "rollouts.webhook_secrets": {}}) as d:
        a = [("authorization", f"Bearer {TOKEN_A}")]
        b = [("authorization", f"Bearer {TOKEN_B}")]
        d.client.logs(logs([fetch_record(PROMPT, "production", 7, trace=1)], resource=pod("pod-a")),
                      timeout=10, metadata=a)
        d.client.traces(traces([span(trace=1, attrs=gen_attrs(PROMPT))], resource=pod("pod-a")), timeout=10, metadata=a)
        d.client.logs(logs([fetch_record("globex-prompt", "production", 2, trace=2)], resource=pod("pod-z")),
                      timeout=10, metadata=b)
        basic = "Basic " + base64.b64encode(b"pk-lf-acme:sk-lf-acme").decode()
        wait_until(lambda: get(f"{d.url}/prompts/{PROMPT}", {"Authorization": basic})[0] == 200, 10,
                   "acme's prompt page")
        for path in ("/prompts", f"/prompts/{PROMPT}"):
            status, headers, html = get(d.url + path)  # no credentials: asked for them, nothing shown
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
            assert PROMPT not in html
            status, _, _ = get(d.url + path, {"Authorization": "Bearer not-a-token-of-anyone"})
            assert status == 401
        # acme (Basic with its Langfuse keys, or its token) sees its own prompt only.
        for creds in (basic, f"Bearer {TOKEN_A}"):
            status, _, html = get(d.url + "/prompts", {"Authorization": creds})
            assert status == 200
            assert [r.attrs["data-prompt"] for r in parse(html).all("tr", "prompt")] == [PROMPT]
            status, _, html = get(f"{d.url}/prompts/{PROMPT}", {"Authorization": creds})
            assert status == 200 and "current" in html
            # another tenant's prompt answers like one that does not exist
            other = get(f"{d.url}/prompts/globex-prompt", {"Authorization": creds})
            missing = get(f"{d.url}/prompts/no-such-prompt", {"Authorization": creds})
            assert other[0] == missing[0] == 404
            assert other[2].replace("globex-prompt", "X") == missing[2].replace("no-such-prompt", "X")
        status, _, html = get(d.url + "/prompts", {"Authorization": f"Bearer {TOKEN_B}"})
        assert [r.attrs["data-prompt"] for r in parse(html).all("tr", "prompt")] == ["globex-prompt"]
        assert get(f"{d.url}/prompts/{PROMPT}", {"Authorization": f"Bearer {TOKEN_B}"})[0] == 404


def test_versions_differ_in_colour_and_pattern_and_everything_is_escaped() -> None:
    styles = styles_for([14, 3, 7, 9, 11, 12, 20, 21])
    ordered = [styles[v] for v in sorted(styles)]
    assert [s.colour for s in ordered[:7]] == list(OKABE_ITO)
    for a, b in itertools.pairwise(ordered):  # neighbours differ in both cues
        assert a.colour != b.colour and a.pattern != b.pattern
    assert {s.pattern for s in ordered} == set(PATTERNS)
    assert esc('"><script>') == "&quot;&gt;&lt;script&gt;" and esc("'") == "&#x27;"


def test_a_label_known_from_a_webhook_move_or_from_generations_alone() -> None:
    """Edge timelines, without a network: a move Langfuse reported before any hand-out (no
    current version yet), and versions the api tier answered (generations, no hand-out)."""
    rollouts = Rollouts(RolloutsConfig(webhook_secrets={"default": "lf-whsec_" + "ab" * 32}))
    rollouts.observer.add_move(("default", "moved", "production"), 5, T0)
    pages = PromptPages(rollouts, lambda req: "default", render_prompt, clock=lambda: T0 + S)
    got = pages.prompt("default", "moved", None)
    assert got.status == 200
    section = parse(got.body.decode()).one("section", "label")
    assert section.one("h2").words() == "Label production · current none yet"
    assert section.one("p", "empty").words() == "No hand-out recorded under this label."
    assert section.one("p", "move").words() == "Label moved to v5 at 2023-11-14T22:13:20Z (Langfuse)."
    rollouts.observer.on_generations([GenerationRecord(
        "default", b"t" * 16, b"s" * 8, "chat", "api-only", "production", "api-only", 3, "api", None, None,
        "pod-a", "agent", T0, T0 + S // 2, False, 10, 2)], T0)
    got = pages.prompt("default", "api-only", None)
    section = parse(got.body.decode()).one("section", "label")
    assert "seen in generations only" in section.one("p", "empty").words()
    assert section.one("tr", data_version="3").one("td", data_field="generations").text() == "1"
    index = parse(pages.index("default").body.decode())
    assert [r.attrs["data-prompt"] for r in index.all("tr", "prompt")] == ["api-only", "moved"]
    assert pages.prompt("default", "", None).status == 404


def test_redis_unreachable_shows_this_relays_view_and_says_so() -> None:
    from tests.relays import free_port

    rollouts = Rollouts(RolloutsConfig(webhook_secrets={"default": "lf-whsec_" + "ab" * 32}),
                        redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    try:
        rollouts.observer.add_move(("default", "p", "production"), 2, T0)
        pages = PromptPages(rollouts, lambda req: "default", render_prompt)
        for got in (pages.prompt("default", "p", None), pages.index("default")):
            assert got.status == 200
            assert got.headers["X-Promptstamp-Partial"] == "redis unreachable: this relay's view only"
            assert "Redis could not be read" in parse(got.body.decode()).one("p", "partial").words()
    finally:
        rollouts.close()
