"""The pytest plugin (entry point ``pytest11``: ``promptstamp``): two fixtures.

``promptstamp_replay``: a callable ``(*paths_or_lines, config=None) -> ReplayResult``.
``promptstamp_relay``: a started :class:`~promptstamp.testing.LiveRelay`, stopped after the
test. Its relay config comes from the ``promptstamp_relay_config`` fixture (``None`` here;
override it in a ``conftest.py`` to return a mapping shaped like the YAML file, or a path).

Without the plugin (``-p no:promptstamp``), import the fixtures into a ``conftest.py``:
``from promptstamp.testing import promptstamp_relay, promptstamp_replay``.

Importing this module costs pytest start-up nothing beyond pytest itself: the relay and the
OTLP protobuf modules are imported when a fixture is first used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from promptstamp.testing._relay import LiveRelay
    from promptstamp.testing._replay import ReplayResult

__all__ = ["promptstamp_relay", "promptstamp_relay_config", "promptstamp_replay"]


@pytest.fixture
def promptstamp_replay() -> Callable[..., ReplayResult]:
    """Run recordings through the relay's processor: ``promptstamp_replay("rec.jsonl")``."""
    from promptstamp.testing._replay import replay

    return replay


@pytest.fixture
def promptstamp_relay_config() -> Any:
    """The config of ``promptstamp_relay`` (override to change it): None = the defaults."""
    return None


@pytest.fixture
def promptstamp_relay(request: pytest.FixtureRequest) -> Iterator[LiveRelay]:
    """A live relay on free loopback ports in front of a loopback Langfuse; stopped after the test."""
    from promptstamp.testing._relay import LiveRelay

    try:  # optional: a conftest that imports only this fixture has no config fixture
        config = request.getfixturevalue("promptstamp_relay_config")
    except pytest.FixtureLookupError:
        config = None
    with LiveRelay(config) as relay:
        yield relay
