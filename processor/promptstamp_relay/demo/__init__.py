"""The order-status demo: ``run`` starts the loopback Langfuse, a fake model API and the relay,
then runs ``app`` (the tutorial's agent with promptstamp) as a process of its own."""
