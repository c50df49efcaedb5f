"""The prompt pages on the admin listener (``metrics_listen``): what the label timeline looks like.

- ``GET /prompts``: the prompts this relay has seen for the caller's tenant: labels with their
  current version, generations, lagging instances, and the unresolved share;
- ``GET /prompts/{name}`` (``?label=`` for one label): per label, the timeline (a lane per
  instance: which version it handed out, from its first to its last hand-out; the label's moves
  and each version's first hand-out marked; lagging instances outlined and said in words) and
  the versions side by side (error rate, p50/p95 duration, tokens per generation, each over the
  window the version served), with the exact numbers in tables.

Server-rendered HTML with inline SVG (``ops/_svg.py``): no JavaScript, no external resource,
served with a Content-Security-Policy that allows neither. Every name from spans is escaped.

Where the numbers come from: the same reads and the same function as the timeline API
(``Rollouts.timelines`` and ``render_prompt``, handed in by the component, since ``ops`` sits
below ``rollouts``: the numbers of ``labels show --json``); the
lanes draw the same timelines' per-instance intervals. The unresolved share is the one
``/metrics`` exports (``promptstamp_generations_total{version="none"}``): this relay's own
count since it started, since unresolved generations stay off the timeline.

Mounted by ``rollouts/component.py`` next to the timeline API, with its authentication and
tenant isolation: another tenant's prompt is a 404, like one that does not exist. Browsers are
asked for Basic credentials (the tenant's Langfuse public key / secret key); a ``Bearer`` token
in the ``Authorization`` header works as it does for the API.

Threads: listener threads call the route; reads take the rollouts locks only to copy.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._svg import Bar, Lane, Mark, Style, bar_chart, esc, styles_for, swatch, timeline_svg
from .figures import change_line, error_rate, ms, per_generation
from .listener import HttpRequest, HttpResponse, MetricsListener

if TYPE_CHECKING:  # ops is below rollouts: the component hands itself and its render function in
    from ..rollouts._model import Timeline
    from ..rollouts.component import Rollouts

__all__ = ["PAGES_PREFIX", "PromptPages"]

PAGES_PREFIX = "/prompts"
#: The index reads each prompt's timelines (a Redis round trip each with a shared store).
MAX_INDEX = 200
_HTML = "text/html; charset=utf-8"
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_FOLDED = ("other", "other", "other")  # prompt, version, label of series past rollouts.max_series

TenantOf = Callable[[HttpRequest], "str | HttpResponse"]
#: ``rollouts._plans.PlanReader.plan``: (tenant, prompt, label) -> the guarded rollout's plan in
#: force (a dict), None, or ``{"error": ...}``.
PlanOf = Callable[[str, str, str], "dict[str, Any] | None"]
#: ``rollouts._model.render_prompt``: (prompt, timelines by label, with_moves=) -> the API's body.
RenderPrompt = Callable[..., dict[str, Any]]


class PromptPages:
    """The two pages over one relay's rollouts component."""

    def __init__(self, rollouts: Rollouts, tenant_of: TenantOf, render_prompt: RenderPrompt, *,
                 clock: Callable[[], int] = time.time_ns, plan_of: PlanOf | None = None) -> None:
        self._rollouts = rollouts
        self._plan_of = plan_of
        self._tenant_of = tenant_of
        self._render = render_prompt
        self._clock = clock

    def register(self, listener: MetricsListener) -> None:
        listener.route("GET", PAGES_PREFIX, self._route)

    # -- HTTP ---------------------------------------------------------------------------------------
    def _route(self, req: HttpRequest) -> HttpResponse:
        tenant = self._tenant_of(req)
        if isinstance(tenant, HttpResponse):
            return _page(tenant.status, "sign in", "<h1>Credentials needed</h1><p>These pages take the "
                         "relay's receiver credentials: the tenant's Langfuse public key as user name and "
                         "secret key as password, or an <code>Authorization: Bearer</code> token.</p>",
                         {"WWW-Authenticate": 'Basic realm="promptstamp", charset="UTF-8"'})
        rest = req.path[len(PAGES_PREFIX):]
        if rest in ("", "/"):
            return self.index(tenant)
        labels = req.query.get("label")
        return self.prompt(tenant, rest[1:], labels[-1] if labels else None)

    # -- reads ------------------------------------------------------------------------------------
    def _read(self, tenant: str, name: str) -> tuple[dict[str, Timeline], dict[str, Any], bool]:
        """The timelines of ``name`` by label and the timeline API's body of them (the same read and
        the same function as ``Rollouts.render``), and whether they are complete."""
        timelines, complete = self._rollouts.timelines(tenant, name)
        body = self._render(name, timelines, with_moves=self._rollouts.with_moves)
        return timelines, body, complete

    def _generation_counts(self, tenant: str) -> dict[tuple[str, str], tuple[float, float]]:
        """(prompt, label) -> (generations, unresolved ones), as ``/metrics`` exports them now."""
        out: dict[tuple[str, str], tuple[float, float]] = {}
        for family in self._rollouts.observer.collector().collect():
            if family.name != "promptstamp_generations":
                continue
            for s in family.samples:
                lb = s.labels
                if lb.get("tenant") != tenant or (lb["prompt"], lb["version"], lb["label"]) == _FOLDED:
                    continue
                key = (lb["prompt"], lb["label"])
                total, none = out.get(key, (0.0, 0.0))
                out[key] = (total + s.value, none + (s.value if lb["version"] == "none" else 0.0))
        return out

    def _prompt_names(self, tenant: str, counts: Mapping[tuple[str, str], object]) -> list[str]:
        observer = self._rollouts.observer
        with observer.lock:
            names = {p for (t, p, _label) in observer.timelines if t == tenant}
        names.update(p for p, _label in counts)
        return sorted(names)

    # -- /prompts ---------------------------------------------------------------------------------
    def index(self, tenant: str) -> HttpResponse:
        counts = self._generation_counts(tenant)
        names = self._prompt_names(tenant, counts)
        rows, partial = [], False
        for name in names[:MAX_INDEX]:
            _, body, complete = self._read(tenant, name)
            partial = partial or not complete
            labels = body["labels"]
            total = sum(t for (p, _), (t, _n) in counts.items() if p == name)
            none = sum(n for (p, _), (_t, n) in counts.items() if p == name)
            current = "".join(
                f'<li data-label="{esc(label)}"><span class="name">{esc(label)}</span> → '
                f'<b>{_version(tl["current"])}</b></li>' for label, tl in labels.items())
            current += "".join(  # labels with unresolved generations only: on /metrics, not on the timeline
                f'<li data-label="{esc(label)}"><span class="name">{esc(label)}</span> → unresolved only</li>'
                for (p, label) in sorted(counts) if p == name and label not in labels)
            generations = sum(v["generations"] for tl in labels.values() for v in tl["versions"])
            lagging = sum(len(tl["lagging"]) for tl in labels.values())
            rows.append(
                f'<tr class="prompt" data-prompt="{esc(name)}">'
                f'<td><a class="name" href="{PAGES_PREFIX}/{esc(quote(name, safe=""))}">{esc(name)}</a></td>'
                f'<td><ul class="labels">{current}</ul></td>'
                f'<td class="num" data-field="generations">{generations}</td>'
                f'<td class="num" data-field="lagging">{lagging or "–"}</td>'
                f'<td class="num" data-field="unresolved">{esc(_share(none, total))}</td></tr>')
        more = (f"<p>Showing the first {MAX_INDEX} of {len(names)} prompts (by name); open "
                f"<code>{PAGES_PREFIX}/NAME</code> for any other.</p>" if len(names) > MAX_INDEX else "")
        table = (
            '<table class="index"><thead><tr><th>prompt</th><th>labels → current version</th>'
            '<th>generations<br><small>timeline</small></th><th>lagging<br><small>instances</small></th>'
            '<th>unresolved<br><small>this relay, since start</small></th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>' if rows else
            "<p>No prompt seen yet: no fetch record or generation in the retention window.</p>")
        main = (f"<h1>Prompts</h1>{_partial_note(partial)}"
                '<p class="lede">What this relay has seen for tenant '
                f'<span class="name">{esc(tenant)}</span>. '
                "Generations and lagging instances come from the label timeline (the numbers of "
                "<code>promptstamp-relay labels show</code>); the unresolved share from "
                "<code>/metrics</code> (<code>promptstamp_generations_total{version=\"none\"}</code>).</p>"
                f"{more}{table}")
        return _page(200, "prompts", main, _partial_header(partial))

    # -- /prompts/{name} --------------------------------------------------------------------------
    def prompt(self, tenant: str, name: str, label: str | None) -> HttpResponse:
        timelines, body, complete = self._read(tenant, name)
        labels: dict[str, Any] = body["labels"]
        if label is not None:
            labels = {k: v for k, v in labels.items() if k == label}
        if not name or not labels:
            what = f"prompt {name!r}" + (f" with label {label!r}" if label is not None else "")
            days = self._rollouts.cfg.retention_days
            return _page(404, "not found", f"<h1>Nothing known</h1><p>No timeline for {esc(what)}: no fetch "
                         f"record or generation seen in the last {days:g} days.</p>"
                         f'<p><a href="{PAGES_PREFIX}">All prompts</a></p>')
        counts = self._generation_counts(tenant)
        q = esc(quote(name, safe=""))
        styles = styles_for([v["version"] for tl in labels.values() for v in tl["versions"]]
                            + [m["version"] for tl in labels.values() for m in tl.get("moves", [])])
        sections = [self._label_section(k, name, label_name, labels[label_name], timelines[label_name],
                                        styles, counts.get((name, label_name), (0.0, 0.0)),
                                        self._plan_of(tenant, name, label_name) if self._plan_of else None)
                    for k, label_name in enumerate(labels)]
        api = f"/api/v1/prompts/{q}/timeline"
        only = "".join(f'<a href="{PAGES_PREFIX}/{q}?label={esc(quote(lb, safe=""))}">{esc(lb)}</a> '
                       for lb in body["labels"])
        main = (f'<p class="nav"><a href="{PAGES_PREFIX}">All prompts</a> · the same numbers as JSON: '
                f'<a href="{api}">{esc(api)}</a> · one label: {only}</p>'
                f'<h1>Prompt <span class="name" id="prompt-name">{esc(name)}</span></h1>'
                f"{_partial_note(not complete)}"
                f'<p class="lede">As of {esc(_utc(self._clock()))}. Times are UTC.</p>'
                + "".join(sections))
        return _page(200, f"prompt {name}", main, _partial_header(not complete))

    def _label_section(self, k: int, prompt: str, label: str, tl: Mapping[str, Any], timeline: Timeline,
                       styles: Mapping[int, Style], counts: tuple[float, float],
                       plan: Mapping[str, Any] | None = None) -> str:
        scope = f"l{k}"
        label_styles = {v["version"]: styles[v["version"]] for v in tl["versions"]}
        lagging = {i["instance"]: i for i in tl["lagging"]}
        lanes = []
        for inst in tl["instances"]:
            bars = [Bar(v, s.first_ns, s.last_ns, s.fetches)
                    for (i, v), s in timeline.served.items() if i == inst["instance"]]
            lag = lagging.get(inst["instance"])
            lanes.append(Lane(inst["instance"], inst["service"], inst["version"], bars,
                              None if lag is None else float(lag["behind_seconds"])))
        marks = [Mark("first", v["version"], _ns(v["first_served"]), f"v{v['version']} first served")
                 for v in tl["versions"] if v["first_served"]]
        marks += [Mark("move", m["version"], _ns(m["at"]), f"label → v{m['version']} (Langfuse)")
                  for m in tl.get("moves", [])]
        for st in {m.version: styles[m.version] for m in marks if m.version not in label_styles}.values():
            label_styles[st.version] = st  # a move to a version not served yet
        title = f"{prompt}, label {label}: which version each instance handed out over time"
        if lanes:
            lane_svg = timeline_svg(scope, lanes, marks, label_styles, title=title)
        else:
            lane_svg = ('<p class="empty">No hand-out recorded under this label'
                        + ("; the versions below were seen in generations only (the api tier answered them)"
                           if tl["versions"] else "") + ".</p>")
            lane_svg += "".join(f'<p class="move">Label moved to v{m["version"]} at {esc(m["at"])} '
                                "(Langfuse).</p>" for m in tl.get("moves", []))
        legend = "".join(f'<li>{swatch(st, f"{scope}-sw{st.version}")} v{st.version}</li>'
                         for st in label_styles.values())
        legend += ('<li><span class="key move"></span> label moved (Langfuse webhook)</li>'
                   '<li><span class="key first"></span> a version\'s first hand-out</li>'
                   '<li><span class="key lag"></span> lagging instance</li>')
        lag_text = ("; ".join(f'<span class="name">{esc(i["instance"])}</span> still on v{i["version"]}, '
                              f'{i["behind_seconds"]:.1f} s behind' for i in tl["lagging"])
                    if tl["lagging"] else "none")
        total, none = counts
        charts = self._charts(scope, prompt, label, tl, label_styles)
        return (
            f'<section class="label" data-label="{esc(label)}">'
            f'<h2>Label <span class="name">{esc(label)}</span> · current '
            f'<b class="current">{_version(tl["current"])}</b></h2>'
            f'<p class="summary">Lagging instances: <span class="lagging-list">{lag_text}</span>. '
            f'Unresolved generations (this relay, since start): {esc(_share(none, total))}.</p>'
            f"{_rollout_panel(plan)}"
            "<h3>Which version each instance handed out</h3>"
            f'<figure class="lanes">{lane_svg}'
            f'<figcaption><ul class="legend">{legend}</ul></figcaption></figure>'
            "<h3>The versions side by side</h3>"
            "<p>Each over the window the version served under this label (first to last hand-out or "
            "generation).</p>"
            f'<div class="charts">{charts}</div>'
            f"{_versions_table(tl)}{_changes(tl)}{_instances_table(tl)}</section>")

    @staticmethod
    def _charts(scope: str, prompt: str, label: str, tl: Mapping[str, Any],
                styles: Mapping[int, Style]) -> str:
        versions = tl["versions"]
        specs: list[tuple[str, str, Callable[[Mapping[str, Any]], float | None], Callable[[float], str]]] = [
            ("error_rate", "error rate", error_rate, lambda r: f"{r * 100:.1f} %"),
            ("duration_p50_ms", "p50 duration", lambda v: v["duration_p50_ms"], lambda x: f"{x:.0f} ms"),
            ("duration_p95_ms", "p95 duration", lambda v: v["duration_p95_ms"], lambda x: f"{x:.0f} ms"),
            ("input_per_generation", "input tokens / generation", lambda v: per_generation(v, "input_tokens"),
             lambda x: f"{x:.0f}"),
            ("output_per_generation", "output tokens / generation",
             lambda v: per_generation(v, "output_tokens"),
             lambda x: f"{x:.0f}"),
        ]
        out = []
        for i, (metric, title, get, fmt) in enumerate(specs):
            rows: list[tuple[int, float | None, str]] = []
            for v in versions:
                value = get(v)
                rows.append((v["version"], value, "–" if value is None else fmt(value)))
            out.append(bar_chart(f"{scope}-c{i}", title, rows, styles, metric=metric))
        return "".join(out)


# -- formatting: as ``labels show`` and ``labels compare`` print them -----------------------------
def _share(none: float, total: float) -> str:
    if not total:
        return "–"
    return f"{none / total * 100:.1f} % ({none:.0f} of {total:.0f})"


def _version(v: int | None) -> str:
    return "none yet" if v is None else f"v{v}"


def _ns(text: str) -> int:
    """A time as the timeline body writes it (``2026-12-01T09:00:00.250Z``), in ns."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _versions_table(tl: Mapping[str, Any]) -> str:
    head = ["version", "first served", "last served", "fetches", "generations", "errors", "error rate",
            "p50 ms", "p95 ms", "input tokens", "output tokens", "input tok/gen", "output tok/gen"]
    fields = ["version", "first_served", "last_served", "fetches", "generations", "errors", "error_rate",
              "duration_p50_ms", "duration_p95_ms", "input_tokens", "output_tokens", "input_per_generation",
              "output_per_generation"]
    rows = []
    for v in tl["versions"]:
        rate, tin, tout = error_rate(v), per_generation(v, "input_tokens"), per_generation(v, "output_tokens")
        cells = [f"v{v['version']}", v["first_served"] or "-", v["last_served"] or "-", str(v["fetches"]),
                 str(v["generations"]), str(v["errors"]), "-" if rate is None else f"{rate * 100:.1f} %",
                 ms(v["duration_p50_ms"]), ms(v["duration_p95_ms"]), str(v["input_tokens"]),
                 str(v["output_tokens"]), "-" if tin is None else f"{tin:.0f}",
                 "-" if tout is None else f"{tout:.0f}"]
        current = ' class="current"' if v["version"] == tl["current"] else ""
        rows.append(f'<tr data-version="{v["version"]}"{current}>'
                    + "".join(f'<td data-field="{f}">{esc(c)}</td>'
                              for f, c in zip(fields, cells, strict=True))
                    + "</tr>")
    return ('<div class="scroll"><table class="versions"><thead><tr>'
            + "".join(f"<th>{h}</th>" for h in head)
            + f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _changes(tl: Mapping[str, Any]) -> str:
    lines = [change_line(a, b) for a, b in itertools.pairwise(tl["versions"])]
    if not lines:
        return ""
    return ("<p>Change from each version to the next:</p><ul class=\"changes\">"
            + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>")


def _instances_table(tl: Mapping[str, Any]) -> str:
    lagging = {i["instance"]: i for i in tl["lagging"]}
    rows = []
    for i in tl["instances"]:
        lag = lagging.get(i["instance"])
        state = "-" if lag is None else f"LAGGING, {lag['behind_seconds']:.1f} s behind"
        cls = ' class="lagging"' if lag else ""
        rows.append(f'<tr data-instance="{esc(i["instance"])}"{cls}>'
                    f'<td class="name">{esc(i["instance"])}</td><td>{esc(i["service"] or "-")}</td>'
                    f'<td>v{i["version"]}</td><td>{esc(i["last_served"])}</td><td>{esc(state)}</td></tr>')
    return ("<h3>Instances (last hand-out)</h3><table class=\"instances\"><thead><tr><th>instance</th>"
            "<th>service</th><th>version</th><th>last served</th><th>lagging</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _rollout_panel(plan: Mapping[str, Any] | None) -> str:
    """The guarded rollout under this label (``labels rollout``), as its plan in Langfuse says."""
    if plan is None:
        return ""
    if "error" in plan and "state" not in plan:
        return ('<p class="rollout" data-state="unknown">Guarded rollout: the plan could not be read '
                f"({esc(str(plan['error']))}).</p>")
    steps = [s for s in (plan.get("steps") or []) if isinstance(s, (int, float))]
    step = int(plan.get("step") or 0)
    event = plan.get("event") or {}
    state = esc(str(plan.get("state")))
    old, new = esc(str(plan.get("from_version"))), esc(str(plan.get("to_version")))
    share = float(plan.get("share_percent") or 0)
    items = []
    for i, s in enumerate(steps):
        cls = "done" if i < step else "now" if i == step else "next"
        items.append(f'<li class="{cls}">{s:g} %</li>')
    rows = []
    for r in (event.get("judgement") or {}).get("results") or []:
        verdict = "BREACHED" if r.get("breached") else ("ok" if r.get("enough_data") else "not enough data")
        p = r.get("p_value")
        cells = [str(r.get("guard")), verdict, str(r.get("old")), str(r.get("new")),
                 "-" if p is None else f"{p:.3g}", str(r.get("test"))]
        tds = "".join(f"<td>{esc(c)}</td>" for c in cells)
        rows.append(f'<tr data-guard="{esc(cells[0])}">{tds}</tr>')
    judged = ""
    if rows:
        judged = ('<table class="guards"><thead><tr><th>guard</th><th>verdict</th><th>old</th><th>new</th>'
                  f"<th>p-value</th><th>test</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    reason = f'<p class="reason">{esc(str(event["reason"]))}</p>' if event.get("reason") else ""
    who = (f"Started by {esc(str(plan.get('started_by')))} at {esc(str(plan.get('started_at')))}; last: "
           f"{esc(str(event.get('what')))} at {esc(str(event.get('at')))} by {esc(str(event.get('by')))} "
           f"(plan version {esc(str(plan.get('plan_version')))}).")
    return (f'<div class="rollout" data-state="{state}"><h3>Guarded rollout: v{old} → v{new}, '
            f"<b>{state}</b>, {share:g} % on v{new}</h3>"
            f'<ol class="steps">{"".join(items)}</ol>'
            f"<p>{who} Every change is a version of the plan prompt in Langfuse; "
            "<code>labels rollout --status</code> prints them.</p>"
            f"{reason}{judged}</div>")


def _partial_note(partial: bool) -> str:
    return ('<p class="partial" role="status"><b>Partial:</b> Redis could not be read; this relay\'s own '
            "view is shown.</p>" if partial else "")


def _partial_header(partial: bool) -> dict[str, str]:
    return {"X-Promptstamp-Partial": "redis unreachable: this relay's view only"} if partial else {}


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:1.5rem auto;
max-width:1100px;padding:0 1rem;color:#111;background:#fff}
h1{font-size:1.5rem;margin:.4rem 0}h2{font-size:1.25rem;margin:2rem 0 .3rem;border-top:2px solid #000;
padding-top:.6rem}h3{font-size:1.05rem;margin:1.2rem 0 .3rem}
.name{font-family:ui-monospace,"DejaVu Sans Mono",monospace;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.5rem 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #bbb;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right}tr.current td{font-weight:600}
.scroll{overflow-x:auto}table.versions{font-size:13px}table.versions td{white-space:nowrap}
tr.lagging td{background:#fff4e5;font-weight:600}
ul.labels{margin:0;padding-left:1rem}.charts{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem}
figure{margin:0}ul.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.3rem 1.2rem}
ul.legend li{display:flex;align-items:center;gap:.35rem}
.key{display:inline-block;width:26px;height:0;border-top:3px solid #000}.key.first{border-top:2px dashed #000}
.key.lag{height:12px;border:2px dashed #000;background:#fff4e5}
svg text{font-family:system-ui,"DejaVu Sans",sans-serif;font-size:12px;fill:#111}
svg .inst{font-weight:600;font-size:13px}svg .sub,svg .tick{font-size:11px;fill:#333}
svg .vtag{font-weight:700;paint-order:stroke;stroke:#fff;stroke-width:3px}
svg .lagtext{font-weight:700}svg .marktext{font-size:11px;font-weight:600}
svg .charttitle{font-weight:600;font-size:13px}
.partial{background:#fff4e5;border:2px dashed #000;padding:.4rem .6rem}.nav a{margin-right:.3rem}
.rollout{border:2px solid #000;padding:.2rem .8rem;margin:.6rem 0}
.rollout[data-state=breached]{border-style:dashed;background:#fff4e5}
ol.steps{list-style:none;display:flex;gap:.4rem;padding:0}ol.steps li{border:1px solid #000;padding:0 .5rem}
ol.steps li.done{background:#ddd}ol.steps li.now{font-weight:700;border-width:3px}
"""


def _page(status: int, title: str, main: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
           f'content="width=device-width,initial-scale=1"><title>{esc(title)} · promptstamp relay</title>'
           f"<style>{_CSS}</style></head><body><main>{main}</main></body></html>\n")
    return HttpResponse(status, doc.encode("utf-8"), _HTML, {**_HEADERS, **(headers or {})})
