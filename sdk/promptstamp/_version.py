"""The installed distribution's version, read once at import (``promptstamp.__version__``)."""

from __future__ import annotations

__all__ = ["VERSION"]


def _read() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("promptstamp")
    except PackageNotFoundError:  # a source tree on sys.path, not an installed distribution
        return "0+unknown"


VERSION = _read()
