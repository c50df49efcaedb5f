"""The tutorial chapter's order-status support agent, with promptstamp. ``python -m order_status``."""
