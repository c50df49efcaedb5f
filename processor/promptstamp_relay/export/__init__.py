"""Exporters: where encoded OTLP requests go after stamping."""

from ._base import OK, Exporter, ExportResult
from .debug import DebugExporter
from .file import FileExporter, JsonLinesWriter
from .langfuse import LangfuseExporter
from .otlp_grpc import OtlpGrpcExporter

__all__ = [
    "OK",
    "DebugExporter",
    "ExportResult",
    "Exporter",
    "FileExporter",
    "JsonLinesWriter",
    "LangfuseExporter",
    "OtlpGrpcExporter",
]
