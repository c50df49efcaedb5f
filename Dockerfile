# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build -t promptstamp-relay .                           the relay (default, last stage)
#   docker build --target demo-app -t order-status-demo .         the example order-status app
# The relay listens for OTLP/gRPC on 0.0.0.0:4317 and serves Prometheus metrics when
# PROMPTSTAMP_METRICS_LISTEN is set; configure it with LANGFUSE_* / PROMPTSTAMP_* variables and/or
# `--config FILE` (see examples/relay.yaml).

FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /src
# The package sources only (see .dockerignore): the SDK and the relay are one distribution.
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY processor ./processor
RUN useradd --system --uid 10001 --no-create-home promptstamp

# ---- the example app: the tutorial's order-status agent instrumented with promptstamp ----------
FROM base AS demo-app
COPY examples/order_status/requirements.txt /tmp/app-requirements.txt
RUN pip install . -r /tmp/app-requirements.txt
COPY examples/order_status /app/order_status
WORKDIR /app
USER promptstamp
ENTRYPOINT ["python", "-m", "order_status"]
# Create the prompt if missing, wait for Langfuse, answer model calls from an in-process fake
# (drop --fake-openai and set OPENAI_API_KEY to use OpenAI), run the three scenarios.
CMD ["--seed-prompts", "--wait-for-langfuse", "300", "--fake-openai", "all"]

# ---- the relay (default target) ----------------------------------------------------------------
FROM base AS relay
RUN pip install ".[relay]"
USER promptstamp
ENV PROMPTSTAMP_LISTEN=0.0.0.0:4317
EXPOSE 4317 9464
ENTRYPOINT ["promptstamp-relay", "serve"]
