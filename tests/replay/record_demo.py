"""Record the demo app (``promptstamp-relay demo``) the way ``serve --record FILE`` records.

    python -m tests.replay.record_demo tests/replay/recordings/demo.jsonl

The demo's relay runs with ``record`` set (the setting ``serve --record`` sets): every request it
receives is appended to FILE as OTLP/JSON lines, in arrival order. The demo checks that each of
its five generations arrived linked; this script fails when it did not, so a recording is only
written from a good run. ``docs/testing.md`` uses the result (``tests/replay/test_docs_example.py``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def record(out_path: Path) -> int:
    from promptstamp_relay.demo import run as demo

    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp) / "recording.jsonl"
        result = demo.run(relay_overrides={"record": str(rec)})
        if result.status != 0:
            print("the demo failed; no recording written", file=sys.stderr)
            return 1
        out_path.write_bytes(rec.read_bytes())
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    raise SystemExit(record(Path(sys.argv[1])))
