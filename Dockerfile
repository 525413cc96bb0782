# syntax=docker/dockerfile:1
# ahasend-relay container image. Configuration comes only from the environment
# (see config.example.env); the spool and other state live on the /var/lib/ahasend-relay
# volume. Build: docker build -t ahasend-relay .   (or: podman build -t ahasend-relay .)

# --- build stage: install the relay and its pinned dependencies into a virtualenv -------
FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first, from the lock file (exact versions and hashes): reproducible, and
# a layer that stays cached while only the relay's code changes.
COPY requirements/image.lock ./requirements/
RUN python -m venv /opt/ahasend-relay \
 && /opt/ahasend-relay/bin/pip install --require-hashes --no-deps -r requirements/image.lock
COPY pyproject.toml README.md ./
COPY relay ./relay
# The relay itself (setuptools, pinned above, builds it); then pip and setuptools leave
# the virtualenv: the runtime stage needs neither.
RUN /opt/ahasend-relay/bin/pip install --no-deps --no-build-isolation . \
 && /opt/ahasend-relay/bin/python -m pip uninstall --yes setuptools pip

# --- runtime stage: the virtualenv only, run by an unprivileged user -------------------
FROM python:3.12-slim
LABEL org.opencontainers.image.title="ahasend-relay" \
      org.opencontainers.image.description="SMTP relay that forwards mail to AhaSend's HTTP API v2"
# A fixed numeric user and group (10001), so that runAsUser/fsGroup and volume owners
# match; no pip (nor ensurepip's copy) in the image that runs.
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/ahasend-relay --shell /usr/sbin/nologin relay \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/ahasend-relay \
 && python -m pip uninstall --yes pip setuptools wheel \
 && rm -rf /usr/local/lib/python3*/ensurepip
COPY --from=build /opt/ahasend-relay /opt/ahasend-relay
# Inside a container, "all interfaces" means the container's own network namespace:
# the app next to it (same pod or compose network) and the metrics scraper reach it.
# MALLOC_MMAP_THRESHOLD_: large message buffers go back to the OS after use (glibc
# reads it at start; the same effect as relay/ops/memory.py's mallopt, measured).
ENV PATH=/opt/ahasend-relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_MMAP_THRESHOLD_=131072 \
    RELAY_HOST=0.0.0.0 \
    RELAY_PORT=2525 \
    RELAY_METRICS_HOST=0.0.0.0 \
    RELAY_METRICS_PORT=9125 \
    RELAY_LOG_FORMAT=json \
    RELAY_SPOOL_DIR=/var/lib/ahasend-relay/spool
# The spool (RELAY_SPOOL_DIR, on by default) lives on the state volume: mount one that
# outlives the container, or spooled mail goes with it. RELAY_SPOOL_DIR= turns it off.
WORKDIR /var/lib/ahasend-relay
VOLUME ["/var/lib/ahasend-relay"]
USER 10001:10001
EXPOSE 2525 9125
# The relay is PID 1 here: it installs its own SIGTERM/SIGINT handlers (the kernel
# drops unhandled signals to PID 1), finishes sessions in flight, and exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["ahasend-relay", "healthcheck"]
ENTRYPOINT ["ahasend-relay"]
CMD ["serve"]
