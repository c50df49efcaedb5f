"""Receivers: OTLP bytes in, precise statuses out (``grpc.py``); who sent them (``auth.py``),
the decode budget (``budget.py``), TLS (``tls.py``). Admission itself is ``admit.py``.

Empty on purpose: importing ``receive.auth`` must not import the gRPC receiver.
"""
