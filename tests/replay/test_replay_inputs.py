"""``replay`` on the inputs real tools write: the opentelemetry-proto examples, the Collector's
one-signal-per-file output, gzip and zstd, unknown fields, stdin; and how it fails and exits.

Samples and where they came from: ``samples/SOURCES.md``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import promptstamp_contract as c
from promptstamp_relay.cli import main
from promptstamp_relay.wire.otlpjson import read_documents
from tests.otlp_builders import attrs_of, line_spans

HERE = Path(__file__).parent
SAMPLES = HERE / "samples"
RECORDING = HERE / "recordings" / "openllmetry.jsonl"
GOLDEN = HERE / "golden" / "openllmetry.jsonl"
PROTO_EXAMPLES = ["trace", "logs", "events", "metrics"]


def replay(*args: str, expect: int = 0) -> None:
    assert main(["replay", *args]) == expect


def out_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def stamped_tiers(lines: list[str]) -> list[str]:
    return sorted(str(a[c.LF_META_RESOLUTION]) for a in map(attrs_of, line_spans(lines)) if c.LF_META_RESOLUTION in a)


def compact(path: Path) -> str:
    return json.dumps(json.loads(path.read_text(encoding="utf-8")), separators=(",", ":"))


# -- the opentelemetry-proto examples -----------------------------------------------------------

@pytest.mark.parametrize("name", PROTO_EXAMPLES)
def test_each_opentelemetry_proto_example_replays_as_published(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    replay(str(SAMPLES / f"otlp-proto-{name}.json"), "-o", str(out))
    lines = out_lines(out)
    if name == "metrics":
        assert lines == [compact(SAMPLES / "otlp-proto-metrics.json")]  # passed through
    elif name == "trace":
        (line,) = lines
        span = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert span["traceId"] == "5b8efff798038103d269b633813fc60c"  # the example's, in lower case
        assert span["name"] == "I'm a server span"
        assert [a["key"] for a in span["attributes"]] == ["my.span.attr"]  # nothing added
    else:
        assert lines == []  # logs that are not fetch records are not part of replay's output


def test_the_examples_as_the_collector_writes_them_one_line_each(tmp_path: Path) -> None:
    """The Collector's file exporter writes each request on one line; metrics lines come out
    byte for byte as they went in."""
    src = tmp_path / "collector.jsonl"
    src.write_text("".join(compact(SAMPLES / f"otlp-proto-{n}.json") + "\n" for n in PROTO_EXAMPLES))
    out = tmp_path / "out.jsonl"
    replay(str(src), "-o", str(out))
    lines = out_lines(out)
    assert compact(SAMPLES / "otlp-proto-metrics.json") in lines
    assert [json.loads(ln).keys() for ln in lines] == [{"resourceSpans"}, {"resourceMetrics"}]  # file order kept


def test_fields_no_otlp_version_has_are_ignored(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    replay(str(SAMPLES / "unknown-fields.jsonl"), "-o", str(out))
    assert out.read_bytes() == GOLDEN.read_bytes()


# -- several files ------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [("traces", "logs"), ("logs", "traces")])
def test_a_split_traces_and_logs_pair_is_merged_and_links_as_one_recording(
    order: tuple[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    replay(*(str(SAMPLES / f"split-{o}.jsonl") for o in order), "-o", str(out))
    assert stamped_tiers(out_lines(out)) == ["instance", "trace", "trace", "trace"]
    assert stamped_tiers(out_lines(GOLDEN)) == ["instance", "trace", "trace", "trace"]


def test_merge_orders_by_each_lines_largest_timestamp_and_keeps_ties_in_argument_order(tmp_path: Path) -> None:
    trace, metrics = SAMPLES / "otlp-proto-trace.json", SAMPLES / "otlp-proto-metrics.json"
    twin = tmp_path / "metrics-twin.json"  # same timestamps as metrics.json, another name
    twin.write_text(metrics.read_text().replace("my.counter", "my.other.counter"))
    out = tmp_path / "out.jsonl"
    # trace.json ends at ...661 s, the metrics points are at ...660.3 s: metrics first.
    replay(str(trace), str(metrics), str(twin), "-o", str(out))
    first = out_lines(out)
    assert [next(iter(json.loads(ln))) for ln in first] == ["resourceMetrics", "resourceMetrics", "resourceSpans"]
    assert "my.counter" in first[0] and "my.other.counter" in first[1]
    replay(str(twin), str(metrics), str(trace), "-o", str(out))
    again = out_lines(out)
    assert "my.other.counter" in again[0] and "my.counter" in again[1]  # the tie follows the order given


def test_each_file_keeps_its_own_line_order(tmp_path: Path) -> None:
    """Merging interleaves files; it never sorts one file's lines (they are arrival order)."""
    docs = list(read_documents(RECORDING.read_text().splitlines()))
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_text("".join(d.text + "\n" for d in reversed(docs)))
    out1, out2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    replay(str(reversed_file), "-o", str(out1))
    replay(str(reversed_file), str(SAMPLES / "otlp-proto-events.json"), "-o", str(out2))
    assert out1.read_bytes() == out2.read_bytes()


# -- compression and stdin ----------------------------------------------------------------------

def test_a_gzipped_recording(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    replay(str(SAMPLES / "openllmetry.jsonl.gz"), "-o", str(out))
    assert out.read_bytes() == GOLDEN.read_bytes()


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    src = tmp_path / "recording.jsonl"  # gzip inside, whatever the name says
    src.write_bytes(gzip.compress(RECORDING.read_bytes()))
    out = tmp_path / "out.jsonl"
    replay(str(src), "-o", str(out))
    assert out.read_bytes() == GOLDEN.read_bytes()


def test_a_zstd_stream_as_the_file_exporters_native_compression_writes(tmp_path: Path) -> None:
    src = tmp_path / "recording.jsonl.zst"
    cctx = zstandard.ZstdCompressor()
    lines = RECORDING.read_bytes().splitlines(keepends=True)
    # Two frames (the exporter closes a frame at each flush): read across them.
    src.write_bytes(cctx.compress(b"".join(lines[:5])) + cctx.compress(b"".join(lines[5:])))
    out = tmp_path / "out.jsonl"
    replay(str(src), "-o", str(out))
    assert out.read_bytes() == GOLDEN.read_bytes()


@pytest.mark.parametrize("content_size", [True, False])
def test_zstd_frames_behind_length_prefixes_as_the_file_exporter_writes_by_default(
    content_size: bool, tmp_path: Path
) -> None:
    """``compression: zstd`` without the native-compression gate: each request compressed on
    its own, preceded by its length as a big-endian uint32 (fileexporter's file_writer.go)."""
    cctx = zstandard.ZstdCompressor(write_content_size=content_size)
    framed = b""
    for line in RECORDING.read_bytes().splitlines():
        frame = cctx.compress(line)
        framed += struct.pack(">I", len(frame)) + frame
    src = tmp_path / "traces.zst"
    src.write_bytes(framed)
    out = tmp_path / "out.jsonl"
    replay(str(src), "-o", str(out))
    assert out.read_bytes() == GOLDEN.read_bytes()


def test_zstd_without_the_zstandard_package_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "recording.jsonl.zst"
    src.write_bytes(zstandard.ZstdCompressor().compress(RECORDING.read_bytes()))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as in a build without it
    replay(str(src), "-o", str(tmp_path / "out.jsonl"), expect=3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(src) in err and "'zstandard'" in err and "pip install" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_gzip_in_a_python_without_zlib_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "recording.jsonl.gz"
    src.write_bytes(gzip.compress(RECORDING.read_bytes()))
    monkeypatch.setitem(sys.modules, "gzip", None)  # as in a build whose gzip cannot be imported
    replay(str(src), "-o", str(tmp_path / "out.jsonl"), expect=3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(src) in err and "gzip-compressed" in err and "gunzip" in err


def test_a_corrupt_gzip_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "broken.jsonl.gz"
    src.write_bytes(gzip.compress(RECORDING.read_bytes())[:200])
    replay(str(src), "-o", str(tmp_path / "out.jsonl"), expect=3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(src) in err and "gzip" in err


def test_the_collectors_proto_format_is_one_line_saying_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = ExportTraceServiceRequest()
    payload.resource_spans.add().scope_spans.add().spans.add(name="x")
    data = payload.SerializeToString()
    src = tmp_path / "traces.pb"
    src.write_bytes(struct.pack(">I", len(data)) + data)  # format: proto, length-prefixed
    replay(str(src), "-o", str(tmp_path / "out.jsonl"), expect=3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not OTLP/JSON" in err and "format: proto" in err


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(RECORDING.read_bytes() + b'{"resourceSpans": [], "x": "caf\xe9"}\n')
    replay(str(src), "-o", str(tmp_path / "out.jsonl"), expect=3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 15: not UTF-8" in err


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]


@pytest.mark.parametrize("compress", [False, True])
def test_stdin(compress: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = RECORDING.read_bytes()
    monkeypatch.setattr(sys, "stdin", _Stdin(gzip.compress(data) if compress else data))
    out = tmp_path / "out.jsonl"
    replay("-", "-o", str(out))
    assert out.read_bytes() == GOLDEN.read_bytes()


def test_stdin_merged_with_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _Stdin((SAMPLES / "split-logs.jsonl").read_bytes()))
    out = tmp_path / "out.jsonl"
    replay(str(SAMPLES / "split-traces.jsonl"), "-", "-o", str(out))
    assert stamped_tiers(out_lines(out)) == ["instance", "trace", "trace", "trace"]


# -- pretty-printed documents and where errors are ----------------------------------------------

def test_a_truncated_pretty_printed_document_names_the_line_it_starts_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (SAMPLES / "otlp-proto-trace.json").read_text()
    src = tmp_path / "cut.json"
    src.write_text(compact(SAMPLES / "otlp-proto-logs.json") + "\n" + text[: len(text) // 2])
    replay(str(src), "-o", str(tmp_path / "out.jsonl"), expect=3)
    assert f"{src}: line 2: not JSON: the input ends inside the document" in capsys.readouterr().err


def test_an_error_inside_a_pretty_printed_document_names_its_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (SAMPLES / "otlp-proto-trace.json").read_text().splitlines()
    bad = next(i for i, ln in enumerate(lines) if '"name": "I\'m a server span"' in ln)
    lines[bad] = lines[bad].replace('"name":', '"name" ')  # missing colon
    src = tmp_path / "bad.json"
    src.write_text("\n".join(["", *lines]) + "\n")  # a blank first line: numbers are the file's
    replay(str(src), "-o", str(tmp_path / "out.jsonl"), expect=3)
    column = lines[bad].index('"I\'m') + 1  # where the ':' was expected
    assert f"line {bad + 2}, column {column}: not JSON: Expecting ':' delimiter" in capsys.readouterr().err


# -- output --------------------------------------------------------------------------------------

def test_a_failed_run_leaves_no_partial_output_and_an_earlier_one_untouched(tmp_path: Path) -> None:
    src = tmp_path / "bad-at-the-end.jsonl"
    src.write_text(RECORDING.read_text() + "{not json\n")
    out = tmp_path / "out.jsonl"
    out.write_text("earlier output\n")
    replay(str(src), "-o", str(out), expect=3)
    assert out.read_text() == "earlier output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-at-the-end.jsonl", "out.jsonl"]  # no temp file left


def test_output_into_a_missing_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no-such-dir" / "out.jsonl"
    replay(str(RECORDING), "-o", str(target), expect=3)
    err = capsys.readouterr().err
    assert err == f"promptstamp-relay: cannot write {target}: the directory {target.parent} does not exist\n"


def test_a_closed_stdout_ends_quietly_with_exit_0(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written, like `| head -0`
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "promptstamp_relay.cli", "replay", str(RECORDING)],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr


# -- config, --check, --summary, help ------------------------------------------------------------

def test_a_serve_config_with_the_langfuse_exporter_and_no_keys_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("LANGFUSE_BASE_URL", "LANGFUSE_HOST", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "relay.yaml"
    cfg.write_text("exporter:\n  type: langfuse\n  langfuse:\n    base_url: https://cloud.langfuse.com\n"
                   "tls:\n  cert_file: /etc/promptstamp/tls/relay.crt\n  key_file: /etc/promptstamp/tls/relay.key\n"
                   "hold:\n  seconds: 2.0\n")
    out = tmp_path / "out.jsonl"
    replay(str(RECORDING), "--config", str(cfg), "-o", str(out))
    assert out.read_bytes() == GOLDEN.read_bytes()


def _with_string_version(tmp_path: Path) -> tuple[Path, int]:
    """The recording with its first fetch record's version as a string ("1"): invalid."""
    lines = RECORDING.read_text().splitlines()
    n = next(i for i, ln in enumerate(lines) if ln.startswith('{"resourceLogs"'))
    lines[n] = lines[n].replace('{"key":"app.prompt.version","value":{"intValue":"1"}}',
                                '{"key":"app.prompt.version","value":{"stringValue":"1"}}', 1)
    assert '"stringValue":"1"' in lines[n]
    src = tmp_path / "string-version.jsonl"
    src.write_text("\n".join(lines) + "\n")
    return src, n + 1


def test_check_fails_on_an_invalid_fetch_record_and_the_generation_it_leaves_unresolved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, line = _with_string_version(tmp_path)
    replay(str(src), "--check", "-o", str(tmp_path / "out.jsonl"), expect=1)
    err = capsys.readouterr().err
    assert f"{src}:{line}: app.prompt.version must be an int" in err
    assert "generations: 4 (" in err and "unresolved 1" in err
    unresolved = [ln for ln in err.splitlines() if ln.startswith("  trace ")]
    assert len(unresolved) == 1 and "key 'order-status-answer' label 'production'" in unresolved[0]
    assert unresolved[0].endswith(("no fetch record for this key and label in the trace or tenant",
                                   "the hold window ended before its fetch record arrived"))
    assert err.rstrip().endswith("check: FAILED (1 unresolved, 1 invalid fetch records)")


def test_check_passes_on_a_recording_that_links_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replay(str(RECORDING), "--check", "-o", str(tmp_path / "out.jsonl"))
    err = capsys.readouterr().err
    assert "generations: 4 (trace 3, instance 1)" in err and err.rstrip().endswith("check: OK")


def test_summary_reports_the_same_without_failing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, line = _with_string_version(tmp_path)
    replay(str(src), "--summary", "-o", str(tmp_path / "out.jsonl"))
    err = capsys.readouterr().err
    assert f"{src}:{line}:" in err and "check: FAILED" in err


def test_help_lists_exit_codes_and_explains_hold_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes:" in text
    for code in ("0 done", "1 --check", "2 invalid configuration", "3 an input cannot be read"):
        assert code in text
    assert "--hold-seconds S how long a generation without a fetch record in its trace waits" in text
