"""``docs/other-languages.md``: the Go and Java snippets use only the contract's names and write
the version as an integer. Go modules and Maven artifacts cannot be fetched here, so the
snippets are not compiled; this checks what a compiler would not: every ``app.prompt.*`` /
``promptstamp.*`` / ``prompt.*`` name, span name, event name and source value they spell is one
``promptstamp_contract`` defines, every §1–2 name is used, and the version is an int type
(``attribute.Int64`` in Go, ``AttributeKey.longKey`` in Java), never a string."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import promptstamp_contract as contract

DOC = Path(__file__).resolve().parents[2] / "docs" / "other-languages.md"
TEXT = DOC.read_text(encoding="utf-8")

NAMES = {value for name, value in vars(contract).items() if name.isupper() and isinstance(value, str)}
SOURCES = {contract.SOURCE_LANGFUSE, contract.SOURCE_CACHE, contract.SOURCE_FALLBACK, contract.SOURCE_UNAVAILABLE}
# Every name an app must write for §1-2 (the span event's and the fetch span's, the scope span's).
REQUIRED = {
    contract.PROMPT_KEY,
    contract.PROMPT_LABEL,
    contract.PROMPT_VERSION,
    contract.FETCH_SOURCE,
    contract.FETCH_ERROR_TYPE,
    contract.FETCH_EVENT_NAME,
    contract.FETCH_SPAN_NAME,
    contract.SCOPE_SPAN_NAME,
}
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
CONTRACT_LIKE = re.compile(r"^(app\.prompt|promptstamp\.|prompt\.)")


def blocks(language: str) -> str:
    found = re.findall(rf"```{language}\n(.*?)```", TEXT, flags=re.DOTALL)
    assert found, f"no {language} snippet in {DOC.name}"
    return "\n".join(found)


@pytest.mark.parametrize("language", ["go", "java"])
def test_every_name_in_the_snippets_is_a_contract_name(language: str) -> None:
    code = blocks(language)
    literals = set(STRING.findall(code))
    spelled = {s for s in literals if CONTRACT_LIKE.match(s)}
    assert spelled - NAMES == set(), f"{language}: names the contract does not define"
    assert REQUIRED - spelled == set(), f"{language}: contract names the snippet never writes"


def test_span_and_event_names_and_source_values() -> None:
    go, java = blocks("go"), blocks("java")
    spans = re.findall(r'tracer\.Start\(\w+, "([^"]+)"', go) + re.findall(r'spanBuilder\("([^"]+)"\)', java)
    assert sorted(set(spans)) == sorted({contract.FETCH_SPAN_NAME, contract.SCOPE_SPAN_NAME})
    events = re.findall(r'AddEvent\("([^"]+)"', go) + re.findall(r'addEvent\("([^"]+)"', java)
    assert events == [contract.FETCH_EVENT_NAME, contract.FETCH_EVENT_NAME]
    sources = re.findall(rf'attribute\.String\("{re.escape(contract.FETCH_SOURCE)}", "([^"]+)"\)', go)
    sources += re.findall(r'setAttribute\(SOURCE, "([^"]+)"\)', java)
    sources += re.findall(r'p\.Source != "([^"]+)"', go)
    assert sources and set(sources) <= SOURCES


def test_the_version_is_written_as_an_integer() -> None:
    go, java = blocks("go"), blocks("java")
    version = re.escape(contract.PROMPT_VERSION)
    assert re.search(rf'attribute\.Int64\("{version}"', go)
    assert not re.search(rf'attribute\.(String|Float64|Bool)\w*\("{version}"', go)
    assert re.search(rf'AttributeKey<Long> VERSION = AttributeKey\.longKey\("{version}"\)', java)
    assert not re.search(rf'AttributeKey\.(stringKey|doubleKey|booleanKey)\("{version}"\)', java)
    assert re.search(r"a\.put\(VERSION, [^;]*\.longValue\(\)\);", java)
    # the Java attribute keys the snippet declares are all contract names
    keys = dict(re.findall(r'AttributeKey<\w+> (\w+) = AttributeKey\.\w+Key\("([^"]+)"\)', java))
    assert set(keys.values()) <= NAMES and keys["VERSION"] == contract.PROMPT_VERSION


def test_the_baggage_entries_are_the_two_contract_entries() -> None:
    go, java = blocks("go"), blocks("java")
    go_members = set(re.findall(r'baggage\.NewMemberRaw\("([^"]+)"', go))
    java_entries = set(re.findall(r'\.put\("([^"]+)", (?:key|label)\)', java))
    assert go_members == java_entries == {contract.PROMPT_KEY, contract.PROMPT_LABEL}
