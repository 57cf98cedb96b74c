"""The Dockerfile, without a container engine.

Quick checks read the Dockerfile: pinned base, multi-stage, non-root final user matching the chart,
COPY sources present and not excluded by .dockerignore, and scripts/build-image.sh still passing its
base through the Dockerfile's argument. The slow test runs the build stage's RUN lines themselves,
verbatim, in a clean virtualenv made from this machine's Python 3.11 (the base image's version): the
wheel build, the install with the operator extra, and the three entry points. The runtime stage
(apt-get, useradd) would change this host: here it is checked that the Debian packages exist on
Debian 12 (this machine) and that the user matches the chart. The whole image, built with buildah and
run with podman, is tests/test_image.py (TUNGO_IMAGE_TEST=1).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str


def parse(text: str) -> tuple[dict[str, str], list[Instruction]]:
    """Global ARGs and instructions with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    args: dict[str, str] = {}
    out: list[Instruction] = []
    stage = -1
    for line in filter(str.strip, lines):
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        if keyword == "ARG" and stage < 0:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
        out.append(Instruction(stage, keyword, rest.strip()))
    return args, out


ARGS, INSTRUCTIONS = parse(DOCKERFILE.read_text())


def stage_of(n: int, keyword: str) -> list[str]:
    return [i.args for i in INSTRUCTIONS if i.stage == n and i.keyword == keyword]


def test_base_image_is_pinned_and_both_stages_use_it() -> None:
    base = ARGS["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    froms = [i.args for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    # The slow test stands in for the image's Python with this one: same minor version.
    assert sys.version_info[:2] == (3, 11)


def test_final_stage_runs_as_the_non_root_user_the_chart_expects() -> None:
    final = max(i.stage for i in INSTRUCTIONS)
    (user,) = stage_of(final, "USER")
    uid, _, gid = user.partition(":")
    assert uid == gid == "10001"
    assert any("--uid 10001" in run and "--gid 10001" in run for run in stage_of(final, "RUN"))
    helpers = (ROOT / "charts" / "kube-tungo" / "templates" / "_helpers.tpl").read_text()
    assert "runAsUser: 10001" in helpers and "runAsNonRoot: true" in helpers
    assert stage_of(final, "COPY") == ["--from=build /opt/venv /opt/venv"]


def test_copied_sources_exist_and_are_not_docker_ignored() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]

    def ignored(path: str) -> bool:
        # Docker's rule: the last matching pattern wins; "!" re-includes.
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.removeprefix("!")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare.rstrip("/") + "/"):
                verdict = not negate
        return verdict

    sources = [src for copy in stage_of(0, "COPY") for src in copy.split()[:-1]]
    assert sources == ["pyproject.toml", "README.md", "sidecar/src", "operator/src"]
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not ignored(src), f"{src} is excluded by .dockerignore"
    for heavy in (".venv", ".git", ".tools", "tests", ".venv/bin/python"):
        assert ignored(heavy), f"{heavy} would be sent to the build"


def test_build_script_passes_its_base_through_the_dockerfiles_argument() -> None:
    script = ROOT / "scripts" / "build-image.sh"
    assert '--build-arg "PYTHON_IMAGE=$BASE"' in script.read_text() and "PYTHON_IMAGE" in ARGS
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_runtime_packages_exist_on_debian_bookworm() -> None:
    final = max(i.stage for i in INSTRUCTIONS)
    (apt,) = [r for r in stage_of(final, "RUN") if "apt-get install" in r]
    packages = apt.split("--no-install-recommends", 1)[1].split("&&", 1)[0].split()
    assert packages == ["iproute2", "nftables"]
    for package in packages:  # this machine is Debian 12 (bookworm), like the base image
        result = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True, check=False)
        assert result.returncode == 0 and f"Package: {package}" in result.stdout


@pytest.mark.slow
def test_build_stage_run_lines_install_the_project_in_a_clean_venv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for copy in stage_of(0, "COPY"):
        *sources, _dest = copy.split()
        for item in sources:
            origin = ROOT / item
            if origin.is_dir():
                shutil.copytree(
                    origin, src / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
            else:
                (src / item).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, src / item)
    env_line = " ".join(stage_of(0, "ENV"))
    env = {k: v for k, v in re.findall(r"(\w+)=(\S+)", env_line)}
    assert env["VENV"] == "/opt/venv"
    env.update(VENV=str(tmp_path / "venv"), WHEELS=str(tmp_path / "wheels"))
    python_bin = Path(sys.base_prefix) / "bin"  # a plain interpreter, not this project's venv
    run_env = {**os.environ, **env, "PATH": f"{python_bin}:/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    run_env.pop("VIRTUAL_ENV", None)
    for command in stage_of(0, "RUN"):
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=src,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"RUN {command}\n{result.stdout}\n{result.stderr}"
    venv = tmp_path / "venv"
    # Installed from the wheel, not from the checkout: the packages live in the venv.
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import tungo_sidecar as s, tungo_operator as o, kopf; print(s.__file__, o.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert probe.stdout.count(str(venv)) == 2, probe.stdout
    help_text = subprocess.run(
        [str(venv / "bin" / "tungo-webhook"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "serve" in help_text and "certs" in help_text
    # The chart's webhook command works against this install: generate its certificates.
    out = tmp_path / "certs"
    subprocess.run(
        [
            str(venv / "bin" / "tungo-webhook"),
            "certs",
            "--service",
            "s",
            "--namespace",
            "n",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert yaml.safe_load((ROOT / "charts" / "kube-tungo" / "Chart.yaml").read_text())["appVersion"] == (
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('kube-tungo'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
