"""Inline SVG for the prompt pages (``ops/pages.py``): the label timeline's lanes and the versions'
small bar charts. Plain strings, no JavaScript, no fonts of its own.

Every text and attribute value goes through :func:`esc` (``html.escape`` with quotes): prompt
names, labels and instance ids come from span attributes and are attacker-controlled. Element
ids are made from counters and version numbers (ints), never from names.

Versions are told apart by colour (the Okabe-Ito palette, safe for the common colour-vision
deficiencies) *and* by a fill pattern *and* by a written ``vN`` next to every bar, so no reading
depends on colour alone.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = [
    "OKABE_ITO",
    "Bar",
    "Lane",
    "Mark",
    "Style",
    "bar_chart",
    "esc",
    "styles_for",
    "swatch",
    "timeline_svg",
]

#: Okabe & Ito (2008), without black (kept for text and marks).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
#: Fill patterns drawn over the colour: a second cue that survives grey-scale printing.
PATTERNS = ("solid", "diagonal", "dots", "cross", "vertical")


def esc(value: object) -> str:
    """``value`` as text safe inside an element or a double-quoted attribute."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Style:
    """How one version is drawn: a colour, a pattern and its written name."""

    version: int
    colour: str
    pattern: str

    def fill(self, scope: str) -> str:
        return f"url(#{scope}-v{self.version})" if self.pattern != "solid" else self.colour


def styles_for(versions: Iterable[int]) -> dict[int, Style]:
    """A style per version, in ascending version order (the same version: the same style on every
    chart of a page). Colour and pattern cycle with different periods (7 and 5)."""
    return {v: Style(v, OKABE_ITO[i % len(OKABE_ITO)], PATTERNS[i % len(PATTERNS)])
            for i, v in enumerate(sorted(set(versions)))}


def _pattern_defs(scope: str, styles: Iterable[Style]) -> str:
    out = []
    for s in styles:
        if s.pattern == "solid":
            continue
        pid = f"{scope}-v{s.version}"
        marks = {
            "diagonal": '<path d="M-2,2 l4,-4 M0,8 l8,-8 M6,10 l4,-4" stroke="#000" stroke-width="1.3"/>',
            "dots": '<circle cx="4" cy="4" r="1.6" fill="#000"/>',
            "cross": '<path d="M0,4 h8 M4,0 v8" stroke="#000" stroke-width="1"/>',
            "vertical": '<path d="M4,0 v8" stroke="#000" stroke-width="1.4"/>',
        }[s.pattern]
        out.append(f'<pattern id="{pid}" width="8" height="8" patternUnits="userSpaceOnUse">'
                   f'<rect width="8" height="8" fill="{s.colour}"/>{marks}</pattern>')
    return "<defs>" + "".join(out) + "</defs>" if out else ""


def swatch(style: Style, scope: str) -> str:
    """A small legend square for ``style`` (its own SVG, with its pattern)."""
    return (f'<svg class="swatch" width="22" height="14" viewBox="0 0 22 14" aria-hidden="true">'
            f'{_pattern_defs(scope, [style])}<rect x="0.5" y="0.5" width="21" height="13" '
            f'fill="{style.fill(scope)}" stroke="#000"/></svg>')


# -- the timeline ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    """One instance handing out one version: from its first to its last hand-out."""

    version: int
    first_ns: int
    last_ns: int
    fetches: int


@dataclass
class Lane:
    instance: str
    service: str
    version_now: int
    bars: list[Bar] = field(default_factory=list)
    lagging_seconds: float | None = None  # None: not lagging


@dataclass(frozen=True)
class Mark:
    """A vertical line across the lanes: ``kind`` ``move`` (a Langfuse webhook: the label was
    moved to ``version``) or ``first`` (the version's first hand-out under the label)."""

    kind: str
    version: int
    at_ns: int
    text: str


_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
            86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)


def _ticks(t0: int, t1: int, most: int = 8) -> tuple[int, list[int]]:
    """(step in s, tick times in ns) for the range [t0, t1] (ns)."""
    span_s = max(1.0, (t1 - t0) / 1e9)
    step = next((s for s in _STEPS_S if span_s / s <= most), _STEPS_S[-1])
    first = math.ceil(t0 / (step * 10**9)) * step * 10**9
    return step, list(range(first, t1 + 1, step * 10**9))


def _tick_text(ns: int, step_s: int, long_range: bool) -> str:
    dt = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    if long_range:
        return dt.strftime("%m-%d %H:%M")
    return dt.strftime("%H:%M:%S" if step_s < 60 else "%H:%M")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def timeline_svg(scope: str, lanes: Sequence[Lane], marks: Sequence[Mark], styles: Mapping[int, Style],
                 *, title: str, width: int = 1000) -> str:
    """The label's lanes: one per instance, a bar per version it handed out, marks for the
    label's moves, lagging lanes outlined and said in words."""
    times = [t for lane in lanes for b in lane.bars for t in (b.first_ns, b.last_ns)]
    times += [m.at_ns for m in marks]
    if not times:
        return ""
    t0, t1 = min(times), max(times)
    if t1 - t0 < 10**9:
        t0, t1 = t0 - 30 * 10**9, t1 + 30 * 10**9
    pad = (t1 - t0) // 40
    t0, t1 = t0 - pad, t1 + pad
    left, right, lane_h, gap = 230, 30, 34, 10
    top = 26 + 16 * _mark_rows(marks)
    plot_w = width - left - right
    height = top + len(lanes) * (lane_h + gap) + 34

    def x(ns: int) -> float:
        return left + (ns - t0) / (t1 - t0) * plot_w

    out = [f'<svg class="timeline" role="img" viewBox="0 0 {width} {height}" width="100%" '
           f'preserveAspectRatio="xMinYMin meet" aria-labelledby="{scope}-title" '
           f'xmlns="http://www.w3.org/2000/svg">',
           f'<title id="{scope}-title">{esc(title)}</title>',
           _pattern_defs(scope, styles.values())]
    # time axis
    step, ticks = _ticks(t0, t1)
    long_range = (t1 - t0) > 86400 * 10**9
    axis_y = top + len(lanes) * (lane_h + gap)
    out.append(f'<g class="axis"><line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" '
               'stroke="#000"/>')
    for t in ticks:
        tx = x(t)
        out.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{axis_y + 4}" stroke="#ddd"/>'
                   f'<text x="{tx:.1f}" y="{axis_y + 18}" text-anchor="middle" class="tick">'
                   f'{esc(_tick_text(t, step, long_range))}</text>')
    out.append(f'<text x="{left + plot_w}" y="{axis_y + 32}" text-anchor="end" class="tick">'
               'UTC</text></g>')
    # lanes
    for i, lane in enumerate(lanes):
        y = top + i * (lane_h + gap)
        lag = lane.lagging_seconds is not None
        cls = "lane lagging" if lag else "lane"
        out.append(f'<g class="{cls}" data-instance="{esc(lane.instance)}" data-version="{lane.version_now}"'
                   f' data-lagging="{"true" if lag else "false"}">')
        tip = lane.instance + (f" ({lane.service})" if lane.service else "")
        tip += f": now v{lane.version_now}"
        if lag:
            tip += f"; lagging, {lane.lagging_seconds:.1f} s behind"
            out.append(f'<rect x="2" y="{y - 3}" width="{width - 4}" height="{lane_h + 6}" fill="#fff4e5" '
                       'stroke="#000" stroke-width="2" stroke-dasharray="6 3" class="lag-box"/>')
        out.append(f'<title>{esc(tip)}</title>')
        out.append(f'<text x="10" y="{y + 14}" class="inst">{esc(_clip(lane.instance, 26))}</text>')
        sub = f"now v{lane.version_now}" + (f" · {lane.service}" if lane.service else "")
        out.append(f'<text x="10" y="{y + 28}" class="sub">{esc(_clip(sub, 34))}</text>')
        if lag:
            out.append(f'<text x="{width - 8}" y="{y + 13}" text-anchor="end" class="lagtext">'
                       f'LAGGING: still v{lane.version_now}, {lane.lagging_seconds:.1f} s behind</text>')
        for b in sorted(lane.bars, key=lambda b: (b.first_ns, b.version)):
            bx, bw = x(b.first_ns), max(4.0, x(b.last_ns) - x(b.first_ns))
            st = styles[b.version]
            out.append(f'<g class="served" data-version="{b.version}" data-fetches="{b.fetches}">'
                       f'<title>{esc(lane.instance)}: v{b.version}, {b.fetches} hand-outs</title>'
                       f'<rect x="{bx:.1f}" y="{y + 16}" width="{bw:.1f}" height="{lane_h - 18}" '
                       f'fill="{st.fill(scope)}" stroke="#000" stroke-width="0.8"/>'
                       f'<text x="{min(bx + 3, width - 40):.1f}" y="{y + 12}" class="vtag">'
                       f'v{b.version}</text></g>')
        out.append("</g>")
    # marks, over the lanes; their texts staggered in rows above
    for j, m in enumerate(sorted(marks, key=lambda m: (m.at_ns, m.kind))):
        mx = x(m.at_ns)
        row = j % _mark_rows(marks)
        dash = "" if m.kind == "move" else ' stroke-dasharray="4 3"'
        width_px = 2.5 if m.kind == "move" else 1.3
        anchor = "end" if mx > left + plot_w * 0.7 else "start"
        dx = -3 if anchor == "end" else 3
        out.append(f'<g class="mark {m.kind}" data-version="{m.version}">'
                   f'<line x1="{mx:.1f}" y1="{12 + row * 16}" x2="{mx:.1f}" y2="{axis_y}" stroke="#000" '
                   f'stroke-width="{width_px}"{dash}/>'
                   f'<text x="{mx + dx:.1f}" y="{16 + row * 16}" text-anchor="{anchor}" class="marktext">'
                   f'{esc(m.text)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _mark_rows(marks: Sequence[Mark]) -> int:
    return max(1, min(4, len(marks)))


# -- the versions side by side --------------------------------------------------------------------
def bar_chart(scope: str, title: str, rows: Sequence[tuple[int, float | None, str]],
              styles: Mapping[int, Style], *, metric: str, width: int = 330) -> str:
    """A horizontal bar per version: ``rows`` = (version, value or None, value as written)."""
    row_h, top, left, right = 24, 26, 46, 86
    height = top + len(rows) * row_h + 6
    values = [v for _, v, _ in rows if v is not None]
    top_value = max(values) if values else 0.0
    plot_w = width - left - right
    out = [f'<svg class="chart" data-metric="{esc(metric)}" role="img" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" aria-labelledby="{scope}-title" '
           'xmlns="http://www.w3.org/2000/svg">',
           f'<title id="{scope}-title">{esc(title)}</title>',
           _pattern_defs(scope, styles.values()),
           f'<text x="0" y="16" class="charttitle">{esc(title)}</text>',
           f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{height - 4}" stroke="#000"/>']
    for i, (version, value, written) in enumerate(rows):
        y = top + i * row_h
        w = 0.0 if value is None or top_value <= 0 else value / top_value * plot_w
        out.append(f'<g class="bar" data-version="{version}">'
                   f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" class="vtag">v{version}</text>')
        if value is not None:
            out.append(f'<rect x="{left}" y="{y + 3}" width="{max(w, 1.5):.1f}" height="{row_h - 8}" '
                       f'fill="{styles[version].fill(scope)}" stroke="#000" stroke-width="0.8"/>')
        out.append(f'<text x="{left + max(w, 1.5) + 5:.1f}" y="{y + 15}" class="value">'
                   f'{esc(written)}</text></g>')
    out.append("</svg>")
    return "".join(out)
