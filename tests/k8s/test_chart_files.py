"""Every file the chart's pods mount can be read by the process that needs it, as the kubelet lays it out.

A Secret volume is written by the kubelet as root: files root:root with ``defaultMode``, unless the pod
sets ``securityContext.fsGroup``; then every entry's group becomes the fsGroup and group read is added
(``SetVolumeOwnership``), and the runtime adds the fsGroup to the container's supplementary groups.
``runAsGroup`` alone changes nothing on disk. Issue 8: the webhook ran as 10001:10001 with no fsGroup,
its ``tls.key`` (0440 root:root) was unreadable, ``tungo-webhook`` exited 1 and, with ``failurePolicy:
Fail``, no opted-in pod could be created. Asserting ``defaultMode`` in test_chart.py did not see it.

So this module renders the chart with the real helm, rebuilds each Secret/ConfigMap/projected volume of
every Deployment and Job in a temporary directory exactly as the kubelet's atomic writer leaves it
(timestamped directory, ``..data`` symlink, one symlink per top-level key, owner, mode, fsGroup bits),
including the service account volume the admission controller adds, and reads each file with
``setpriv`` as the container's uid, gid and supplementary groups. Then the real ``tungo-webhook serve``
starts as that user with the rendered command line over such a directory, against a kmock API, and must
complete a TLS handshake. Needs root (chown, setpriv); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kube-tungo"
HELM = ROOT / ".tools" / "helm"
NAMESPACE = "tungo-system"
BIN = Path(sys.executable).parent  # the venv's bin/: python and the tungo-webhook console script
SETPRIV = shutil.which("setpriv")
# Keys of a kubernetes.io/tls Secret the chart mounts but does not render (cert-manager, existingSecret).
TLS_KEYS = ("ca.crt", "tls.crt", "tls.key")
# What the ServiceAccount admission plugin adds to every container (automountServiceAccountToken).
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_VOLUME = "kube-api-access-x7k2p"
KINDS_WITH_PODS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
FILE_VOLUMES = ("secret", "configMap", "projected")
# setgid|0110 on directories, |0440 on files: pkg/volume/volume_linux.go changeFilePermission for the
# read-only volume types (secret, configMap, projected all report ReadOnly attributes).
RO_MASK, EXEC_MASK = 0o440, 0o110

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and util-linux setpriv"
)

VALUE_SETS: dict[str, list[str]] = {
    "helm-certs": [],
    "cert-manager": ["webhook.certs.mode=certManager"],
    "existing-secret": [
        "webhook.certs.mode=existingSecret",
        "webhook.certs.existingSecret=my-tls",
        "webhook.certs.caBundle=QUJDRA==",
    ],
    "watch-namespaces": ["operator.watchNamespaces={shop,team}", "operator.verbose=true"],
}


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who a container's process is: the uid, gid and supplementary groups the runtime sets."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    def setpriv(self) -> list[str]:
        assert SETPRIV is not None
        groups = f"--groups={','.join(map(str, self.groups))}" if self.groups else "--clear-groups"
        return [SETPRIV, f"--reuid={self.uid}", f"--regid={self.gid}", groups, "--no-new-privs", "--"]


@dataclasses.dataclass(frozen=True, slots=True)
class Projection:
    """One file of a volume (the kubelet's volumeutil.FileProjection): path under the volume root."""

    path: str
    data: bytes
    mode: int
    fs_user: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Mount:
    """A file-carrying volume as one container sees it."""

    workload: str
    container: dict[str, Any]
    identity: Identity
    mount_path: str
    volume: str
    files: tuple[Projection, ...]
    fs_group: int | None

    @property
    def where(self) -> str:
        return f"{self.workload}/{self.container['name']}:{self.mount_path}"


# --- rendering --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> Path:
    if not HELM.exists():
        subprocess.run([ROOT / "scripts" / "fetch-helm.sh"], check=True, timeout=300)
    return HELM


def render(helm: Path, sets: list[str]) -> list[dict[str, Any]]:
    args = [str(helm), "template", "rel", str(CHART), "--namespace", NAMESPACE]
    for item in sets:
        args += ["--set", item]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in KINDS_WITH_PODS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            yield f"CronJob/{doc['metadata']['name']}", spec


# --- what the apiserver and the kubelet make of a pod spec -------------------------------------------


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def identity(pod: dict[str, Any], container: dict[str, Any]) -> Identity:
    """The container's securityContext over the pod's (securitycontext.DetermineEffectiveSecurityContext)."""
    pod_sc = pod.get("securityContext", {})
    sc = {**pod_sc, **container.get("securityContext", {})}
    # Unset, they come from the image (USER, /etc/passwd): unknowable here, and the chart sets both.
    assert "runAsUser" in sc and "runAsGroup" in sc, f"{container['name']}: uid/gid left to the image"
    fs_group = pod_sc.get("fsGroup")
    groups = [*pod_sc.get("supplementalGroups", []), *([fs_group] if fs_group is not None else [])]
    return Identity(uid=sc["runAsUser"], gid=sc["runAsGroup"], groups=tuple(dict.fromkeys(groups)))


def fs_user(pod: dict[str, Any]) -> int | None:
    """volumeutil.FsUserFrom: the one runAsUser every container shares, else None."""
    uids = {identity(pod, c).uid for c in all_containers(pod)}
    return uids.pop() if len(uids) == 1 else None


def with_service_account_volume(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod as the ServiceAccount admission plugin stores it: a projected token volume everywhere."""
    if pod.get("automountServiceAccountToken") is False:
        return pod
    volume = {
        "name": SA_VOLUME,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                    }
                },
            ],
        },
    }
    mount = {"name": SA_VOLUME, "mountPath": SA_MOUNT, "readOnly": True}

    def add(container: dict[str, Any]) -> dict[str, Any]:
        mounts = container.get("volumeMounts", [])
        if any(m["mountPath"] == SA_MOUNT for m in mounts):
            return container
        return {**container, "volumeMounts": [*mounts, mount]}

    out = {
        **pod,
        "volumes": [*pod.get("volumes", []), volume],
        "containers": list(map(add, pod["containers"])),
    }
    if "initContainers" in pod:
        out["initContainers"] = list(map(add, pod["initContainers"]))
    return out


def source_keys(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, bytes]:
    """A Secret's or ConfigMap's keys: the rendered object's, else those of a kubernetes.io/tls Secret."""
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            keys = [*doc.get("data", {}), *doc.get("stringData", {}), *doc.get("binaryData", {})]
            return {key: f"{kind} {name} {key}\n".encode() for key in keys}
    if kind == "ConfigMap" and name == "kube-root-ca.crt":
        return {"ca.crt": b"cluster CA\n"}
    assert kind == "Secret", f"ConfigMap {name} is mounted but neither rendered nor built in"
    return {key: f"{kind} {name} {key}\n".encode() for key in TLS_KEYS}


def project(keys: dict[str, bytes], source: dict[str, Any], default_mode: int) -> list[Projection]:
    """Secret/ConfigMap keys to files: all keys, or only ``items`` (each at its path, with its mode)."""
    items = source.get("items")
    if items is None:
        return [Projection(key, data, default_mode) for key, data in keys.items()]
    missing = [i["key"] for i in items if i["key"] not in keys and not source.get("optional")]
    assert not missing, f"items name keys the object does not have: {missing}"
    return [
        Projection(i["path"], keys[i["key"]], i.get("mode", default_mode)) for i in items if i["key"] in keys
    ]


def projections(
    docs: list[dict[str, Any]], volume: dict[str, Any], fs_group: int | None, user: int | None
) -> tuple[Projection, ...]:
    """The files the kubelet writes for one volume (secret.go, configmap.go, projected.go collectData)."""
    if "secret" in volume:
        src = volume["secret"]
        return tuple(
            project(source_keys(docs, "Secret", src["secretName"]), src, src.get("defaultMode", 0o644))
        )
    if "configMap" in volume:
        src = volume["configMap"]
        return tuple(project(source_keys(docs, "ConfigMap", src["name"]), src, src.get("defaultMode", 0o644)))
    default_mode = volume["projected"].get("defaultMode", 0o644)
    files: list[Projection] = []
    for source in volume["projected"]["sources"]:
        if "secret" in source:
            files += project(
                source_keys(docs, "Secret", source["secret"]["name"]), source["secret"], default_mode
            )
        elif "configMap" in source:
            cm = source["configMap"]
            files += project(source_keys(docs, "ConfigMap", cm["name"]), cm, default_mode)
        elif "downwardAPI" in source:
            for item in source["downwardAPI"]["items"]:
                files.append(Projection(item["path"], b"downward\n", item.get("mode", default_mode)))
        elif "serviceAccountToken" in source:
            # "When FsGroup is set, we depend on SetVolumeOwnership to change from 0600 to 0640."
            mode = 0o600 if user is not None or fs_group is not None else default_mode
            path = source["serviceAccountToken"]["path"]
            files.append(Projection(path, b"eyJhbGciOi.token\n", mode, fs_user=user))
        else:
            raise AssertionError(f"projected source not modelled: {source}")
    return tuple(files)


def mounts(docs: list[dict[str, Any]]) -> list[Mount]:
    found: list[Mount] = []
    for workload, spec in pod_templates(docs):
        pod = with_service_account_volume(spec)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        fs_group = pod.get("securityContext", {}).get("fsGroup")
        user = fs_user(pod) if fs_group is not None else None  # FsUser only matters with fsGroup
        for container in all_containers(pod):
            for vm in container.get("volumeMounts", []):
                volume = volumes[vm["name"]]
                if not any(kind in volume for kind in FILE_VOLUMES):
                    continue
                # A subPath is bound once, resolved through the symlinks, and never updated.
                assert "subPath" not in vm, f"{workload}: subPath mounts are not modelled here"
                files = projections(docs, volume, fs_group, user)
                who = identity(pod, container)
                found.append(Mount(workload, container, who, vm["mountPath"], vm["name"], files, fs_group))
    return found


def lay_out(root: Path, files: tuple[Projection, ...], fs_group: int | None) -> None:
    """Write a volume as the kubelet does: atomic_writer.Write, then SetVolumeOwnership for fsGroup."""
    root.mkdir(mode=0o777)  # the volume's tmpfs (a wrapped emptyDir: 0777)
    root.chmod(0o777)
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    ts_dir = root / f"{stamp}{secrets.randbelow(10**9):09d}"
    ts_dir.mkdir()
    ts_dir.chmod(0o755)  # "0755 permissions are needed to allow 'group' and 'other' to recurse"
    for f in files:
        path = ts_dir / f.path
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_bytes(f.data)
        os.chown(path, 0, 0)
        path.chmod(f.mode)
        if f.fs_user is not None:
            os.chown(path, f.fs_user, -1)
    (root / "..data").symlink_to(ts_dir.name)
    for top in dict.fromkeys(f.path.split("/", 1)[0] for f in files):
        (root / top).symlink_to(f"..data/{top}")
    if fs_group is None:
        return
    entries = [root, *(Path(d, name) for d, dirs, names in os.walk(root) for name in [*dirs, *names])]
    for path in entries:
        os.lchown(path, -1, fs_group)
        if path.is_symlink():
            continue  # chmod would follow the link and overwrite the target's mode
        mode = path.stat().st_mode & 0o7777
        path.chmod(mode | RO_MASK | ((0o2000 | EXEC_MASK) if path.is_dir() else 0))


def lay_out_mount(base: Path, mount: Mount) -> Path:
    root = base / f"{mount.workload.replace('/', '_')}_{mount.container['name']}_{mount.volume}"
    lay_out(root, mount.files, mount.fs_group)
    return root


def read_as(who: Identity, path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*who.setpriv(), "cat", str(path)], capture_output=True, timeout=10, check=False)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory any uid can traverse (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="tungo-chart-files-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


# --- the checks -------------------------------------------------------------------------------------


def test_the_harness_sees_what_the_kubelet_would_refuse(shared_tmp: Path) -> None:
    """Control: root:root 0440 is unreadable as 10001:10001, and readable once fsGroup 10001 applies."""
    files = (Projection("tls.key", b"key\n", 0o440),)
    lay_out(shared_tmp / "plain", files, fs_group=None)
    lay_out(shared_tmp / "fsgroup", files, fs_group=10001)
    denied = read_as(Identity(10001, 10001, ()), shared_tmp / "plain" / "tls.key")
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    allowed = read_as(Identity(10001, 10001, (10001,)), shared_tmp / "fsgroup" / "tls.key")
    assert allowed.returncode == 0 and allowed.stdout == b"key\n", allowed.stderr
    # The layout itself: ..data -> the timestamped directory, keys -> ..data/<key>, owner and mode.
    assert os.readlink(shared_tmp / "plain" / "tls.key") == "..data/tls.key"
    assert os.readlink(shared_tmp / "plain" / "..data").startswith("..20")
    plain, grouped = (shared_tmp / "plain" / "tls.key").stat(), (shared_tmp / "fsgroup" / "tls.key").stat()
    assert (plain.st_uid, plain.st_gid, plain.st_mode & 0o7777) == (0, 0, 0o440)
    assert (grouped.st_uid, grouped.st_gid, grouped.st_mode & 0o7777) == (0, 10001, 0o440)


@pytest.mark.parametrize("sets", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_mounted_file_is_readable_by_its_container(
    helm: Path, shared_tmp: Path, sets: list[str]
) -> None:
    docs = render(helm, sets)
    found = mounts(docs)
    assert any(m.mount_path == "/etc/tungo-webhook/tls" for m in found), "the webhook's TLS mount is gone"
    failures: list[str] = []
    for mount in found:
        assert mount.identity.uid != 0, f"{mount.where}: runs as root"
        root = lay_out_mount(shared_tmp, mount)
        for f in mount.files:
            result = read_as(mount.identity, root / f.path)
            if result.returncode != 0 or result.stdout != f.data:
                failures.append(
                    f"{mount.where}/{f.path} as {mount.identity}: {result.stderr.decode().strip()}"
                )
        # Files named on the command line under this mount must be among the projected ones.
        named = {
            arg.split("=", 1)[-1]
            for arg in [*mount.container.get("command", []), *mount.container.get("args", [])]
            if mount.mount_path + "/" in arg
        }
        projected = {f"{mount.mount_path}/{f.path}" for f in mount.files}
        assert named <= projected, f"{mount.where}: {sorted(named - projected)} are not in the volume"
    assert not failures, "\n".join(failures)


# --- the real webhook process as the chart's user ---------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def webhook_mount(docs: list[dict[str, Any]]) -> Mount:
    (mount,) = [m for m in mounts(docs) if m.workload.endswith("-webhook") and m.volume == "tls"]
    return mount


def with_certs(mount: Mount, out: Path) -> Mount:
    """The mount holding the files ``tungo-webhook certs`` writes for the chart's Service."""
    service = mount.workload.split("/", 1)[1]
    subprocess.run(
        [
            str(BIN / "tungo-webhook"),
            "certs",
            "--service",
            service,
            "--namespace",
            NAMESPACE,
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    files = tuple(dataclasses.replace(f, data=(out / f.path).read_bytes()) for f in mount.files)
    return dataclasses.replace(mount, files=files)


def test_the_webhook_user_loads_its_tls_key(helm: Path, shared_tmp: Path) -> None:
    """kopf's WebhookServer._build_ssl, as the chart's uid/gid, over a kubelet-laid-out Secret volume."""
    mount = with_certs(webhook_mount(render(helm, [])), shared_tmp / "made")
    root = lay_out_mount(shared_tmp, mount)
    code = (
        "import ssl, sys; "
        "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(sys.argv[1], sys.argv[2])"
    )
    cert, key = root / "tls.crt", root / "tls.key"
    result = subprocess.run(
        [*mount.identity.setpriv(), str(BIN / "python"), "-c", code, str(cert), str(key)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def test_the_webhook_process_serves_tls_as_the_chart_runs_it(
    helm: Path, shared_tmp: Path, kmock: Any
) -> None:
    """``tungo-webhook serve`` with the rendered command and env, as the rendered user, completes a handshake.

    kopf reads the key only once it has listed the API (admission_webhook_server waits for
    ready_resources), so against an unreachable API server the broken chart would look healthy: the
    process gets a kmock API instead, which answers discovery, and kopf starts serving.
    """
    docs = render(helm, [])
    mount = with_certs(webhook_mount(docs), shared_tmp / "made")
    root = lay_out_mount(shared_tmp, mount)
    ctr = mount.container
    port, health = free_port(), free_port()
    argv = [str(BIN / ctr["command"][0])]
    for arg in ctr["command"][1:]:
        if arg.startswith("--port="):
            argv.append(f"--port={port}")
        elif arg.startswith("--liveness="):
            argv.append(f"--liveness=http://127.0.0.1:{health}/healthz")
        else:
            argv.append(arg.replace(mount.mount_path, str(root)))
    argv.append("--listen=127.0.0.1")
    home = shared_tmp / "home"  # the pod's /tmp emptyDir: writable by the container
    home.mkdir()
    os.chown(home, mount.identity.uid, mount.identity.gid)
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
                "users": [{"name": "webhook", "user": {"token": "t"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "webhook"}}],
                "current-context": "kmock",
            }
        )
    )
    env = {e["name"]: e["value"] for e in ctr["env"]}
    env |= {"PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(home), "KUBECONFIG": str(kubeconfig)}
    # kopf names itself after getpass.getuser(); the image's /etc/passwd has uid 10001 as "tungo", this
    # host has no such entry, so the name comes the other way getuser() looks: the environment.
    env["LOGNAME"] = "tungo"
    log = shared_tmp / "webhook.log"
    context = ssl.create_default_context(cafile=str(root / "ca.crt"))
    server_name = f"{mount.workload.split('/', 1)[1]}.{NAMESPACE}.svc"  # what the apiserver dials
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *mount.identity.setpriv(), *argv, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        handshake: str | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while handshake is None and proc.returncode is None and loop.time() < deadline:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name), 5
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            handshake = writer.get_extra_info("ssl_object").version()
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    output = log.read_text(errors="replace")
    assert handshake is not None, f"no TLS handshake on :{port} (exit {proc.returncode}):\n{output[-4000:]}"
    for trouble in ("Permission denied", "PermissionError", "SSLError", "Traceback"):
        assert trouble not in output, output[-4000:]
