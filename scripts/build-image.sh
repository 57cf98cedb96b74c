#!/usr/bin/env bash
# Builds the Dockerfile for real without a registry, then runs what it built.
#
#   sudo scripts/build-image.sh            # base (once), build, the three entry points
#   sudo scripts/build-image.sh --netns    # ...and the sidecar from the image in network namespaces
#
# 1. Base: python:3.11-slim-bookworm cannot be pulled here, so mmdebstrap makes a Debian 12 rootfs with
#    what this Dockerfile uses from that image — `python` (python-is-python3) with venv/ensurepip,
#    ca-certificates, netbase, tzdata, apt, useradd — slimmed like Docker's Debian images (no docs, man
#    pages or locales; apt's docker-clean), and `podman import`s it as $BASE. Made once: --rebuild-base
#    makes it again. Its Python is Debian's 3.11.2 where the official image has 3.11.x from python.org.
# 2. Build: `buildah bud --build-arg PYTHON_IMAGE=$BASE`, the Dockerfile unchanged otherwise, no cache
#    (no untagged layers pile up; the image it replaces is removed). Isolation chroot needs no cgroups
#    or OCI runtime (BUILDAH_ISOLATION=oci works with runc, not with Debian 12's crun on hybrid cgroup
#    hierarchies). STORAGE_DRIVER=vfs where overlay is not available. The RUN steps see the
#    host's CA bundle ($CA_BUNDLE, bind-mounted read-only over the base's and never stored in the
#    image: Debian's pip reads it) so pip reaches PyPI behind a TLS-intercepting proxy; set
#    CA_BUNDLE= to not mount it.
# 3. Entry points: tungo, tungo-operator, tungo-webhook (and the default CMD) run from the image as its
#    default user 10001, plus the tools the sidecar calls (ip, nft).
# 4. --netns: two namespaces joined by a veth pair; in "srv" the image's `tungo -L relay://` and an HTTP
#    target; in "pod" the image's sidecar as the Dockerfile's `docker run` line runs it (--user 0, only
#    NET_ADMIN, --device /dev/net/tun) with `-F relay://...`; an app in "pod" (the image's python)
#    fetches the target through the TUN; SIGTERM must leave no TUN and no rule behind. A run without
#    --device must fail with the "mount the node's /dev/net/tun" hint. Everything is removed on exit.
#
# Needs root, `apt-get install buildah podman mmdebstrap runc`, a Debian mirror ($MIRROR) and PyPI.
# `podman run` uses runc when installed ($RUNTIME): Debian 12's crun 1.8.1 refuses hybrid cgroup
# hierarchies. Containers get fixed modest ulimits so that no CAP_SYS_RESOURCE is needed to set them.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/kube-tungo:dev}
BASE=${BASE:-localhost/kube-tungo-base:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
if [[ -z ${RUNTIME:-} ]] && command -v runc >/dev/null; then
    RUNTIME=runc
fi

rebuild_base=0
netns=0
for arg in "$@"; do
    case $arg in
        --rebuild-base) rebuild_base=1 ;;
        --netns) netns=1 ;;
        *) echo "build-image: unknown argument $arg (--rebuild-base, --netns)" >&2; exit 2 ;;
    esac
done
if [[ $EUID -ne 0 ]]; then
    echo "build-image: run as root (mmdebstrap, buildah, network namespaces)" >&2
    exit 1
fi
for tool in buildah podman mmdebstrap; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool missing: apt-get install buildah podman mmdebstrap runc" >&2; exit 1; }
done

podman=(podman)
if [[ -n ${RUNTIME:-} ]]; then
    podman+=(--runtime "$RUNTIME")
fi
run=("${podman[@]}" run --rm --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
work=$(mktemp -d /var/tmp/build-image.XXXXXX)
cleanup_steps=()
cleanup() {
    local i
    for ((i = ${#cleanup_steps[@]} - 1; i >= 0; i--)); do
        eval "${cleanup_steps[i]}" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
fail() { echo "build-image: FAILED: $*" >&2; exit 1; }

# --- 1. base -------------------------------------------------------------------------------------------
if ((rebuild_base)) || ! podman image exists "$BASE"; then
    step "base: mmdebstrap bookworm from $MIRROR -> $BASE"
    # Docker's Debian images drop apt's package caches after every run (else ~80 MB per apt layer).
    cat >"$work/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    start=$SECONDS
    mmdebstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata,passwd \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook="upload $work/docker-clean /etc/apt/apt.conf.d/docker-clean" \
        --customize-hook='rm -f "$1"/var/cache/apt/*.bin' \
        bookworm "$work/base.tar" \
        "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
        "deb $SECURITY_MIRROR bookworm-security main" </dev/null
    podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$work/base.tar" "$BASE" >/dev/null
    rm -f "$work/base.tar"
    echo "base: $((SECONDS - start)) s, $(podman image inspect --format '{{.Size}}' "$BASE") bytes"
fi

# --- 2. build ------------------------------------------------------------------------------------------
step "build: $IMAGE from $BASE (isolation $BUILDAH_ISOLATION)"
volumes=()
if [[ -n $CA_BUNDLE ]]; then
    volumes=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
fi
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
start=$SECONDS
# No --layers: no cache, but no untagged intermediate images pile up either (the sources change anyway).
buildah bud --no-cache --force-rm "${volumes[@]}" --build-arg "PYTHON_IMAGE=$BASE" -f Dockerfile -t "$IMAGE" .
current=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [[ -n $previous && $previous != "$current" ]]; then
    podman rmi "$previous" >/dev/null 2>&1 || true  # the image this build replaced, unless still in use
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "build: $((SECONDS - start)) s, image ${current:0:12}, $size bytes"

# --- 3. entry points -----------------------------------------------------------------------------------
step "entry points (runtime ${RUNTIME:-podman default})"
expect() {  # expect WHAT TEXT -- COMMAND...: run it, show its first lines, require TEXT in its output
    local what=$1 text=$2 out
    shift 3
    out=$("$@" 2>&1) || fail "$what exited $?: $out"
    printf '%s\n' "$out" | sed -n "1,3s/^/  $what| /p"
    [[ $out == *"$text"* ]] || fail "$what: no '$text' in its output"
}
expect "id" "uid=10001(tungo) gid=10001(tungo)" -- "${run[@]}" "$IMAGE" id
expect "tungo -V" "(Python 3.11" -- "${run[@]}" "$IMAGE" tungo -V
expect "tungo --help" "usage: tungo" -- "${run[@]}" "$IMAGE" tungo --help
expect "CMD" "usage: tungo-operator" -- "${run[@]}" "$IMAGE"
expect "tungo-webhook" "{serve,certs}" -- "${run[@]}" "$IMAGE" tungo-webhook --help
expect "webhook certs" "ca.crt tls.crt tls.key" -- "${run[@]}" "$IMAGE" sh -c \
    'tungo-webhook certs --service s --namespace n --out /tmp/c >/dev/null && echo $(ls /tmp/c)'
expect "tools" "nftables v" -- "${run[@]}" "$IMAGE" sh -c 'ip -V; nft --version'

((netns)) || { step "done (add --netns to run the sidecar in namespaces)"; exit 0; }

# --- 4. the sidecar in network namespaces --------------------------------------------------------------
step "sidecar in network namespaces"
id=$$
pod=tgimg-pod-$id srv=tgimg-srv-$id
for ns in $pod $srv; do
    ip netns add "$ns"
    cleanup_steps+=("ip netns del $ns")
    ip -n "$ns" link set lo up
done
ip link add "tgi${id}a" netns "$pod" type veth peer name "tgi${id}b" netns "$srv"
ip -n "$pod" link set "tgi${id}a" name eth0
ip -n "$srv" link set "tgi${id}b" name eth0
# 198.18.0.0/15: benchmark space, only ever inside these namespaces. The target is on srv's loopback:
# the pod has no route to it but the TUN's.
ip -n "$pod" addr add 198.18.0.2/24 dev eth0
ip -n "$srv" addr add 198.18.0.1/24 dev eth0
ip -n "$srv" addr add 198.19.0.1/32 dev lo
ip -n "$pod" link set eth0 up
ip -n "$srv" link set eth0 up

detached=("${podman[@]}" run -d --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
started() {  # started NAME: register its removal
    cleanup_steps+=("${podman[*]} rm -f $1")
}
"${detached[@]}" --name "$srv-relay" --network "ns:/run/netns/$srv" "$IMAGE" tungo -L relay://:8421 >/dev/null
started "$srv-relay"
"${detached[@]}" --name "$srv-http" --network "ns:/run/netns/$srv" "$IMAGE" \
    python -m http.server --bind 198.19.0.1 8080 >/dev/null
started "$srv-http"
sidecar=(--network "ns:/run/netns/$pod" --user 0 --cap-drop ALL --cap-add NET_ADMIN "$IMAGE"
    tungo -L "tungo://:0?name=tungo&net=192.168.123.1/24&mtu=1420&route=198.19.0.0/24"
    -F "relay://198.18.0.1:8421?interface=eth0" --health :9190)
"${detached[@]}" --name "$pod-tungo" --device /dev/net/tun "${sidecar[@]}" >/dev/null
started "$pod-tungo"

app() {  # app PYTHON-CODE: run it in the pod namespace from the image, as its default user
    "${run[@]}" --network "ns:/run/netns/$pod" "$IMAGE" python -c "$1"
}
ready=0
for _ in $(seq 60); do
    if app 'import urllib.request as u; u.urlopen("http://127.0.0.1:9190/readyz", timeout=2)' 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.5
done
"${podman[@]}" logs "$pod-tungo" 2>&1 | sed 's/^/  sidecar| /'
((ready)) || fail "the sidecar never answered /readyz 200"
[[ $(ip -n "$pod" rule) == *"not from all fwmark 0x7475"* ]] || fail "no capture rule in the pod"
ip -n "$pod" -d link show tungo | sed 's/^/  pod| /'
expect "app GET" "200 " -- app \
    'import urllib.request as u; r = u.urlopen("http://198.19.0.1:8080/", timeout=5); print(r.status, len(r.read()), "bytes")'
peer=$("${podman[@]}" logs "$srv-http" 2>&1 | awk '/"GET \/ / && !seen {print $1; seen = 1}')
echo "  target saw the request from $peer"
[[ -n $peer && $peer != 198.18.0.2 ]] || fail "the target saw '$peer', not the relay server"

"${podman[@]}" stop --time 10 "$pod-tungo" >/dev/null
code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$pod-tungo")
"${podman[@]}" logs "$pod-tungo" 2>&1 | tail -3 | cut -c1-200 | sed 's/^/  sidecar| /'
[[ $code == 0 ]] || fail "the sidecar exited $code on SIGTERM"
[[ $("${podman[@]}" logs "$pod-tungo" 2>&1) == *'"route_chain": 1'* ]] || fail "the flow did not take the chain"
! ip -n "$pod" link show tungo >/dev/null 2>&1 || fail "the TUN outlived the sidecar"
[[ $(ip -n "$pod" rule) != *0x7475* ]] || fail "rules outlived the sidecar"
echo "  SIGTERM: exit 0, TUN and rules gone"

out=$("${run[@]}" "${sidecar[@]}" 2>&1) && fail "the sidecar started without /dev/net/tun"
line=$(printf '%s\n' "$out" | grep '^tungo: error:' || true)
echo "  without --device: $line"
[[ $line == *"hostPath volume of type CharDevice"* ]] || fail "no hint in: $out"
step "done"
