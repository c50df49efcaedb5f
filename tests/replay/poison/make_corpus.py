"""Write the poison corpus: one OTLP/JSON-lines recording per way a span makes Langfuse's
observation type mapper throw, which loses every span of the export request it is in
(``python -m tests.replay.poison.make_corpus``). Each recording is one request: the app's fetch
span, a generation it links, and the poison span beside them (none of the first two for
``passthrough``: an app that does not use promptstamp). The goldens beside them are the relay's
replay output (``PROMPTSTAMP_UPDATE_GOLDEN=1 pytest tests/replay/test_poison_corpus.py``): a
defusable span with the type Langfuse gives it otherwise added, an undefusable one on a line (an
export request) of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptstamp_relay.wire.otlpjson import encode_line
from tests.otlp_builders import T0, S, fetch_span, gen_attrs, span, traces

HERE = Path(__file__).parent

#: case -> (the poison span's attributes, the type Langfuse gives it once the relay is done, or
#: None when it must travel alone and is lost there)
CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    # A tool, a span: the relay may write only ``generation`` (contract §3), so they travel alone.
    "gen_ai_operation_name": ({"gen_ai.operation.name": "constructor", "gen_ai.tool.name": "lookup_order"}, None),
    "openinference_span_kind": ({"openinference.span.kind": "valueOf", "llm.model_name": "gpt-4o-mini"},
                                "GENERATION"),
    "genkit_subtype": ({"genkit:metadata:subtype": "__proto__"}, None),
    "ai_sdk_operation_not_a_string": ({"operation.name": 3, "ai.model.id": "gpt-4o-mini"}, None),
    "poison_generation_with_a_prompt_key": (gen_attrs(**{"gen_ai.operation.name": "toString"}), "GENERATION"),
    "observation_type": ({"langfuse.observation.type": "__proto__", "gen_ai.request.model": "gpt-4o-mini"}, None),
    "unknown_type_then_poison": ({"langfuse.observation.type": "GENERATION",
                                  "gen_ai.operation.name": "hasOwnProperty"}, None),
    "passthrough": ({"gen_ai.operation.name": "toLocaleString", "gen_ai.request.model": "gpt-4o-mini"},
                    "GENERATION"),
}


def main() -> None:
    for name, (attrs, _) in CASES.items():
        poisoned = span("poisoned", trace=1, span_id=3, start=T0 + S, attrs=attrs)
        if name == "passthrough":
            spans = [span("GET /orders", trace=1, span_id=1, start=T0, attrs={"http.method": "GET"}), poisoned]
        else:
            spans = [fetch_span(version=3, trace=1, time=T0),
                     span("chat gpt-4o", trace=1, span_id=2, start=T0 + S, attrs=gen_attrs()), poisoned]
        (HERE / f"{name}.jsonl").write_text(encode_line(traces(spans)) + "\n")


if __name__ == "__main__":
    main()
