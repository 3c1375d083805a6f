"""The Grafana dashboards, checked against a real Prometheus.

A real ``spillway serve --workers 2`` (real Redis, simulated backends, one of
them a ``spillway simulate`` process) is driven with a traffic mix while a real
Prometheus scrapes the gateway and that model server every second.
Then every panel's PromQL, with the dashboard variables substituted the way
Grafana does for "All", is evaluated through Prometheus's HTTP API: each must
parse and return data.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.metrics import samples, scrape
from tests.support.prometheus import Prometheus
from tests.support.simulate import SimulateProcess
from tests.support.traffic import config, drive

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana").glob("*.json"))
DS = {"type": "prometheus", "uid": "${datasource}"}
ALL = {"team": ".*", "model": ".*"}
# what Grafana puts in for its built-in variables at query time
BUILTINS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}
SELECTOR = re.compile(r"\b(spillway_[a-z_]+)(\{[^}]*\})?")


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in doc["panels"]:
        yield p
        yield from p.get("panels", [])


def queries() -> list[Any]:
    out = []
    for path in DASHBOARDS:
        for p in panels(load(path)):
            for t in p.get("targets", []):
                out.append(pytest.param(t["expr"], id=f"{path.stem}/{p['title']}/{t['refId']}"))
    return out


def substitute(expr: str, **values: str) -> str:
    for name, value in {**BUILTINS, **{f"${k}": v for k, v in values.items()}}.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def finite(result: list[dict[str, Any]]) -> bool:
    values = [r["value"][1] for r in result if "value" in r]
    values += [v[1] for r in result for v in r.get("values", [])]
    return any(math.isfinite(float(v)) for v in values)


# ------------------------------------------------------------------- structure


def test_dashboards_exist() -> None:
    assert {p.name for p in DASHBOARDS} == {"spillway-overview.json", "spillway-usage.json"}
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_model(path: Path) -> None:
    doc = load(path)
    assert doc["title"].startswith("Spillway")
    assert doc["schemaVersion"] >= 36 and doc["id"] is None and "spillway" in doc["tags"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert list(variables) == ["datasource", "team", "model"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("team", "model"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == DS
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*"
        assert v["query"]["query"] == v["definition"]
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels(doc):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}  # fmt: skip
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == DS and p["title"] and p["description"]
        assert p["fieldConfig"]["defaults"]["unit"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == DS and t["expr"].strip()


# --------------------------------------------------------------- live Prometheus


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    """``spillway simulate`` with a prefix cache: a model server Prometheus scrapes too."""
    sim = SimulateProcess("--prefix-cache-blocks", "256", "--block-size", "4")
    try:
        yield sim.address
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def live(redis_url: str, model_server: str) -> Iterator[tuple[Prometheus, str]]:
    prefix = f"spt-graf-{int(time.time() * 1000)}"
    gw = GatewayProcess(config(redis_url, prefix, simulate_url=f"http://{model_server}"),
                        workers=2)  # fmt: skip
    try:
        with Prometheus([f"127.0.0.1:{gw.port}", model_server]) as prom:
            prom.wait_scraping()
            counts = asyncio.run(drive(gw.url, seconds=8))
            assert {200, 429, 503} <= set(counts), counts
            time.sleep(2.5)  # the last samples are scraped
            assert prom.scraped() >= 8, prom.log()
            yield prom, scrape(gw.url)
    finally:
        gw.stop()


@pytest.mark.parametrize("expr", queries())
def test_panel_query_returns_data(live: tuple[Prometheus, str], expr: str) -> None:
    prom, _ = live
    doc = prom.query(substitute(expr, **ALL))
    assert doc["status"] == "success", doc
    result = doc["data"]["result"]
    assert result, f"no data for {expr}"
    assert finite(result), result


def test_variables_list_the_teams_and_models(live: tuple[Prometheus, str]) -> None:
    prom, _ = live
    doc = load(DASHBOARDS[0])
    for v in doc["templating"]["list"][1:]:
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]["query"])
        assert m, v["query"]
        reply = prom.api(f"label/{m[2]}/values", **{"match[]": substitute(m[1], **ALL)})
        assert reply["status"] == "success"
        want = {"research", "limited", "broke"} if m[2] == "team" else {"chat", "flaky", "spill"}
        assert want <= set(reply["data"]), reply


def test_team_variable_filters(live: tuple[Prometheus, str]) -> None:
    prom, _ = live
    usage = load(ROOT / "grafana" / "spillway-usage.json")
    target = next(p for p in panels(usage) if p["title"] == "Tokens by team")["targets"][0]
    result = prom.query(substitute(target["expr"], team="research", model=".*"))["data"]["result"]
    assert [r["metric"]["team"] for r in result] == ["research"]
    both = prom.query(substitute(target["expr"], team="(research|broke)", model=".*"))
    assert {r["metric"]["team"] for r in both["data"]["result"]} == {"research", "broke"}


def test_dashboards_cover_every_metric_and_use_the_variables(live: tuple[Prometheus, str]) -> None:
    _, text = live
    labels: dict[str, set[str]] = {}
    for name, lab, _ in samples(text):
        labels.setdefault(name, set()).update(lab)
    exprs = [t["expr"] for path in DASHBOARDS for p in panels(load(path))
             for t in p.get("targets", [])]  # fmt: skip
    everything = "\n".join(exprs)
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in labels}
    missing = [f for f in sorted(families) if f not in everything]
    assert not missing, f"metrics no panel shows: {missing}"
    for expr in exprs:
        for name, selector in SELECTOR.findall(expr):
            assert name in labels, f"{name} is not a metric the gateway exposes"
            if "team" in labels[name]:
                assert 'team=~"$team"' in selector, expr
            if "model" in labels[name]:
                assert 'model=~"$model"' in selector, expr


def test_requests_by_endpoint_show_every_endpoint(live: tuple[Prometheus, str]) -> None:
    prom, _ = live
    overview = load(ROOT / "grafana" / "spillway-overview.json")
    for title in ("Requests by endpoint and status", "p95 request duration by endpoint"):
        target = next(p for p in panels(overview) if p["title"] == title)["targets"][0]
        result = prom.query(substitute(target["expr"], **ALL))["data"]["result"]
        assert {r["metric"]["endpoint"] for r in result} == {"chat", "completions", "embeddings"}
    usage = load(ROOT / "grafana" / "spillway-usage.json")
    target = next(p for p in panels(usage) if p["title"] == "Embedding input tokens by model")
    result = prom.query(substitute(target["targets"][0]["expr"], **ALL))["data"]["result"]
    assert [r["metric"]["model"] for r in result] == ["embed"]
