"""Regenerate the derived samples in this folder from ``../recordings/openllmetry.jsonl``.

    python tests/replay/samples/make_samples.py

Deterministic: the same recording gives byte-identical files (gzip without a name or time).
The ``otlp-proto-*.json`` files are copies of upstream files, not made here (SOURCES.md).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RECORDING = HERE.parent / "recordings" / "openllmetry.jsonl"


def _with_unknown_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """Fields no OTLP version has, at every level a newer writer could add one."""
    doc["futureRequestField"] = {"added": "by a newer writer"}
    for top, scopes, items in (("resourceSpans", "scopeSpans", "spans"), ("resourceLogs", "scopeLogs", "logRecords")):
        for r in doc.get(top, []):
            r["futureResourceGroupField"] = 1
            r.setdefault("resource", {})["futureResourceField"] = [1, 2, 3]
            for s in r.get(scopes, []):
                s.setdefault("scope", {})["futureScopeField"] = True
                for item in s.get(items, []):
                    item["futureItemField"] = {"nested": [{"deep": None}]}
                    for kv in item.get("attributes", []):
                        kv["futureKeyValueField"] = "x"
                        kv["value"]["futureAnyValueField"] = 0
                    for ev in item.get("events", []):
                        ev["futureEventField"] = "y"
    return doc


def main() -> None:
    lines = RECORDING.read_text(encoding="utf-8").splitlines()
    # The Collector's file exporter writes one signal per file: a traces file and a logs file.
    (HERE / "split-traces.jsonl").write_text(
        "".join(ln + "\n" for ln in lines if ln.startswith('{"resourceSpans"')), encoding="utf-8")
    (HERE / "split-logs.jsonl").write_text(
        "".join(ln + "\n" for ln in lines if ln.startswith('{"resourceLogs"')), encoding="utf-8")
    data = RECORDING.read_bytes()
    (HERE / "openllmetry.jsonl.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    unknown = [json.dumps(_with_unknown_fields(json.loads(ln)), separators=(",", ":")) for ln in lines]
    (HERE / "unknown-fields.jsonl").write_text("".join(u + "\n" for u in unknown), encoding="utf-8")


if __name__ == "__main__":
    main()
