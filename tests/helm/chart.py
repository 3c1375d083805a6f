"""Render ``helm/spillway`` with the real Helm engine (helm-python-sdk: Helm's Go SDK)."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "spillway"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "gw", "llm"
KUBE_VERSIONS = ("1.25", "1.30", "1.37")  # the chart's oldest supported, a common one, newest

helm.disable_logging()  # Helm's INFO lines (it follows the chart's symbolic links)


def values_cases() -> list[tuple[str, dict[str, Any]]]:
    """("default", {}) and one case per ci/*-values.yaml."""
    cases: list[tuple[str, dict[str, Any]]] = [("default", {})]
    for path in CI_VALUES:
        cases.append((path.stem, yaml.safe_load(path.read_text())))
    return cases


@dataclass
class Rendered:
    templates: dict[str, str]  # template path -> rendered text
    docs: list[dict[str, Any]]  # every manifest, hooks included

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind
                 and (name is None or d["metadata"]["name"] == name)]  # fmt: skip
        assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    @property
    def notes(self) -> str:
        return self.templates["spillway/templates/NOTES.txt"]


def render(values: dict[str, Any] | None = None) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for name, text in out.items():
        if name.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return Rendered(out, docs)


def container(r: Rendered, kind: str = "Deployment") -> dict[str, Any]:
    spec = r.one(kind)["spec"]["template"]["spec"]
    c: dict[str, Any] = spec["containers"][0]
    return c


def config_text(r: Rendered) -> str:
    text: str = r.one("ConfigMap", f"{RELEASE}-spillway")["data"]["spillway.yaml"]
    return text


def pod_env(r: Rendered) -> dict[str, str]:
    """The environment a gateway pod gets: plain values, the chart's Secret, and a
    stand-in for what Secrets the operator manages would hold."""
    env: dict[str, str] = {}
    c = container(r)
    for e in c.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else f"redis://stand-in-for-{e['name']}:6379/0"
    for source in c.get("envFrom", []):
        name = source["secretRef"]["name"]
        secrets = [d for d in r.docs if d["kind"] == "Secret" and d["metadata"]["name"] == name]
        for s in secrets:
            env.update({k: base64.b64decode(v).decode() for k, v in s["data"].items()})
    for var in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", config_text(r)):
        if var not in env:  # held by an existing Secret the chart does not render
            digest = hashlib.sha256(var.encode()).hexdigest()
            env[var] = digest if var.endswith("SHA256") else f"stand-in-{var.lower()}"
    return env
