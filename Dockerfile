# syntax=docker/dockerfile:1
# agedchip serving image: the HTTP service (python -m service) on the emulated PCM chip.
#
#   docker build -t agedchip .
#   docker run -p 8000:8000 -v agedchip-state:/var/lib/agedchip agedchip
#
# Two stages. "build" creates the virtual environment from requirements/serve.txt with the same
# script the tests use (docker/ci/make-serve-venv.sh). "runtime" holds only that environment,
# the serving code (chipsim/, service/) and the model zoo (models/zoo/, so the embedded default
# chip can be programmed on first start): no torch, no training code, no compilers.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY requirements/serve.txt docker/ci/make-serve-venv.sh ./
RUN PYTHON=python3 sh make-serve-venv.sh /opt/venv serve.txt

# -------------------------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="agedchip" \
      org.opencontainers.image.description="Model serving on an emulated, ageing analog in-memory-computing (PCM) chip"

# Unprivileged user; the chip store is its only writable place (a volume).
RUN groupadd --system --gid 10001 agedchip \
    && useradd --system --uid 10001 --gid agedchip --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin agedchip \
    && mkdir -p /var/lib/agedchip \
    && chown agedchip:agedchip /var/lib/agedchip

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY chipsim/ /app/chipsim/
COPY service/ /app/service/
COPY models/zoo/ /app/models/zoo/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGEDCHIP_HOST=0.0.0.0 \
    AGEDCHIP_PORT=8000 \
    AGEDCHIP_STATE_DIR=/var/lib/agedchip \
    AGEDCHIP_ZOO_DIR=/app/models/zoo

VOLUME ["/var/lib/agedchip"]
USER 10001:10001
EXPOSE 8000

# Liveness from inside the container (the slim image has no curl: Python's urllib does it).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AGEDCHIP_PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "service"]
