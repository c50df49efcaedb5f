"""Test utilities shipped with promptstamp: loopback fakes of Langfuse, OpenAI and Anthropic,
capture helpers, replay of recordings, a live relay for an app under test, a pytest plugin, and
``DevStack`` (all of them wired together: ``promptstamp-relay dev``).
Standard-library HTTP only; every server binds 127.0.0.1 on a free port.

    from promptstamp.testing import LangfuseServer, FakeOpenAI

    with LangfuseServer() as langfuse, FakeOpenAI() as openai_fake:
        langfuse.create_prompt("greet", [{"role": "system", "content": "Hi {{name}}"}],
                               labels=["production"])
        ...

Checking that every generation is linked (docs/testing.md):

    def test_recording_links(promptstamp_replay):          # fixtures of the pytest plugin
        assert_all_linked(promptstamp_replay("recording.jsonl"), tier="trace")

The fixtures ``promptstamp_replay`` and ``promptstamp_relay`` come with the pytest plugin
(registered when promptstamp is installed); without it, import them into a ``conftest.py``.
Which parts need the relay (the ``relay`` extra): ``replay``, ``LiveRelay``, ``DevStack``, the
fixtures, and ``LangfuseServer``'s OTLP ingest path (it decodes protobuf). The prompts API of
``LangfuseServer``, ``FakeOpenAI``, ``FakeAnthropic``, ``CaptureLogExporter`` and
``assert_all_linked`` over a list of generations never import it: Langfuse's typing rules come
from ``promptstamp_contract``.

The fake model APIs can delay, fail or answer differently per prompt version
(``PromptBehaviours``: a request is matched to a version by its text; see ``_openai``).

Names are imported when first used: ``import promptstamp.testing`` (and so the pytest plugin)
loads neither the relay nor the fakes until a test asks for them.

The real ``langfuse`` client keeps one state (base URL, prompt cache) per public key for the
whole process: call ``reset_langfuse_clients()`` between tests that start new servers with the
same keys, or give each server its own ``public_key`` (``LiveRelay`` does).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptstamp.testing._anthropic import AnthropicRequest, FakeAnthropic
    from promptstamp.testing._assert import REASONS, assert_all_linked
    from promptstamp.testing._capture import CaptureLogExporter
    from promptstamp.testing._dev import DevConfig, DevStack, load_dev_config
    from promptstamp.testing._langfuse import (
        IngestRequest,
        LangfuseServer,
        Observation,
        PromptRequest,
        RejectedObservation,
        reset_langfuse_clients,
    )
    from promptstamp.testing._openai import Behaviour, FakeOpenAI, OpenAIRequest, PromptBehaviours
    from promptstamp.testing._plugin import promptstamp_relay, promptstamp_relay_config, promptstamp_replay
    from promptstamp.testing._relay import LiveRelay
    from promptstamp.testing._replay import Generation, ReplayResult, replay

__all__ = [
    "REASONS",
    "AnthropicRequest",
    "Behaviour",
    "CaptureLogExporter",
    "DevConfig",
    "DevStack",
    "FakeAnthropic",
    "FakeOpenAI",
    "Generation",
    "IngestRequest",
    "LangfuseServer",
    "LiveRelay",
    "Observation",
    "OpenAIRequest",
    "PromptBehaviours",
    "PromptRequest",
    "RejectedObservation",
    "ReplayResult",
    "assert_all_linked",
    "load_dev_config",
    "promptstamp_relay",
    "promptstamp_relay_config",
    "promptstamp_replay",
    "replay",
    "reset_langfuse_clients",
]

_WHERE = {
    "REASONS": "_assert",
    "assert_all_linked": "_assert",
    "AnthropicRequest": "_anthropic",
    "FakeAnthropic": "_anthropic",
    "CaptureLogExporter": "_capture",
    "DevConfig": "_dev",
    "DevStack": "_dev",
    "load_dev_config": "_dev",
    "IngestRequest": "_langfuse",
    "LangfuseServer": "_langfuse",
    "Observation": "_langfuse",
    "PromptRequest": "_langfuse",
    "RejectedObservation": "_langfuse",
    "reset_langfuse_clients": "_langfuse",
    "FakeOpenAI": "_openai",
    "OpenAIRequest": "_openai",
    "Behaviour": "_openai",
    "PromptBehaviours": "_openai",
    "promptstamp_relay": "_plugin",  # imports pytest
    "promptstamp_relay_config": "_plugin",
    "promptstamp_replay": "_plugin",
    "LiveRelay": "_relay",
    "Generation": "_replay",
    "ReplayResult": "_replay",
    "replay": "_replay",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'promptstamp.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"promptstamp.testing.{module}"), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
