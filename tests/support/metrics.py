"""Read Prometheus text exposition the way a scraper does."""

from __future__ import annotations

import math
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]


def samples(text: str) -> list[Sample]:
    """Every sample of an exposition (parsed by prometheus-client's own parser)."""
    out: list[Sample] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    total = 0.0
    found = False
    for n, lab, v in samples(text):
        if n == name and all(lab.get(k) == want for k, want in labels.items()):
            total += v
            found = True
    return total if found else math.nan


def series(text: str, name: str) -> list[dict[str, str]]:
    return [lab for n, lab, _ in samples(text) if n == name]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        body: bytes = resp.read()
        assert resp.headers["Content-Type"].startswith("text/plain")
    return body.decode()
