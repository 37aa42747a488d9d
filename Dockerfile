# Roundhouse operator image. The same image runs the per-proxy agent sidecar
# (`roundhouse agent ...`); HAProxy itself runs from the official haproxy image,
# so nothing but Python and the roundhouse package is needed here.
#
#   docker build -t roundhouse:0.1.0 .
#
# Both stages use the same exact Python image: the venv built in the first stage
# links to /usr/local/bin/python3.11 and is copied as is into the second.

# ---- builder: build the wheel and install it with its dependencies into /opt/venv
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv

# Only what the wheel is built from (see .dockerignore): changes to tests, e2e or
# manifests do not invalidate this layer.
COPY pyproject.toml README.md ./
COPY operator/ operator/

# All runtime dependencies ship manylinux wheels: no compiler in this stage.
# Byte-code is compiled here, at install time, because the root filesystem is
# read-only at run time.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install /tmp/wheels/roundhouse-*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/roundhouse --help >/dev/null

# ---- final: the slim runtime, unprivileged
FROM python:3.11.14-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="roundhouse" \
      org.opencontainers.image.description="Kubernetes operator that turns LoadBalancer and ReverseProxy resources into a highly available HAProxy data plane" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="roundhouse.dev" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# A fixed numeric uid/gid that matches the chart's runAsUser/runAsGroup/fsGroup.
RUN groupadd --system --gid 10001 roundhouse \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin roundhouse

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# 8080: kopf liveness endpoint (/healthz); 9100: Prometheus metrics.
EXPOSE 8080 9100

# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp

# Kubernetes probes are used instead.
HEALTHCHECK NONE

ENTRYPOINT ["roundhouse"]
CMD ["run"]
