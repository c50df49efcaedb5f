# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build -t promptstamp-relay .                           the relay (default, last stage)
#   docker build --target demo-app -t order-status-demo .         the example order-status app
# The relay listens for OTLP/gRPC on 0.0.0.0:4317 and serves Prometheus metrics when
# PROMPTSTAMP_METRICS_LISTEN is set; configure it with LANGFUSE_* / PROMPTSTAMP_* variables and/or
# `--config FILE` (see examples/relay.yaml). `docker run --rm promptstamp-relay demo` runs the
# loopback demo inside the image; `docker run --rm promptstamp-relay --help` lists the exit codes.

# ---- build: the wheel, with the C extension (promptstamp_relay.wire._wirec) compiled -----------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler for setup.py's extension. It is optional there (a source install without a
# compiler still works, at about half the speed), so the check below fails the build instead.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The package sources only (see .dockerignore): the SDK and the relay are one distribution.
COPY pyproject.toml setup.py README.md ./
COPY sdk ./sdk
COPY processor ./processor
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -c "import glob, sys, zipfile; \
names = zipfile.ZipFile(glob.glob('/wheels/promptstamp-*.whl')[0]).namelist(); \
sys.exit(0 if any(n.startswith('promptstamp_relay/wire/_wirec.') and n.endswith('.so') for n in names) \
         else 'the wheel has no compiled promptstamp_relay.wire._wirec')"

# ---- runtime base: no compiler, no sources; the wheel only ---------------------------------------
FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home promptstamp
COPY --from=build /wheels /wheels

# ---- the example app: the tutorial's order-status agent instrumented with promptstamp ----------
FROM base AS demo-app
COPY examples/order_status/requirements.txt /tmp/app-requirements.txt
RUN pip install "$(echo /wheels/promptstamp-*.whl)[relay,demo]" -r /tmp/app-requirements.txt \
 && rm -rf /wheels
WORKDIR /tmp
USER promptstamp
# The app ships in the wheel (promptstamp_relay/demo/app), as `promptstamp-relay demo` runs it.
ENTRYPOINT ["python", "-m", "promptstamp_relay.demo.app"]
# Create the prompt if missing, wait for Langfuse, answer model calls from an in-process fake
# (drop --fake-openai and set OPENAI_API_KEY to use OpenAI), run the three scenarios.
CMD ["--seed-prompts", "--wait-for-langfuse", "300", "--fake-openai", "all"]

# ---- the relay (default target) ----------------------------------------------------------------
FROM base AS relay
# The demo extra is for `promptstamp-relay demo` only: serve and replay never import it (tested).
RUN pip install "$(echo /wheels/promptstamp-*.whl)[relay,demo]" && rm -rf /wheels
WORKDIR /tmp
USER promptstamp
ENV PROMPTSTAMP_LISTEN=0.0.0.0:4317
EXPOSE 4317 9464
ENTRYPOINT ["promptstamp-relay"]
CMD ["serve"]
