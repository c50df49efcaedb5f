"""promptstamp: every LLM generation in a Langfuse trace says which prompt version produced it.

The app-side SDK. Two lines change in an app::

    promptstamp.install()                      # once, after the app's OpenTelemetry set-up

    with promptstamp.prompt("order-status-answer", label="production") as p:
        messages = p.compile(query=query, region=region)
        ...                                    # the model call: its spans carry the prompt

Inside the block the prompt's key and label are W3C baggage (``app.prompt.key``,
``app.prompt.label``), copied onto every span by a span processor, and each prompt handed out
records its version on a short ``promptstamp.fetch`` span of its own (an ``app.prompt.fetch``
event) and, with a Logs SDK, as an ``app.prompt.fetch`` log record; the promptstamp relay stamps
Langfuse's prompt link from the two. A handle re-entered (``with p:``) puts the prompt back in
scope around a later model call without fetching again. Runtime
fallback policy (details in ``sdk/README.md`` and ``docs/fetch-policy.md``):

* timeout, connection error, 5xx: the last known good copy, for at most ``max_stale_seconds``
  (default 300 s), ``source="cache"``, recorded on the span and in the fetch log;
* nothing cached, or too old: ``PromptUnavailableError`` (or the app's explicit ``fallback=``,
  ``source="fallback"``, no version, never linked);
* 404 (no such prompt or label): ``PromptNotFoundError``, fail closed — never ``latest``, a
  cached copy or the fallback;
* a missing template variable: ``compile()`` raises ``PromptVariableError`` before any model call.

``label_for(subject_id, weights, salt)`` splits traffic between labels for A/B tests.
``configure()`` sets up OTLP export for apps that have no OpenTelemetry yet, then installs.
``should_export_span`` is the span filter for apps that trace with the Langfuse SDK.
"""

from ._configure import configure
from ._context import PromptScope, prompt
from ._errors import PromptError, PromptNotFoundError, PromptUnavailableError, PromptVariableError
from ._export_filter import should_export_span
from ._handle import ChatPrompt, TextPrompt
from ._install import install
from ._split import label_for
from ._version import VERSION as __version__

__all__ = [
    "ChatPrompt",
    "PromptError",
    "PromptNotFoundError",
    "PromptScope",
    "PromptUnavailableError",
    "PromptVariableError",
    "TextPrompt",
    "__version__",
    "configure",
    "install",
    "label_for",
    "prompt",
    "should_export_span",
]

# Show the public names as ``promptstamp.X`` (reprs, tracebacks, docs, pickling), as httpx does:
# where they are defined is an implementation detail.
for _name in __all__:
    if not _name.startswith("__"):
        globals()[_name].__module__ = "promptstamp"
del _name
