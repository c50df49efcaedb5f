"""A metric is one field: every stats field declared with ``counters.metric`` is exported by the
collector with no other code, and every series the collector exports comes from such a field or
from the short list of series computed from several sources (held spans, queue depth…)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily

from promptstamp_relay.counters import Counters, exported, metric
from promptstamp_relay.ops import telemetry


@dataclass
class _Stats(Counters):
    widgets: int = metric("Widgets made")
    by_colour: dict[str, int] = metric("Widgets by colour", name="widgets_coloured", label="colour",
                                       values=("red",))
    internal: int = 0


def test_a_new_field_is_a_new_series() -> None:
    stats = _Stats()
    stats.add(widgets=3, internal=9)
    stats.by_colour["blue"] = 2
    families = list(telemetry._families(stats))  # the collector's own builder
    by_name = {f.name: f for f in families}
    assert set(by_name) == {"promptstamp_widgets", "promptstamp_widgets_coloured"}
    assert isinstance(by_name["promptstamp_widgets"], CounterMetricFamily)
    assert by_name["promptstamp_widgets"].samples[0].value == 3
    coloured = {s.labels["colour"]: s.value for s in by_name["promptstamp_widgets_coloured"].samples}
    assert coloured == {"red": 0, "blue": 2}  # declared values always shown
    assert [m.name for m, _ in exported(stats)] == ["widgets", "widgets_coloured"]
