#!/usr/bin/env bash
# Installs everything kube-tungo needs on a fresh Debian 12 machine (run as root): Debian packages,
# a virtualenv in .venv with the project and its dev tools, and the helm binary used by chart tests.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(iproute2 nftables iperf3 iputils-ping procps ca-certificates python3 python3-venv python3-dev gcc unzip)
missing=()
for pkg in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
if [[ -x scripts/fetch-helm.sh ]]; then
    scripts/fetch-helm.sh
fi
echo "setup: ready (.venv)"
