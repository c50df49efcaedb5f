"""Delivery: the bounded queue between receiving and exporting, its retries, and (opt-in) its
persistence on disk. See docs/delivery.md for what is guaranteed in each mode."""
