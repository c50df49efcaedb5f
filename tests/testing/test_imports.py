"""``promptstamp.testing`` and the relay: which parts need the relay, and that the others never
import it (Langfuse's typing rules live in ``promptstamp_contract``, not in the relay)."""

from __future__ import annotations

import subprocess
import sys

NO_RELAY = """
import sys
from promptstamp.testing import CaptureLogExporter, FakeOpenAI, LangfuseServer, assert_all_linked
with LangfuseServer() as lf:
    lf.create_prompt("p", "hi", type="text", labels=["production"])
    assert lf.get_prompt("p", label="production")["version"] == 1
from promptstamp.testing._langfuse import observation_type
assert observation_type({"gen_ai.operation.name": "chat"}) == "GENERATION"
loaded = sorted(m for m in sys.modules if m.startswith(("promptstamp_relay", "grpc")))
assert loaded == [], loaded
"""


def test_the_fakes_and_the_typing_rules_do_not_import_the_relay() -> None:
    proc = subprocess.run([sys.executable, "-c", NO_RELAY], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
