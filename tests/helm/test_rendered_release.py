"""What the chart renders, run for real: the ConfigMap's config and the Secret's
environment start a real ``spillway serve`` (real Redis) that answers clients
and passes the chart's own ``helm test`` script; the PrometheusRule's alerts
load into a real Prometheus scraping a gateway under traffic, and fire.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.helm.chart import CHART, config_text, container, pod_env, render
from tests.support.gateway import GatewayProcess
from tests.support.net import free_port
from tests.support.prometheus import Prometheus
from tests.support.traffic import config as traffic_config
from tests.support.traffic import drive

FULL = yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text())


def start(values: dict[str, Any], redis_url: str, prefix: str) -> tuple[GatewayProcess, Any]:
    r = render(values)
    doc = yaml.safe_load(config_text(r))
    doc["listen"]["host"] = "127.0.0.1"  # the pod listens everywhere; a test only on loopback
    assert doc["server"]["metrics_port"] == r.one("Service", "gw-spillway-metrics")["spec"][
        "ports"][0]["port"]  # fmt: skip
    doc["server"]["metrics_port"] = free_port()  # the pod's port may be taken here
    if doc["redis"]["url"]:
        doc["redis"]["key_prefix"] = prefix
    env = pod_env(r)
    env["REDIS_URL"] = redis_url
    workers = int(container(r)["args"][2])
    return GatewayProcess(yaml.safe_dump(doc), workers=workers, env=env), r


def run_helm_test(r: Any, gw: GatewayProcess) -> str:
    pod = r.one("Pod")
    script, n = re.subn(r"http://gw-spillway:\d+", gw.url, pod["spec"]["containers"][0]["args"][0])
    metrics_port = yaml.safe_load(Path(gw.config_path).read_text())["server"]["metrics_port"]
    script, m = re.subn(r"http://gw-spillway-metrics:\d+", f"http://127.0.0.1:{metrics_port}",
                        script)  # fmt: skip
    assert n == 1 and m == 1 and "gw-spillway" not in script
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_default_release_serves_the_demo(redis_url: str, key_prefix: str) -> None:
    gw, r = start({}, redis_url, key_prefix)
    try:
        assert "asks for a key" in run_helm_test(r, gw)
        with openai.OpenAI(base_url=gw.base_url, api_key="sk-spillway-demo", max_retries=0) as c:
            reply = c.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hello"}], max_tokens=5
            )
            assert reply.choices[0].message.content
            assert "demo" in [m.id for m in c.models.list()]
    finally:
        gw.stop()


def test_full_release_serves_with_its_secrets(redis_url: str, key_prefix: str) -> None:
    gw, r = start(FULL, redis_url, key_prefix)
    try:
        run_helm_test(r, gw)
        key = FULL["secrets"]["env"]["ALICE_KEY"]
        with openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0) as c:
            reply = c.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            assert reply.parse().model == "gpt-4o-mini"
            assert "x-spillway-route" not in reply.headers  # server.route_headers: false
    finally:
        gw.stop()


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    values = {"metrics": {"prometheusRule": {
        "enabled": True, "errorRate": {"for": "0s"}, "budget": {"for": "0s", "threshold": 0.5},
        "queueDrops": {"for": "0s", "threshold": 0.05},
    }}}  # fmt: skip
    rule = render(values).one("PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def test_alerts_load_and_fire(redis_url: str, key_prefix: str, rules_file: Path) -> None:
    gw = GatewayProcess(traffic_config(redis_url, key_prefix), workers=2)
    try:
        with Prometheus([f"127.0.0.1:{gw.port}"], rule_files=[rules_file]) as prom:
            prom.wait_scraping()
            asyncio.run(drive(gw.url, seconds=5))
            firing: dict[str, list[dict[str, str]]] = {}
            end = time.monotonic() + 20
            while time.monotonic() < end:
                alerts = prom.api("alerts")["data"]["alerts"]
                firing = {}
                for a in alerts:
                    if a["state"] == "firing":
                        firing.setdefault(a["labels"]["alertname"], []).append(a["labels"])
                if {"SpillwayHighErrorRate", "SpillwayBudgetNearlySpent",
                    "SpillwayQueueDropping"} <= set(firing):  # fmt: skip
                    break
                time.sleep(0.5)
            assert "SpillwayHighErrorRate" in firing, prom.log()
            owners = {a["owner"] for a in firing.get("SpillwayBudgetNearlySpent", [])}
            assert "broke" in owners, firing
            assert "SpillwayRedisErrors" not in firing
            pools = {a["pool"] for a in firing.get("SpillwayQueueDropping", [])}
            assert pools == {"queued"}, firing  # the traffic's one-slot queue times out
            groups = prom.api("rules")["data"]["groups"]
            rules = [x for g in groups for x in g["rules"]]
            assert len(rules) == 5
            for x in rules:
                assert x["health"] == "ok", x
    finally:
        gw.stop()
