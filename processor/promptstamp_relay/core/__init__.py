"""The pure processor: fetch records in (log records and fetch spans), resolution (an ordered
list of tiers), stamping, the hold window, late evidence; ``detect`` is Langfuse's typing as data.

Nothing here does I/O or reads a clock: the live server and replay call the same code with the
time passed in. The store is read through :class:`~promptstamp_relay.core.fetch_store.FetchLogStore`.
"""
