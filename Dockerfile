# syntax=docker/dockerfile:1
# The lockscope agent: OTLP receiver (4318), JSON API, /metrics, web view (9477).
#
#   docker build -t lockscope .
#   docker run --rm -p 4318:4318 -p 9477:9477 lockscope
#   docker run --rm lockscope demo --help          # any other lockscope command
#
# Configured by environment (docs/deploy.md): LOCKSCOPE_AGENT_OTLP, LOCKSCOPE_AGENT_HTTP,
# LOCKSCOPE_AGENT_CONFIG (a TOML file you mount), LOCKSCOPE_ALERTMANAGER_URL,
# LOCKSCOPE_LOG_LEVEL, LOCKSCOPE_AGENT_MAX_REQUEST_BYTES.

ARG PYTHON_VERSION=3.11

# -- builder: the wheel, from the sources only (see .dockerignore) -----------------------
FROM python:${PYTHON_VERSION}-slim AS builder
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN python -m build --wheel --outdir /dist

# -- runtime: the wheel with the agent and Redis extras, as an unprivileged user ---------
FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="lockscope agent" \
      org.opencontainers.image.description="Live view of distributed locks: deadlocks, stale holders, mutual-exclusion violations" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/lockscope/lockscope"
RUN groupadd --system --gid 10001 lockscope \
    && useradd --system --uid 10001 --gid lockscope --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin lockscope
COPY --from=builder /dist/ /tmp/dist/
# The wheel's own version is pinned by the file; its dependencies by pyproject's ranges.
# hadolint ignore=DL3013
RUN wheel="$(ls /tmp/dist/lockscope-*.whl)" \
    && pip install --no-cache-dir "${wheel}[agent,redis]" \
    && rm -rf /tmp/dist
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOCKSCOPE_AGENT_OTLP=0.0.0.0:4318 \
    LOCKSCOPE_AGENT_HTTP=0.0.0.0:9477
# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 4318 9477
# No curl in slim images: ask /healthz with Python, on the port LOCKSCOPE_AGENT_HTTP names.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('LOCKSCOPE_AGENT_HTTP', ':9477').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
ENTRYPOINT ["lockscope"]
CMD ["agent"]
