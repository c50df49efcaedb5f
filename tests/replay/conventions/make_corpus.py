"""Write the conventions corpus: one OTLP/JSON-lines recording per prompt-link convention and per
way a claim fails (``python -m tests.replay.conventions.make_corpus``). Built with the test
builders from the attribute shapes each source writes (see core/conventions.py for where each
shape was read), so every case is exactly one question; the goldens beside them are the relay's
replay output (``PROMPTSTAMP_UPDATE_GOLDEN=1 pytest tests/replay/test_conventions_corpus.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptstamp_relay.wire.otlpjson import encode_line
from tests.otlp_builders import T0, S, fetch_span, span, traces

HERE = Path(__file__).parent
MODEL = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"}
TEMPLATE = "You answer questions about order {order}."
#: the relay config the corpus is replayed with
CONFIG: dict[str, Any] = {"conventions": {"openinference_prompts": {"p-123": "order-status-answer",
                                                                    TEMPLATE: "order-status-answer"}}}

CASES: dict[str, dict[str, Any]] = {
    "gen_ai": {"gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": "3"},
    "traceloop": {"traceloop.prompt.managed": True, "traceloop.prompt.key": "order-status-answer",
                  "traceloop.prompt.version": "3"},
    "langfuse_baggage": {"langfuse_prompt_name": "order-status-answer", "langfuse_prompt_version": "3"},
    "openinference_prompt_id": {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
                                "prompt.id": "p-123", "llm.prompt_template.version": "3"},
    "openinference_template": {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
                               "llm.prompt_template.template": TEMPLATE, "llm.prompt_template.version": "3"},
    "version_hash": {"gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": "9f2c1ab"},
    "version_v1": {"traceloop.prompt.key": "order-status-answer", "traceloop.prompt.version": "v1"},
    "not_mapped": {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
                   "prompt.id": "p-999", "llm.prompt_template.version": "3"},
}


def main() -> None:
    for name, claim in CASES.items():
        attrs = claim if "openinference.span.kind" in claim else {**MODEL, **claim}
        lines = [encode_line(traces([span(trace=1, start=T0 + S, attrs=attrs)]))]
        (HERE / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    # The trace's own fetch record says 5: it decides, and the claim's 3 is recorded as a conflict.
    lines = [encode_line(traces([fetch_span(version=5, trace=1, time=T0)])),
             encode_line(traces([span(trace=1, start=T0 + S, attrs={**MODEL, **CASES["gen_ai"]})]))]
    (HERE / "record_decides.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
