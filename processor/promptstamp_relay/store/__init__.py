"""Where fetch-log records live between their arrival and the spans they resolve."""

from ..core.fetch_store import FetchLogStore
from .memory import MemoryStore

__all__ = ["FetchLogStore", "MemoryStore"]
