"""Replay recordings through the same processor as ``serve``, on a virtual clock (contract §5).

Three steps, each usable alone (the CLI's ``replay`` and ``promptstamp.testing`` use all three):

* :func:`open_input`: a path (or ``-`` for stdin) as text lines. gzip and zstd are recognised by
  their first bytes, whatever the file is called; so is the Collector ``file`` exporter's
  ``compression: zstd`` framing (each request a zstd frame behind a 4-byte big-endian length).
* :func:`merge`: several inputs as one line order (contract §5): each input keeps its own order;
  across inputs the document with the smaller largest timestamp goes first, ties in the order
  the inputs were given. One input is left exactly as it is.
* :func:`replay`: documents through a :class:`~.pipeline.Processor` with a virtual clock; stamped
  trace requests and passed-through metrics lines go to ``write``; what the processor saw comes
  back as a :class:`ReplaySummary`.

Single-threaded; the only I/O is reading inputs (``open_input``) and calling ``write``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import io
import os
import struct
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import promptstamp_contract as c
from promptstamp_contract import reasons

from ..config import Config
from ..core.model import FetchRecord, GenerationRecord
from ..core.pipeline import Processor
from ..wire.otlpjson import Document, OtlpJsonError, encode_line, read_documents

__all__ = [
    "REASONS",
    "REPLAY_OVERRIDES",
    "InputError",
    "InvalidRecord",
    "Mistyped",
    "OutsideScope",
    "ReplayObserver",
    "ReplaySummary",
    "RunResult",
    "Sourced",
    "build_replay_processor",
    "format_summary",
    "keyless_generations",
    "merge",
    "mistyped_spans",
    "one_line_summary",
    "open_input",
    "output_directory_problem",
    "outside_prompt_scope",
    "replay",
    "run_files",
    "run_inputs",
]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class InputError(Exception):
    """An input that cannot be read: the message is one line, naming the file (and line)."""


# -- reading ------------------------------------------------------------------------------------

def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        raise InputError(
            "is zstd-compressed, and this build cannot read zstd: install the 'zstandard' package "
            "(pip install zstandard, or pip install 'promptstamp[relay]')") from None
    return zstandard


def _gzip_lines(raw: IO[bytes]) -> Iterator[bytes]:
    try:
        import gzip
        import zlib
    except ImportError:  # a Python built without zlib
        raise InputError("is gzip-compressed, and this Python was built without zlib: "
                         "decompress it first (gunzip) or use a Python with zlib") from None
    try:
        yield from gzip.GzipFile(fileobj=raw)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"is not a valid gzip file: {e}") from None


def _zstd_lines(raw: IO[bytes]) -> Iterator[bytes]:
    zstandard = _zstandard()
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    try:
        yield from io.BufferedReader(reader)
    except zstandard.ZstdError as e:
        raise InputError(f"is not a valid zstd file: {e}") from None


def _framed_zstd_lines(raw: IO[bytes]) -> Iterator[bytes]:
    """The Collector's ``compression: zstd`` (without its native-compression feature gate):
    each request zstd-compressed on its own, behind its length as a 4-byte big-endian integer."""
    zstandard = _zstandard()
    n = 0
    while True:
        head = raw.read(4)
        if not head:
            return
        n += 1
        if len(head) < 4:
            raise InputError(f"frame {n}: the file ends inside a length prefix")
        (size,) = struct.unpack(">I", head)
        frame = raw.read(size)
        if len(frame) < size:
            raise InputError(f"frame {n}: the file ends inside a frame ({len(frame)} of {size} bytes)")
        try:
            # A decompressobj copes with frames whose header does not carry the content size.
            data = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
        except zstandard.ZstdError as e:
            raise InputError(f"frame {n}: not a zstd frame: {e}") from None
        yield from data.splitlines(keepends=True)


def _decoded(lines: Iterable[bytes]) -> Iterator[str]:
    """UTF-8 text lines; a line that is not UTF-8 is an error naming it."""
    for n, line in enumerate(lines, start=1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"line {n}: not UTF-8 text (OTLP/JSON is UTF-8: a binary file, or "
                             "the Collector's format: proto, which replay does not read?)") from None


@contextlib.contextmanager
def open_input(path: str, stdin: IO[bytes] | None = None) -> Iterator[Iterator[str]]:
    """The text lines of ``path`` (``-``: ``stdin``, by default the process's), decompressed.

    Raises :class:`InputError` (one line, without the file name) when it cannot be opened,
    at once, or when its content cannot be read, as the lines are consumed.
    """
    if path == "-":
        raw: IO[bytes] = stdin if stdin is not None else sys.stdin.buffer
        owned = False
    else:
        try:
            raw = open(path, "rb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror}") from None
        owned = True
    try:
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[type-var]
        head = buffered.peek(8)[:8]
        lines: Iterator[bytes]
        if head.startswith(_GZIP_MAGIC):
            lines = _gzip_lines(buffered)
        elif head.startswith(_ZSTD_MAGIC):
            lines = _zstd_lines(buffered)
        elif head[4:8] == _ZSTD_MAGIC:
            lines = _framed_zstd_lines(buffered)
        elif any(b < 0x20 and b not in b"\t\r\n" for b in head):  # control bytes: not text
            raise InputError(f"not OTLP/JSON: it starts with the bytes {head[:8].hex(' ')} (binary: "
                             "the Collector's format: proto? replay reads format: json)")
        else:
            lines = iter(buffered)
        yield _decoded(lines)
    finally:
        if owned:
            raw.close()


@dataclass(frozen=True, slots=True)
class Sourced:
    """A document and the input it came from (as named on the command line; ``-`` is stdin)."""

    source: str
    doc: Document


def _documents(source: str, lines: Iterable[str]) -> Iterator[Sourced]:
    try:
        for doc in read_documents(lines):
            yield Sourced(source, doc)
    except OtlpJsonError as e:
        raise InputError(str(e)) from None


def merge(inputs: Sequence[tuple[str, Iterable[str]]]) -> Iterator[Sourced]:
    """``(name, lines)`` inputs as one document order (contract §5). Streams: one document per
    input in memory. Errors are :class:`InputError` with ``name: `` in front."""

    def named(source: str, lines: Iterable[str]) -> Iterator[Sourced]:
        try:
            yield from _documents(source, lines)
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    streams = [named(name, lines) for name, lines in inputs]
    if len(streams) == 1:
        return streams[0]
    # heapq.merge is stable: on equal keys the earlier input's document comes first.
    return heapq.merge(*streams, key=lambda s: s.doc.max_time_ns)


# -- running ------------------------------------------------------------------------------------

class ReplayObserver:
    """Collects what the processor reports (contract of ``PipelineObserver``)."""

    def __init__(self) -> None:
        self.generations: list[GenerationRecord] = []
        self.fetch_records: list[FetchRecord] = []
        #: (tenant, key, label) of every versioned record that arrived, at any time.
        self.arrived: set[tuple[str, str, str]] = set()

    def on_fetch_records(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None:
        self.fetch_records.extend(records)
        self.arrived.update((tenant, r.key, r.label) for r in records if r.version is not None)

    def settled(self) -> list[GenerationRecord]:
        """The generations, with what only the whole recording tells: one released unresolved
        at the end of its hold window when no record for its key and label ever arrived in its
        tenant had nothing to wait for (``no_fetch_record``, not ``hold_expired``)."""
        return [
            dataclasses.replace(g, reason="no_fetch_record")
            if g.reason == "hold_expired" and (g.tenant, g.key, g.label) not in self.arrived
            else g
            for g in self.generations
        ]

    def on_generations(self, records: Sequence[GenerationRecord], now_ns: int) -> None:
        self.generations.extend(records)


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A fetch record the processor rejected, and where it was in the input."""

    source: str
    line: int
    reason: str


@dataclass
class ReplaySummary:
    """What one replay saw. ``generations`` are in the order they were stamped."""

    documents: Counter[str] = field(default_factory=Counter)  # by signal
    trace_requests_out: int = 0
    spans_out: int = 0
    invalid_fetch_records: list[InvalidRecord] = field(default_factory=list)
    generations: list[GenerationRecord] = field(default_factory=list)
    fetch_records: list[FetchRecord] = field(default_factory=list)  # accepted ones, fallback too

    @property
    def lines(self) -> int:
        return sum(self.documents.values())

    @property
    def unresolved(self) -> list[GenerationRecord]:
        return [g for g in self.generations if g.version is None]

    def by_tier(self) -> dict[str, int]:
        """Generations per resolution tier, in the contract's tier order."""
        counts = Counter(g.resolution for g in self.generations)
        return {t: counts[t] for t in c.TIERS if counts[t]} | {
            t: n for t, n in sorted(counts.items()) if t not in c.TIERS}


def replay(
    documents: Iterable[Sourced],
    processor: Processor,
    write: Callable[[str], None],
    observer: ReplayObserver | None = None,
    emitted: Callable[[ExportTraceServiceRequest], None] | None = None,
) -> ReplaySummary:
    """Run ``documents`` through ``processor`` in order, on the virtual clock of contract §5.

    Per document: its fetch-log records are taken in first; then the clock advances to the
    largest timestamp seen so far and every held span whose window has passed is released;
    then its spans are processed. What is still held at the end is released then. Each stamped
    trace request is written as one line, and each metrics document as it came. ``observer``
    is the one the processor was built with (its records end up in the summary); ``emitted``
    sees every request written.
    """
    summary = ReplaySummary()
    clock = 0

    def out(requests: Iterable[Any]) -> None:
        for o in requests:
            request = o.request
            summary.trace_requests_out += 1
            summary.spans_out += o.spans
            if emitted is not None:
                emitted(request)
            write(encode_line(request))

    for item in documents:
        doc = item.doc
        summary.documents[doc.signal] += 1
        reasons: list[str] = []
        if isinstance(doc.request, ExportLogsServiceRequest):
            result = processor.consume_logs(doc.request, clock)
            reasons = list(result.invalid)
            out(result.released)
        clock = max(clock, doc.max_time_ns)
        if isinstance(doc.request, ExportTraceServiceRequest):
            # consume_traces takes its fetch-record span events in first, then releases what
            # is due at ``clock``, then stamps its spans (contract §5's order).
            traces = processor.consume_traces(doc.request, clock)
            reasons = list(traces.invalid)
            out(traces)
        else:
            out(processor.release_due(clock))
            if doc.request is None:
                write(doc.text)  # metrics: passed through unchanged
        summary.invalid_fetch_records.extend(InvalidRecord(item.source, doc.line, r) for r in reasons)
    out(processor.release_all(clock))
    if observer is not None:
        summary.generations = observer.settled()
        summary.fetch_records = list(observer.fetch_records)
    return summary


# -- checks -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Mistyped:
    """A span with a prompt key and a model attribute that Langfuse types as something other than
    a generation: the relay leaves it alone (contract §3), so it never links."""

    trace_id: bytes
    span_id: bytes
    span_name: str
    key: str
    label: str
    langfuse_type: str


_MODEL_ATTRIBUTES = (
    "langfuse.observation.model.name", c.GEN_AI_REQUEST_MODEL, "gen_ai.response.model",
    "llm.model_name", "model", "ai.model.id",
)


_LINKED_OR_STAMPED = (c.LF_PROMPT_NAME, "langfuse.prompt.name", "ai.telemetry.metadata.langfusePrompt",
                      c.LF_META_RESOLUTION)


def _value(v: Any) -> object:
    which = v.WhichOneof("value")
    if which == "string_value":
        return str(v.string_value)
    if which in ("int_value", "double_value", "bool_value"):
        return getattr(v, which)
    return True  # present, not a string (as the native scanner reports it)


def mistyped_spans(
    request: ExportTraceServiceRequest,
    langfuse_type: Callable[..., str] | None = None,
) -> list[Mistyped]:
    """The spans of ``request`` that carry ``app.prompt.key`` and a model attribute but that
    Langfuse types as something else. ``langfuse_type``: the typing rules (by default
    :func:`.detect.langfuse_type`; without it, nothing is reported)."""
    if langfuse_type is None:
        from promptstamp_contract import langfuse_typing as detect

        langfuse_type = getattr(detect, "langfuse_type", None)
        if langfuse_type is None:
            return []
    found: list[Mistyped] = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs: Mapping[str, object] = {kv.key: _value(kv.value) for kv in span.attributes}
                key = attrs.get(c.PROMPT_KEY)
                if not isinstance(key, str) or not key or not any(m in attrs for m in _MODEL_ATTRIBUTES):
                    continue
                if any(k in attrs for k in _LINKED_OR_STAMPED):
                    continue  # linked by the app, or stamped
                kind = langfuse_type(attrs, scope_name=ss.scope.name, scope_version=ss.scope.version,
                                     span_name=span.name)
                if kind != "GENERATION":
                    label = attrs.get(c.PROMPT_LABEL)
                    found.append(Mistyped(bytes(span.trace_id), bytes(span.span_id), span.name, key,
                                          label if isinstance(label, str) else "", kind))
    return found


@dataclass(frozen=True, slots=True)
class OutsideScope:
    """A generation with no prompt key in a trace that has a fetch record: the model call ran
    outside ``with promptstamp.prompt(...)`` (or in a thread the context did not reach), so
    nothing says which prompt it used and it is never linked (``outside_prompt_scope``)."""

    trace_id: bytes
    span_id: bytes
    span_name: str


def keyless_generations(
    request: ExportTraceServiceRequest,
    langfuse_type: Callable[..., str] | None = None,
) -> list[OutsideScope]:
    """The spans of ``request`` that Langfuse types as generations but that carry no prompt key
    and no link (whether their trace has a fetch record is known only at the end of a run)."""
    if langfuse_type is None:
        from promptstamp_contract import langfuse_typing as detect

        langfuse_type = getattr(detect, "langfuse_type", None)
        if langfuse_type is None:
            return []
    found: list[OutsideScope] = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs: Mapping[str, object] = {kv.key: _value(kv.value) for kv in span.attributes}
                if c.PROMPT_KEY in attrs or any(k in attrs for k in _LINKED_OR_STAMPED):
                    continue
                if langfuse_type(attrs, scope_name=ss.scope.name, scope_version=ss.scope.version,
                                 span_name=span.name) == "GENERATION":
                    found.append(OutsideScope(bytes(span.trace_id), bytes(span.span_id), span.name))
    return found


def outside_prompt_scope(candidates: Iterable[OutsideScope],
                         records: Iterable[FetchRecord]) -> list[OutsideScope]:
    """Of ``candidates`` (:func:`keyless_generations`), those whose trace has a fetch record."""
    traced = {r.trace_id for r in records if r.trace_id}
    return [o for o in candidates if o.trace_id in traced]


def output_directory_problem(path: str) -> str | None:
    """Why ``path`` cannot be written as an output file, or None (checked before any work)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        return f"cannot write {path}: the directory {parent} does not exist"
    if not parent.is_dir():
        return f"cannot write {path}: {parent} is not a directory"
    if p.is_dir():
        return f"cannot write {path}: it is a directory"
    return None


# -- one whole run (the CLI and promptstamp.testing) ---------------------------------------------

#: Settings replay overrides in any config: it exports nothing and listens nowhere, so exporter
#: settings (Langfuse keys among them) and TLS files are not needed where recordings are replayed.
REPLAY_OVERRIDES: Mapping[str, Any] = {
    "exporter.type": "debug",
    "auth.passthrough_langfuse_credentials": False,
    "tls.cert_file": "",
    "tls.key_file": "",
    "tls.client_ca_file": "",
}


@dataclass
class RunResult:
    summary: ReplaySummary
    mistyped: list[Mistyped]
    processor: Processor
    #: generations with no prompt key in a trace with a fetch record (with ``find_mistyped``)
    outside: list[OutsideScope] = field(default_factory=list)


def build_replay_processor(cfg: Config, observer: ReplayObserver) -> Processor:
    """The processor ``serve`` would build from ``cfg``, with replay's release rule (§5)."""
    from ..wiring import build_processor

    return build_processor(cfg, early_release=False, observers=(observer,))


def run_inputs(
    cfg: Config,
    inputs: Sequence[tuple[str, Iterable[str]]],
    write: Callable[[str], None],
    *,
    find_mistyped: bool = False,
    emitted: Callable[[ExportTraceServiceRequest], None] | None = None,
) -> RunResult:
    """Replay ``(name, lines)`` inputs, merged, with a processor built from ``cfg``."""
    observer = ReplayObserver()
    processor = build_replay_processor(cfg, observer)
    mistyped: list[Mistyped] = []
    keyless: list[OutsideScope] = []

    def seen(request: ExportTraceServiceRequest) -> None:
        if find_mistyped:
            mistyped.extend(mistyped_spans(request))
            keyless.extend(keyless_generations(request))
        if emitted is not None:
            emitted(request)

    summary = replay(merge(inputs), processor, write, observer, seen)
    return RunResult(summary, mistyped, processor, outside_prompt_scope(keyless, summary.fetch_records))


def run_files(
    cfg: Config,
    paths: Sequence[str],
    output: str | None,
    *,
    find_mistyped: bool = False,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
) -> RunResult:
    """Replay files (``-``: stdin) into ``output``, or ``stdout`` when None.

    The output file is written as a temporary file beside it and renamed when the run
    succeeded: a failed run leaves no partial file (and an earlier output untouched).
    """
    with contextlib.ExitStack() as stack:
        inputs: list[tuple[str, Iterable[str]]] = []
        for path in paths:
            try:
                inputs.append((path, stack.enter_context(open_input(path, stdin))))
            except InputError as e:
                raise InputError(f"{path}: {e}") from None
        if output is None:
            out = stdout if stdout is not None else sys.stdout

            def write(line: str) -> None:
                out.write(line + "\n")

            result = run_inputs(cfg, inputs, write, find_mistyped=find_mistyped)
            out.flush()
            return result
        target = Path(output)
        try:
            tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed or removed below)
                "w", encoding="utf-8", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp",
                delete=False)
        except OSError as e:
            raise InputError(f"cannot write {output}: {e.strerror}") from None
        try:
            def write_tmp(line: str) -> None:
                tmp.write(line + "\n")

            with tmp:
                result = run_inputs(cfg, inputs, write_tmp, find_mistyped=find_mistyped)
            os.replace(tmp.name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp.name)
            raise
        return result
    raise AssertionError("unreachable")  # pragma: no cover (mypy: ExitStack may swallow)


# -- what the CLI prints ------------------------------------------------------------------------

#: Why a generation is unlinked, in words (one table for the relay and promptstamp.testing).
REASONS: Mapping[str, str] = reasons.REASONS


def _unresolved_line(g: GenerationRecord) -> str:
    why = REASONS.get(g.reason or "", g.reason or "unresolved")
    return (f"  trace {g.trace_id.hex()} span {g.span_name!r} key {g.key!r} label {g.label!r}: {why}")


def format_summary(summary: ReplaySummary, mistyped: Sequence[Mistyped] = (),
                   outside: Sequence[OutsideScope] = ()) -> str:
    """The ``--check`` / ``--summary`` report: tiers, unresolved generations with their reason,
    invalid fetch records with file:line, spans Langfuse will not type as generations, and
    generations made outside the prompt's scope."""
    docs = summary.documents
    tiers = ", ".join(f"{t} {n}" for t, n in summary.by_tier().items()) or "none"
    fallback = sum(1 for r in summary.fetch_records if r.version is None)
    lines = [
        f"replay: {summary.lines} requests ({docs['traces']} traces, {docs['logs']} logs, "
        f"{docs['metrics']} metrics passed through); {summary.spans_out} spans out",
        f"generations: {len(summary.generations)} ({tiers})",
        f"fetch records: {len(summary.fetch_records)} accepted ({fallback} fallback), "
        f"{len(summary.invalid_fetch_records)} invalid",
    ]
    unresolved = summary.unresolved
    if unresolved:
        lines.append(f"unresolved generations ({len(unresolved)}):")
        lines.extend(_unresolved_line(g) for g in unresolved)
    if summary.invalid_fetch_records:
        lines.append(f"invalid fetch records ({len(summary.invalid_fetch_records)}):")
        lines.extend(f"  {b.source}:{b.line}: {b.reason}" for b in summary.invalid_fetch_records)
    if mistyped:
        lines.append(f"spans with a prompt key and a model that Langfuse does not type as generations "
                     f"({len(mistyped)}; left unstamped):")
        lines.extend(f"  trace {m.trace_id.hex()} span {m.span_name!r} key {m.key!r} label {m.label!r}: "
                     f"Langfuse types it {m.langfuse_type}" for m in mistyped)
    if outside:
        lines.append(f"generations with no prompt key in a trace with a fetch record ({len(outside)}): "
                     + REASONS["outside_prompt_scope"])
        lines.extend(f"  trace {o.trace_id.hex()} span {o.span_name!r}: outside_prompt_scope"
                     for o in outside)
    ok = not unresolved and not summary.invalid_fetch_records and not outside
    failed = f"{len(unresolved)} unresolved, {len(summary.invalid_fetch_records)} invalid fetch records"
    if outside:
        failed += f", {len(outside)} outside the prompt's scope"
    lines.append("check: OK" if ok else f"check: FAILED ({failed})")
    return "\n".join(lines) + "\n"


def one_line_summary(summary: ReplaySummary, stats: Any) -> str:
    tiers = ", ".join(f"{t}={n}" for t, n in sorted(stats.stamped.items())) or "none"
    return (f"replayed {summary.lines} lines: {stats.spans_received} spans, "
            f"{sum(stats.stamped.values())} generations stamped ({tiers}), "
            f"{stats.fetch_records} fetch-log records")
