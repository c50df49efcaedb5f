"""The relay's pages in a real browser (headless Chromium): a relay received a scripted rollout
(two versions, a label move, a lagging instance, tests/ops/scripted.py) and a person opens
``/prompts`` and ``/prompts/{name}``: what the browser built from the page (``--dump-dom``)
shows the lanes, the marks, the lagging instance and the numbers of the timeline API; the
console stays empty; a screenshot is saved; a hostile prompt name is text, never markup.

``PROMPTSTAMP_DOCS_IMG=DIR`` also writes the screenshots to ``DIR`` (docs/img holds the ones
docs/rollouts.md shows).
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import Node, chromium_or_skip, load, screenshot
from .scripted import HOSTILE_INSTANCE, HOSTILE_LABEL, HOSTILE_PROMPT, PROMPT, Driver, hostile, relay, rollout

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def rolled_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Driver, dict[str, Any]]]:
    chromium_or_skip()
    with relay(tmp_path_factory.mktemp("browser")) as d:
        body = rollout(d)
        hostile(d)
        yield d, body


def keep(png: Path, name: str) -> None:
    where = os.environ.get("PROMPTSTAMP_DOCS_IMG")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, Path(where) / name)


def test_the_console_check_sees_errors(tmp_path: Path) -> None:
    """The check below ("no console errors") is not vacuous: a page that logs and throws is caught."""
    chromium_or_skip()
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><p id=x>hi</p><script>console.error('boom'); nosuch();</script>")
    got = load(bad.as_uri(), tmp_path / "profile")
    assert got.dom.one(id="x").text() == "hi"
    assert any("boom" in m for m in got.console) and any("nosuch is not defined" in m for m in got.console)


def test_a_person_sees_the_rollout(rolled_out: tuple[Driver, dict[str, Any]], tmp_path: Path) -> None:
    d, body = rolled_out
    url = f"{d.url}/prompts/{PROMPT}"
    got = load(url, tmp_path / "profile")
    assert got.console == []
    dom = got.dom
    assert dom.one(id="prompt-name").text() == PROMPT
    prod = dom.one("section", "label", data_label="production")
    tl = body["labels"]["production"]
    assert prod.one("h2").words() == f"Label production · current v{tl['current']}" == "Label production · current v14"
    # The lanes: one per instance, the lagging one outlined and said in words.
    lanes = {g.attrs["data-instance"]: g for g in prod.all("g", "lane")}
    assert set(lanes) == {"pod-a", "pod-b", "pod-c"}
    lagging = [k for k, g in lanes.items() if "lagging" in g.attrs["class"].split()]
    assert lagging == ["pod-b"] == [i["instance"] for i in tl["lagging"]]
    behind = tl["lagging"][0]["behind_seconds"]
    assert f"LAGGING: still v13, {behind:.1f} s behind" in lanes["pod-b"].words()
    assert "pod-b still on v13" in prod.one("span", "lagging-list").words()
    for name, g in lanes.items():
        assert g.one("text", "inst").text() == name
        assert g.one("text", "sub").words().startswith(f"now v{g.attrs['data-version']}")
    assert [t.text() for t in lanes["pod-a"].all("text", "vtag")] == ["v13", "v14"]
    assert [t.text() for t in lanes["pod-b"].all("text", "vtag")] == ["v13"]
    # The marks: the label's move (Langfuse webhook) and each version's first hand-out.
    marks = sorted(m.words() for m in prod.all("g", "mark"))
    assert marks == ["label → v14 (Langfuse)", "v13 first served", "v14 first served"]
    # The numbers: the versions table is the timeline API's (labels show --json) body.
    for row, v in zip(prod.one("table", "versions").all("tr")[1:], tl["versions"], strict=True):
        cells = {td.attrs["data-field"]: td.text() for td in row.all("td")}
        assert cells["version"] == f"v{v['version']}"
        assert (cells["generations"], cells["errors"], cells["fetches"]) == (
            str(v["generations"]), str(v["errors"]), str(v["fetches"]))
        assert cells["duration_p95_ms"] == f"{v['duration_p95_ms']:.0f}"
        assert cells["first_served"] == v["first_served"]
    charts = {c.attrs["data-metric"]: c for c in prod.all("svg", "chart")}
    v13, v14 = tl["versions"]
    for v in (v13, v14):
        bar = charts["error_rate"].one("g", "bar", data_version=str(v["version"]))
        assert bar.one("text", "value").text() == f"{v['errors'] / v['generations'] * 100:.1f} %"
        bar = charts["input_per_generation"].one("g", "bar", data_version=str(v["version"]))
        assert bar.one("text", "value").text() == f"{v['input_tokens'] / v['generations']:.0f}"
    # staging is its own section, with its own lane.
    staging = dom.one("section", "label", data_label="staging")
    assert [g.attrs["data-instance"] for g in staging.all("g", "lane")] == ["pod-s"]
    png = screenshot(url, tmp_path / "prompt-page.png", tmp_path / "profile", size=(1200, 1500))
    keep(png, "prompt-page.png")


def test_the_index_in_the_browser(rolled_out: tuple[Driver, dict[str, Any]], tmp_path: Path) -> None:
    d, _ = rolled_out
    got = load(f"{d.url}/prompts", tmp_path / "profile")
    assert got.console == []
    rows = {r.attrs["data-prompt"]: r for r in got.dom.all("tr", "prompt")}
    assert set(rows) == {PROMPT, HOSTILE_PROMPT}
    assert [li.words() for li in rows[PROMPT].all("li")] == ["production → v14", "staging → v15",
                                                            "canary → unresolved only"]
    assert rows[PROMPT].one("td", data_field="unresolved").text() == "1.7 % (1 of 59)"
    assert rows[HOSTILE_PROMPT].one("a", "name").text() == HOSTILE_PROMPT
    png = screenshot(f"{d.url}/prompts", tmp_path / "prompts.png", tmp_path / "profile", size=(1200, 420))
    keep(png, "prompts-index.png")


def test_a_hostile_prompt_name_is_text_in_the_browser(rolled_out: tuple[Driver, dict[str, Any]],
                                                      tmp_path: Path) -> None:
    d, _ = rolled_out
    got = load(f"{d.url}/prompts/{urllib.parse.quote(HOSTILE_PROMPT, safe='')}", tmp_path / "profile")
    assert got.console == []  # nothing ran, nothing was refused
    dom = got.dom
    # The browser built no element from any name: no script, no img, no b with a handler.
    assert not dom.all("script") and not dom.all("img") and not [n for n in dom.walk() if "onmouseover" in n.attrs
                                                                  or "onerror" in n.attrs]
    assert dom.one(id="prompt-name").text() == HOSTILE_PROMPT
    assert dom.one("head").one("title").text() == f"prompt {HOSTILE_PROMPT} · promptstamp relay"
    section = dom.one("section", "label")
    assert section.attrs["data-label"] == HOSTILE_LABEL
    lane = section.one("g", "lane")
    assert lane.attrs["data-instance"] == HOSTILE_INSTANCE
    assert lane.one("text", "inst").text() == HOSTILE_INSTANCE[:25] + "…"  # clipped in the lane ...
    tooltip = next(c for c in lane.children if isinstance(c, Node) and c.tag == "title")
    assert tooltip.text().startswith(HOSTILE_INSTANCE)  # ... whole in its tooltip
    screenshot(f"{d.url}/prompts/{urllib.parse.quote(HOSTILE_PROMPT, safe='')}", tmp_path / "hostile.png",
               tmp_path / "profile", size=(1200, 900))
