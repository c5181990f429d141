# The Petri gateway itself, for `docker compose up` (see docker-compose.yml).
#
# Build options (all `--build-arg`):
#   BASE           base image; default debian:trixie-slim. Hosts that cannot reach an image
#                  registry pass BASE=petri-base:trixie (made by `petri images build`).
#   PIP_INDEX_URL  package index to install from (a mirror or proxy); default PyPI.
# CA bundle: on networks that intercept TLS (corporate proxies), put the PEM bundle pip must
# trust at `ca-bundle.crt` in the build context (`make gateway-image` copies
# $PETRI_CA_BUNDLE or /etc/ssl/certs/ca-certificates.crt there). It is used by the build
# stage only and is not part of the final image. Without it, the image's own CA set is used.
#
# The classic builder (DOCKER_BUILDKIT=0) is enough: no BuildKit-only syntax is used, so a
# local-only BASE resolves from the image store.
#
# Runs as root, on purpose: the gateway drives the Docker socket (root on the host in all but
# name, whatever user holds it), and it loop-mounts an ext4 image per workspace for disk quotas,
# which needs root (and, in a container, `privileged`). The code it runs never executes here:
# sandboxes are separate, hardened, non-root containers. The runtime images must already exist
# on the Docker host (`petri images build` there): this image has no Docker CLI.
ARG BASE=debian:trixie-slim

FROM ${BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_INDEX_URL=${PIP_INDEX_URL} PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# `ca-bundle.cr[t]` is a pattern so that a context without the bundle still builds.
COPY pyproject.toml ca-bundle.cr[t] /src/
# Dependencies first (their layer survives code changes), then the project itself.
RUN cert=/etc/ssl/certs/ca-certificates.crt; [ ! -s /src/ca-bundle.crt ] || cert=/src/ca-bundle.crt; \
    python3 -m venv /opt/petri/venv \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
 && PIP_CERT="$cert" SSL_CERT_FILE="$cert" /opt/petri/venv/bin/pip install -r requirements.txt
COPY README.md /src/
COPY gateway /src/gateway
COPY petri_sdk /src/petri_sdk
RUN cert=/etc/ssl/certs/ca-certificates.crt; [ ! -s /src/ca-bundle.crt ] || cert=/src/ca-bundle.crt; \
    PIP_CERT="$cert" SSL_CERT_FILE="$cert" /opt/petri/venv/bin/pip install --no-deps /src \
 && /opt/petri/venv/bin/petri --help >/dev/null \
 && /opt/petri/venv/bin/python -c 'import gateway.routes'

FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
# e2fsprogs + mount: per-workspace loop-mounted ext4 quotas. tini: PID 1 that forwards
# SIGTERM (graceful drain of running executions) and reaps children.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 e2fsprogs mount tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY --from=build /opt/petri/venv /opt/petri/venv
COPY runtimes /opt/petri/runtimes
# Workspaces must be mounted at the same path here and on the Docker host (the daemon resolves
# sandbox bind mounts on the host): mount PETRI_WORKSPACE_ROOT as `-v /p:/p`.
# PETRI_CA_BUNDLE is likewise a host path handed to install containers: empty (none) unless the
# deployment mounts the host's bundle at the same path and names it (docker-compose.yml does).
ENV PATH=/opt/petri/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PETRI_RUNTIMES_DIR=/opt/petri/runtimes \
    PETRI_DATA_DIR=/var/lib/petri/data \
    PETRI_WORKSPACE_ROOT=/var/lib/petri/workspaces \
    PETRI_CA_BUNDLE=
EXPOSE 8000
# HEALTHCHECK_URL: where the probe looks when the gateway serves elsewhere (host networking).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('HEALTHCHECK_URL') or 'http://127.0.0.1:8000/healthz', timeout=4)"]
# `petri serve --host 0.0.0.0 --port 8000`; arguments given to `docker run` replace the CMD
# part (with host networking: `--host 127.0.0.1 --port 8000`, see docker-compose.yml).
ENTRYPOINT ["tini", "--", "petri", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
