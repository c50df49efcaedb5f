"""docs/contract.md is the wire contract as published with the repo; it must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_docs_contract_is_the_contract() -> None:
    shared = ROOT.parent / "shared" / "contract.md"
    if not shared.exists():
        pytest.skip("no ../shared/contract.md beside this checkout")
    assert (ROOT / "docs" / "contract.md").read_text() == shared.read_text()
