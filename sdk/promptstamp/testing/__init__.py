"""Test utilities shipped with promptstamp: loopback fakes of Langfuse and OpenAI, and capture
helpers. Standard-library HTTP only; every server binds 127.0.0.1 on a free port.

    from promptstamp.testing import LangfuseServer, FakeOpenAI

    with LangfuseServer() as langfuse, FakeOpenAI() as openai_fake:
        langfuse.create_prompt("greet", [{"role": "system", "content": "Hi {{name}}"}],
                               labels=["production"])
        ...

``LangfuseServer``'s OTLP ingest path needs ``opentelemetry-proto`` (the ``relay`` extra).

The real ``langfuse`` client keeps one state (base URL, prompt cache) per public key for the
whole process: call ``reset_langfuse_clients()`` between tests that start new servers with the
same keys, or give each server its own ``public_key``.
"""

from __future__ import annotations

from promptstamp.testing._capture import CaptureLogExporter
from promptstamp.testing._langfuse import (
    IngestRequest,
    LangfuseServer,
    Observation,
    PromptRequest,
    RejectedObservation,
    reset_langfuse_clients,
)
from promptstamp.testing._openai import FakeOpenAI, OpenAIRequest

__all__ = [
    "CaptureLogExporter",
    "FakeOpenAI",
    "IngestRequest",
    "LangfuseServer",
    "Observation",
    "OpenAIRequest",
    "PromptRequest",
    "RejectedObservation",
    "reset_langfuse_clients",
]
