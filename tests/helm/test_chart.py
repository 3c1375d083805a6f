"""The Helm chart: rendered by the real Helm engine, linted, validated strictly.

Every manifest of the default values and of each ``ci/*-values.yaml`` is
checked against the Kubernetes JSON schemas (kubernetes-validate, strict: no
unknown field) for several Kubernetes versions. The Prometheus Operator
objects are checked by promtool (rules) and a strict schema of the fields the
chart uses (ServiceMonitor). Bad values are refused by values.schema.json.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from router.config_load import parse_config
from tests.helm.chart import (
    CHART,
    KUBE_VERSIONS,
    ROOT,
    Rendered,
    config_text,
    container,
    pod_env,
    render,
    values_cases,
)
from tests.support.prometheus import promtool_binary

CASES = values_cases()
IDS = [name for name, _ in CASES]
OPERATOR = "monitoring.coreos.com/v1"

# The ServiceMonitor fields the chart may set, strictly (names from the Prometheus
# Operator's monitoring.coreos.com/v1 API reference).
_RELABEL = {
    "type": "object", "additionalProperties": False,
    "properties": {k: {} for k in ("action", "modulus", "regex", "replacement", "separator",
                                   "sourceLabels", "targetLabel")},
}  # fmt: skip
_LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                   "matchExpressions": {"type": "array"}},
}  # fmt: skip
SERVICE_MONITOR = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": OPERATOR}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array", "items": _RELABEL},
                        "metricRelabelings": {"type": "array", "items": _RELABEL},
                    },
                }},
            },
        },
    },
}  # fmt: skip


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], Rendered]:
    name, values = request.param
    return name, values, render(values)


def test_ci_values_exist() -> None:
    assert {"minimal-values", "full-values", "external-redis-values"} <= set(IDS)


@pytest.mark.parametrize(("name", "values"), CASES, ids=IDS)
def test_lint_is_clean(name: str, values: dict[str, Any]) -> None:
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{kube}.0")
        assert report["errors"] == [], report
        # severity 1 is Helm's "info" (an icon is recommended); warnings and errors fail
        assert [m for m in report["messages"] if m["severity"] > 1] == [], report


def test_manifests_validate_strictly(case: tuple[str, dict[str, Any], Rendered]) -> None:
    _, _, r = case
    assert r.docs
    for doc in r.docs:
        if doc["apiVersion"] == OPERATOR:
            continue
        for kube in KUBE_VERSIONS:
            # raises on an unknown kind, a missing field or any field the schema lacks
            kubernetes_validate.validate(doc, kube, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "gw"
    for doc in r.docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR)


def test_prometheus_rules_pass_promtool(
    case: tuple[str, dict[str, Any], Rendered], tmp_path: Path
) -> None:
    name, _, r = case
    rules = [d for d in r.docs if d["kind"] == "PrometheusRule"]
    if name in ("full-values", "external-redis-values"):
        assert len(rules) == 1
    for rule in rules:
        path = tmp_path / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        out = subprocess.run([promtool_binary(), "check", "rules", str(path)],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        alerts = {x["alert"] for g in rule["spec"]["groups"] for x in g["rules"]}
        assert {"SpillwayHighErrorRate", "SpillwayBudgetNearlySpent", "SpillwayBackendDown",
                "SpillwayRedisErrors", "SpillwayQueueDropping"} <= alerts  # fmt: skip


def test_rendered_config_is_a_valid_spillway_config(
    case: tuple[str, dict[str, Any], Rendered],
) -> None:
    _, values, r = case
    env = pod_env(r)
    cfg = parse_config(config_text(r), "rendered ConfigMap", env=env)
    assert cfg.listen.host == "0.0.0.0" and cfg.listen.port == values.get("containerPort", 8080)
    assert cfg.server.shutdown_grace_seconds == values.get("drainSeconds", 300)
    mode = values.get("redis", {}).get("mode", "internal")
    assert cfg.redis.url == ("" if mode == "none" else env["REDIS_URL"])
    if mode == "internal":
        assert env["REDIS_URL"] == "redis://gw-spillway-redis:6379/0"
        r.one("Service", "gw-spillway-redis")
    if not values.get("config", {}).get("backends"):
        assert "demo" in cfg.models  # the built-in demo
    else:
        assert set(cfg.backends) == set(values["config"]["backends"])


def test_deployment(case: tuple[str, dict[str, Any], Rendered]) -> None:
    name, values, r = case
    dep = r.one("Deployment")
    pod = dep["spec"]["template"]
    c = container(r)
    assert c["args"] == ["serve", "--workers", str(values.get("workers", 1))]
    assert {"name": "SPILLWAY_CONFIG", "value": "/etc/spillway/spillway.yaml"} in c["env"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pre, drain = values.get("preStopSeconds", 10), values.get("drainSeconds", 300)
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(pre)]
    assert pod["spec"]["terminationGracePeriodSeconds"] == pre + drain + 10
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    sec, psec = c["securityContext"], pod["spec"]["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert psec["runAsNonRoot"] and psec["runAsUser"] > 0
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"/etc/spillway", "/tmp"}  # the only writable place is an emptyDir
    checksum = pod["metadata"]["annotations"]["checksum/config"]
    configmap = r.templates["spillway/templates/configmap.yaml"]
    assert checksum == hashlib.sha256(configmap.encode()).hexdigest()
    spread = pod["spec"].get("topologySpreadConstraints", [])
    if name != "minimal-values":
        assert spread and all(
            s["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
            for s in spread
        )
    autoscaled = values.get("autoscaling", {}).get("enabled", True)
    assert ("replicas" in dep["spec"]) != autoscaled
    assert ("HorizontalPodAutoscaler" in r.kinds()) == autoscaled
    replicas = values.get("replicaCount", 2)
    assert ("PodDisruptionBudget" in r.kinds()) == (autoscaled or replicas > 1)
    svc = r.one("Service", "gw-spillway")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_a_config_change_rolls_the_pods() -> None:
    a = render({})
    b = render({"config": {"logging": {"level": "WARNING"}}})
    ann = [x.one("Deployment")["spec"]["template"]["metadata"]["annotations"] for x in (a, b)]
    assert ann[0]["checksum/config"] != ann[1]["checksum/config"]
    c = render({"secrets": {"env": {"OPENAI_API_KEY": "sk-1"}}})
    d = render({"secrets": {"env": {"OPENAI_API_KEY": "sk-2"}}})
    ann = [x.one("Deployment")["spec"]["template"]["metadata"]["annotations"] for x in (c, d)]
    assert ann[0]["checksum/config"] == ann[1]["checksum/config"]
    assert ann[0]["checksum/secret"] != ann[1]["checksum/secret"]


def test_secrets_reach_the_pod_only_through_secrets() -> None:
    values = yaml.safe_load((CHART / "ci" / "external-redis-values.yaml").read_text())
    r = render(values)
    c = container(r)
    assert c["envFrom"] == [{"secretRef": {"name": "spillway-credentials"}}]
    redis = next(e for e in c["env"] if e["name"] == "REDIS_URL")
    assert redis["valueFrom"]["secretKeyRef"] == {"name": "spillway-redis", "key": "url"}
    assert "Secret" not in r.kinds() and "StatefulSet" not in r.kinds()
    full = render(yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text()))
    secret = full.one("Secret")
    assert set(secret["data"]) == {"OPENAI_API_KEY", "ALICE_KEY"}
    everything = json.dumps(full.docs)
    assert "sk-test-not-a-real-key" not in everything  # only base64 in the Secret
    assert "${OPENAI_API_KEY}" in config_text(full)


def test_extra_volumes_carry_tls_and_credential_files() -> None:
    r = render({
        "extraVolumes": [{"name": "upstream-tls", "secret": {"secretName": "inference-mtls"}}],
        "extraVolumeMounts": [{"name": "upstream-tls", "mountPath": "/etc/spillway-tls",
                               "readOnly": True}],
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}],
    })  # fmt: skip
    spec = r.one("Deployment")["spec"]["template"]["spec"]
    assert {"name": "upstream-tls", "secret": {"secretName": "inference-mtls"}} in spec["volumes"]
    mounts = container(r)["volumeMounts"]
    assert {"name": "upstream-tls", "mountPath": "/etc/spillway-tls", "readOnly": True} in mounts
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"} in container(r)["env"]


def test_dashboards_configmap_carries_the_grafana_files() -> None:
    r = render({})
    cm = r.one("ConfigMap", "gw-spillway-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = {p.name: p.read_text() for p in (ROOT / "grafana").glob("*.json")}
    assert files and cm["data"] == files  # byte for byte: the chart reads grafana/ itself
    moved = render({"dashboards": {"namespace": "monitoring"}})
    assert moved.one("ConfigMap", "gw-spillway-dashboards")["metadata"]["namespace"] == "monitoring"
    assert "ConfigMap" in render({"dashboards": {"enabled": False}}).kinds()  # the config only
    assert len([d for d in render({"dashboards": {"enabled": False}}).docs
                if d["kind"] == "ConfigMap"]) == 1  # fmt: skip


def test_network_policies() -> None:
    values = yaml.safe_load((CHART / "ci" / "external-redis-values.yaml").read_text())
    pol = render(values).one("NetworkPolicy")
    assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    sources = pol["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"spillway-client": "true"}}} in sources
    assert any(s.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
               == "test" for s in sources)  # fmt: skip
    dns = pol["spec"]["egress"][0]["ports"]
    assert {"port": 53, "protocol": "UDP"} in dns
    full = render(yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text()))
    redis = full.one("NetworkPolicy", "gw-spillway-redis")
    peer = redis["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert peer["app.kubernetes.io/component"] == "gateway"


def test_redis_statefulset() -> None:
    r = render({})
    sts = r.one("StatefulSet")
    c = container(r, "StatefulSet")

    def arg(c: dict[str, Any], name: str) -> str:
        args: list[str] = c["args"]
        return args[args.index(name) + 1]

    assert arg(c, "--appendonly") == "yes" and arg(c, "--appendfsync") == "everysec"
    assert c["securityContext"]["readOnlyRootFilesystem"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    # without a volume the append-only file is still written (it outlives a container
    # restart), and how often it is fsync'd is the operator's choice
    ephemeral = render(
        {"redis": {"internal": {"persistence": {"enabled": False, "appendfsync": "always"}}}}
    )
    assert "volumeClaimTemplates" not in ephemeral.one("StatefulSet")["spec"]
    c = container(ephemeral, "StatefulSet")
    assert arg(c, "--appendonly") == "yes" and arg(c, "--appendfsync") == "always"


def test_helm_test_hook() -> None:
    r = render({})
    pod = r.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["image"] == container(r)["image"] and c["command"] == ["python", "-c"]
    assert "http://gw-spillway:80" in c["args"][0]


def test_notes() -> None:
    notes = render({}).notes
    assert "http://gw-spillway.llm.svc:80/v1" in notes and "helm test gw -n llm" in notes
    assert "built-in demo" in notes
    lonely = render({"redis": {"mode": "none"}}).notes
    assert "every pod keeps its own rate limits" in lonely


def test_identity_admin_database_and_tracing() -> None:
    values = yaml.safe_load((CHART / "ci" / "identity-values.yaml").read_text())
    r = render(values)
    cfg = parse_config(config_text(r), "rendered ConfigMap", env=pod_env(r))
    issuer = cfg.auth.jwt[0]
    assert issuer.teams == {"llm-research": "research"} and issuer.user_claim == "email"
    assert cfg.auth.user_limits is not None and cfg.auth.user_limits.requests_per_minute == 60
    assert "${DATABASE_URL}" in config_text(r)  # the URL itself only in the Secret
    assert cfg.admin is not None and cfg.admin.listen.port == 8081
    assert cfg.admin.listen.host == "0.0.0.0" and cfg.admin.jwt is not None
    assert cfg.tracing.otlp_endpoint == "http://otel-collector.observability:4318"
    assert cfg.tracing.sample_ratio == 0.25 and not cfg.tracing.capture_content
    c = container(r)
    db = next(e for e in c["env"] if e["name"] == "DATABASE_URL")
    assert db["valueFrom"]["secretKeyRef"] == {"name": "spillway-database", "key": "url"}
    assert {"name": "admin", "containerPort": 8081, "protocol": "TCP"} in c["ports"]
    admin = r.one("Service", "gw-spillway-admin")
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["ports"] == [
        {"name": "admin", "port": 8081, "targetPort": "admin", "protocol": "TCP"}
    ]
    public = r.one("Service", "gw-spillway")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]  # admin not on it
    rules = r.one("NetworkPolicy")["spec"]["ingress"]
    admin_rule = next(x for x in rules if x["ports"][0]["port"] == "admin")
    assert admin_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"spillway-admin": "true"}}}
    ]
    # off by default: no admin port, Service, database or tracing
    default = render({})
    assert sorted(d["metadata"]["name"] for d in default.docs if d["kind"] == "Service") == [
        "gw-spillway", "gw-spillway-metrics", "gw-spillway-redis"]  # fmt: skip
    assert [p["name"] for p in container(default)["ports"]] == ["http", "metrics"]
    plain = parse_config(config_text(default), "default", env=pod_env(default))
    assert plain.admin is None and not plain.database.url and not plain.tracing.otlp_endpoint
    with pytest.raises(helm.HelmRenderError, match=r"admin\.enabled needs database"):
        render({"admin": {"enabled": True, "tokens": ["a" * 64]}})
    with pytest.raises(helm.HelmRenderError, match=r"needs tracing\.otlpEndpoint"):
        render({"tracing": {"enabled": True}})


BAD_VALUES = [
    ("unknown top-level key", {"replicas": 3}),
    ("zero replicas", {"replicaCount": 0}),
    ("zero workers", {"workers": 0}),
    ("unknown appendfsync", {"redis": {"internal": {"persistence": {"appendfsync": "sometimes"}}}}),
    ("image tag as a number", {"image": {"tag": 5}}),
    ("unknown redis mode", {"redis": {"mode": "cluster"}}),
    ("redis url that is not one", {"redis": {"mode": "external", "url": "localhost:6379"}}),
    ("listen is the chart's", {"config": {"listen": {"port": 9000}}}),
    ("redis url is the chart's", {"config": {"redis": {"url": "redis://x"}}}),
    ("unknown config section", {"config": {"bakends": {}}}),
    ("backend without provider", {"config": {"backends": {"a": {"url": "http://x"}}}}),
    ("bad log level", {"config": {"logging": {"level": "LOUD"}}}),
    ("secret that is not a string", {"secrets": {"env": {"TOKEN": 12345}}}),
    ("secret with a bad name", {"secrets": {"env": {"MY-KEY": "x"}}}),
    ("service port out of range", {"service": {"port": 70000}}),
    ("bad spread policy", {"topologySpread": {"whenUnsatisfiable": "Maybe"}}),
    ("alert threshold over 100%", {"metrics": {"prometheusRule": {"budget": {"threshold": 1.5}}}}),
    ("bad alert duration", {"metrics": {"prometheusRule": {"errorRate": {"for": "ten"}}}}),
    ("negative drain", {"drainSeconds": -1}),
    ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}),
    ("admin token that is no sha256", {"admin": {"tokens": ["secret"]}}),
    ("database url in the config", {"config": {"database": {"url": "postgresql://x"}}}),
    ("sample ratio over 1", {"tracing": {"sampleRatio": 2}}),
    ("issuer without teams", {"auth": {"jwt": [{"issuer": "x", "audience": "y"}]}}),
]


@pytest.mark.parametrize(("why", "values"), BAD_VALUES, ids=[w for w, _ in BAD_VALUES])
def test_bad_values_are_rejected(why: str, values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] == 3], why


def test_external_redis_needs_an_address() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"needs redis\.url or redis\.existingSecret"):
        render({"redis": {"mode": "external"}})
    r = render({"redis": {"mode": "external", "url": "rediss://cache.internal:6380/0"}})
    assert {"name": "REDIS_URL", "value": "rediss://cache.internal:6380/0"} in container(r)["env"]


def test_metrics_are_served_apart_from_the_client_service() -> None:
    """/metrics (every team's spend) has a port of its own on the pod and a Service of
    its own that Prometheus scrapes; the client Service does not expose it."""
    values = yaml.safe_load((CHART / "ci" / "external-redis-values.yaml").read_text())
    values["metrics"]["ingressFrom"] = [{"namespaceSelector": {"matchLabels": {"name": "mon"}}}]
    r = render(values)
    cfg = yaml.safe_load(config_text(r))
    ports = {p["name"]: p["containerPort"] for p in container(r)["ports"]}
    assert cfg["server"]["metrics_port"] == ports["metrics"] == 9090
    assert cfg["listen"]["port"] == ports["http"] != ports["metrics"]
    client = r.one("Service", "gw-spillway")
    assert [p["targetPort"] for p in client["spec"]["ports"]] == ["http"]
    scraped = r.one("Service", "gw-spillway-metrics")
    assert scraped["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in scraped["spec"]["ports"]] == ["metrics"]
    assert scraped["spec"]["selector"] == client["spec"]["selector"]
    notes = scraped["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == "9090"
    monitor = r.one("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert all(scraped["metadata"]["labels"].get(k) == v for k, v in selected.items())
    assert any(client["metadata"]["labels"].get(k) != v for k, v in selected.items())
    policy = r.one("NetworkPolicy", "gw-spillway")
    rule = next(i for i in policy["spec"]["ingress"] if i["ports"][0]["port"] == "metrics")
    assert {"namespaceSelector": {"matchLabels": {"name": "mon"}}} in rule["from"]
    script = r.one("Pod")["spec"]["containers"][0]["args"][0]
    assert 'metrics = "http://gw-spillway-metrics:9090"' in script  # the helm test scrapes it
    moved = render({"metrics": {"port": 9500, "service": {"port": 9501}}})
    cfg = yaml.safe_load(config_text(moved))
    assert cfg["server"]["metrics_port"] == 9500
    assert {"name": "metrics", "containerPort": 9500, "protocol": "TCP"} in container(moved)[
        "ports"]  # fmt: skip
    assert moved.one("Service", "gw-spillway-metrics")["spec"]["ports"][0]["port"] == 9501
