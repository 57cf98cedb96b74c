# syntax=docker/dockerfile:1
# One image for every role: the `tungo` sidecar and the `tungo-operator` / `tungo-webhook` control plane.
#
#   docker build -t kube-tungo:0.1.0 .
#
# Roles and privileges: the image runs as the unprivileged user tungo (uid 10001), which is what the
# operator and the webhook use. The sidecar needs root inside its container with the NET_ADMIN
# capability (TUN device, addresses, routes, ip rules, SO_MARK): Kubernetes grants added capabilities
# only to uid 0, so the injected container sets runAsUser 0, drops every other capability and forbids
# privilege escalation (tungo_operator/injection/sidecar.py). Outside Kubernetes, run it likewise:
#   docker run --user 0 --cap-drop ALL --cap-add NET_ADMIN --device /dev/net/tun kube-tungo tungo -C ...
#
# The base is pinned to a patch release. Pin its digest too when you build (`docker buildx imagetools
# inspect python:3.11.14-slim-bookworm`); no registry was reachable where this file was written.
# PYTHON_IMAGE may name any Debian 12 image with `python` (venv + ensurepip), apt and useradd:
# scripts/build-image.sh builds this file unchanged with buildah on such a base made by mmdebstrap
# (python3, python3-venv, python-is-python3), then runs the image's commands and its sidecar.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: the project wheel and its dependencies in a virtualenv ---------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VENV=/opt/venv \
    WHEELS=/tmp/wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar/src ./sidecar/src
COPY operator/src ./operator/src
# Every dependency ships manylinux wheels (python-pytun, cryptography, websockets, aiohttp...):
# no compiler needed. tests/test_dockerfile.py runs these RUN lines in a clean venv.
RUN python -m venv "$VENV"
RUN "$VENV/bin/pip" wheel --no-deps --wheel-dir "$WHEELS" .
RUN "$VENV/bin/pip" install "$(ls "$WHEELS"/kube_tungo-*.whl)[operator]"
RUN "$VENV/bin/tungo" --help >/dev/null && "$VENV/bin/tungo-operator" --help >/dev/null \
    && "$VENV/bin/tungo-webhook" --help >/dev/null

# --- runtime ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kube-tungo" \
      org.opencontainers.image.description="tungo (tun2socks over GOST relay+wss) and its Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# iproute2: TunGateway postUp/postDown hooks commonly call `ip`. nftables: the sidecar's `nft` loads the
# table that sends replies to inbound connections (kubelet probes, ingress) around the TUN
# (tungo_sidecar/routing/inbound.py).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2 nftables \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 tungo \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin tungo
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Non-root by default (operator, webhook); the injected sidecar overrides it with runAsUser 0.
USER 10001:10001
CMD ["tungo-operator", "--help"]
