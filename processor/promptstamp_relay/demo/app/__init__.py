"""The tutorial chapter's order-status support agent, with promptstamp:
``python -m promptstamp_relay.demo.app``. What ``promptstamp-relay demo`` runs, shipped in the wheel
(and so in the images) rather than found in a checkout's ``examples/``.

It is an app, not part of the relay: it imports the SDK (``promptstamp``), ``langfuse``,
``openai`` and an OpenAI instrumentation (the ``demo`` extra). The relay never imports it; only
``promptstamp-relay demo`` runs it, in a subprocess.
"""
