"""The README's Layout section names every package of the relay and every module at its top,
and names nothing that is not there (a moved or new part fails here until the README says so)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELAY = ROOT / "processor" / "promptstamp_relay"


def _layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Layout", 1)[1].split("\n## ", 1)[0]


def test_every_package_and_top_level_module_is_in_the_layout() -> None:
    block = _layout().split("processor/promptstamp_relay/", 1)[1].split("collector-config/", 1)[0]
    named = set(re.findall(r"(?:^|\s)([a-z_]+/?(?:\.py)?)(?=\s)", block))
    packages = {p.name + "/" for p in RELAY.iterdir() if (p / "__init__.py").exists()}
    modules = {p.name for p in RELAY.glob("*.py") if p.name != "__init__.py"}
    missing = sorted((packages | modules) - named)
    assert not missing, f"not in the README's Layout: {missing}"
    stale = sorted(n for n in named if (n.endswith("/") or n.endswith(".py")) and n.count("/") <= 1
                   and n not in packages | modules and not (RELAY / n.rstrip("/")).exists()
                   and not any((RELAY / pkg.rstrip("/") / n).exists() for pkg in packages))
    assert not stale, f"in the README's Layout but not in the tree: {stale}"
