"""Receivers: OTLP bytes in, precise statuses out (``grpc.py``); who sent them (``auth.py``),
TLS (``tls.py``). Admission itself (auth, the decode budget, limits) is ``admission/``.

Empty on purpose: importing ``receive.auth`` must not import the gRPC receiver.
"""
